"""``rgtp convert``: official checkpoints into rgtp weights."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rgtp.cli.common import (
    add_preset_args,
    resolve,
)
from rgtp.config import ConfigError

# `rgtp convert MODEL`: its sources (the first is the default) and the default target preset per source.
_CONVERT_SOURCES = {"vitdet": ("vid", "coco", "eventful"), "vivit": ("k400", "epic")}


_CONVERT_PRESETS = {
    "vitdet": "vitdet_vid_672_keep512",
    "vivit-k400": "vivit_k400_base",
    "vivit-epic": "vivit_epic_base",
}


def cmd_convert(args: argparse.Namespace) -> int:

    from rgtp.convert import EPIC_NOUNS, convert_checkpoint

    source = args.source or _CONVERT_SOURCES[args.model][0]
    if source not in _CONVERT_SOURCES[args.model]:
        raise ConfigError(f"--source {source} is not a {args.model} source; choose from {_CONVERT_SOURCES[args.model]}")
    name = f"{args.model}-{source}"
    if not args.preset and not args.config:
        args.preset = _CONVERT_PRESETS.get(name) or _CONVERT_PRESETS[args.model]
    preset = resolve(args)
    if preset.family != args.model:
        raise ConfigError(f"preset {preset.name} is not a {args.model} model")
    cfg = preset.model
    if args.nouns:
        if name != "vivit-epic":
            raise ConfigError("--nouns keeps the EPIC-KITCHENS noun head: it needs `vivit --source epic`")
        cfg = dataclasses.replace(cfg, num_nouns=EPIC_NOUNS)  # type: ignore[arg-type]
    report = convert_checkpoint(args.src, args.dst, source=name, cfg=cfg, trust=args.trust_pickle)
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("convert", help="convert an official checkpoint into rgtp weights (strict)")
    p.add_argument("model", choices=sorted(_CONVERT_SOURCES), help="model family")
    p.add_argument("src", help="official checkpoint (.pth / .pkl / .pyth)")
    p.add_argument("dst", help="rgtp checkpoint to write (.pth)")
    p.add_argument(
        "--source",
        choices=[s for sources in _CONVERT_SOURCES.values() for s in sources],
        help="vitdet: vid (default): detectron2 ViTDet-VID Faster R-CNN (frcnn_vitdet_final.pth); coco: detectron2 "
        "COCO ViTDet-B (backbone and pyramid only); eventful: the same VID detector as converted by the reference code."
        " vivit: k400 (default) or epic: TAdaConv's ViViT-B factorised encoder .pyth (EPIC: verb head; noun head "
        "dropped unless --nouns)",
    )
    p.add_argument(
        "--nouns", action="store_true", help="vivit --source epic: keep the noun head (target num_nouns=300)"
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)")
    add_preset_args(
        p, positional=False, default=None
    )  # the target architecture (ViTDet: the input size does not matter)
    p.set_defaults(fn=cmd_convert, preset=None, preset_optional=True)  # default per model and source (_CONVERT_PRESETS)
