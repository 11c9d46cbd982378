"""``rgtp presets``, ``rgtp show``, ``rgtp flops``: the presets, their configurations and their compute."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rgtp.cli.common import (
    add_preset_args,
    logger,
    resolve,
)
from rgtp.config import save_config, to_dict


def cmd_presets(args: argparse.Namespace) -> int:
    from rgtp.build import shipped
    from rgtp.presets import PAPER, get_preset, preset_names

    print(f"{'preset':28s} {'paper':>6s}  {'weights':7s}  description")
    for name in preset_names():
        preset = get_preset(name)
        paper = f"{PAPER[name].accuracy:6.2f}" if name in PAPER else "     -"
        weights = "shipped" if shipped(name) is not None else "-"
        print(f"{name:28s} {paper}  {weights:7s}  {preset.description}")
    print(
        "\npaper: the accuracy the paper reports (VID mAP50, K400 / EPIC top-1); weights: 'shipped' = trained weights "
        "come with rgtp (rgtp run / demo use them); the others need --weights (see `rgtp convert`) or run random."
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    preset = resolve(args)
    if args.save:
        save_config(preset, args.save)
        logger.info("wrote %s", args.save)
    try:
        import yaml

        print(yaml.safe_dump(to_dict(preset), sort_keys=False), end="")
    except ImportError:
        print(json.dumps(to_dict(preset), indent=2))
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from rgtp.accounting import count_preset

    preset = resolve(args)
    acc = count_preset(preset)
    if args.json:
        print(json.dumps(acc.to_dict(), indent=2))
        return 0
    paper = acc.paper
    print(f"preset {acc.preset} ({acc.family}, method {acc.method}), {acc.num_tokens} tokens, unit: MACs")
    print(f"tokens processed per step kind: {acc.kept}")
    if acc.note:
        print(f"note: {acc.note}")
    if acc.family == "vitdet":
        if acc.full_frame_gmacs is not None:
            print(f"FULL frame    {acc.full_frame_gmacs:9.3f} GMACs   paper {paper.get('full_gmacs')}")
        if acc.pruned_frame_gmacs is not None:
            reduced = next((k for k in acc.kept if k != "full"), "pruned").upper()
            print(f"{reduced + ' frame':13s} {acc.pruned_frame_gmacs:9.3f} GMACs   paper {paper.get('pruned_gmacs')}")
        if acc.full_frame_gmacs is not None and acc.pruned_frame_gmacs is not None:
            avg = f"VID average   {acc.vid_avg_gmacs:9.3f} GMACs   paper {paper.get('avg_gmacs')}"
            print(avg + f"  (FULL fraction {acc.full_fraction:.4f})")
    else:
        views, steps = preset.views[0] * preset.views[1], preset.model.num_steps  # type: ignore[union-attr]
        clip = f"per clip      {acc.clip_tmacs:9.4f} TMACs   paper {paper.get('clip_tmacs')}"
        print(clip + f"  ({views} view{'s' * (views > 1)} x {steps} steps)")
    for kind, scopes in acc.breakdown_gmacs.items():
        print(f"  {kind:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in scopes.items()) + "  (GMACs by scope)")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    sub.add_parser("presets", help="list the presets (every row of the paper's tables)").set_defaults(fn=cmd_presets)

    p = sub.add_parser("show", help="print a preset's full configuration (YAML)")
    add_preset_args(p, positional=True)
    p.add_argument("--save", help="also write it to this .yaml/.json file")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("flops", help="count a preset's multiply-accumulates (no compute: meta tensors)")
    add_preset_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_flops)
