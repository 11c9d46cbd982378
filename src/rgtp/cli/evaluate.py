"""``rgtp evaluate``: presets on ImageNet VID, Kinetics-400 or EPIC-KITCHENS-100 (resumable, under torchrun)."""

from __future__ import annotations

import argparse
import os
import typing
from functools import partial
from pathlib import Path
from typing import Any

from rgtp.cli.common import (
    action_dataset,
    add_preset_args,
    logger,
    positive_int,
    preset_assignments,
    resolve,
)
from rgtp.config import ConfigError, Preset, override
from rgtp.data.vid import Layout

_EVALUATE_DEFAULTS = {  # task: (default preset, default split, dataset)
    "vitdet-vid": ("vitdet_vid_672_keep512", "vid_val", "vid"),
    "vivit-k400": ("vivit_k400_keep049", "val", "kinetics400"),
    "vivit-epic": ("vivit_epic_fg180_bg016", "validation", "epic-kitchens"),
}


def _evaluate_presets(args: argparse.Namespace) -> list[Preset]:
    from rgtp.presets import get_preset

    if args.presets:
        if args.config:
            raise ConfigError("give either --presets or --config, not both")
        presets = [get_preset(name.strip()) for name in args.presets.split(",") if name.strip()]
        for assignment in preset_assignments(args):
            presets = [override(p, assignment) for p in presets]
        return presets
    if args.preset is None and args.config is None:
        args.preset = _EVALUATE_DEFAULTS[args.task][0]
    return [resolve(args)]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup

    presets = _evaluate_presets(args)
    split = args.split or _EVALUATE_DEFAULTS[args.task][1]
    args.out_dir = args.out_dir or f"eval_{args.task.split('-')[-1]}"
    first = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process shows progress
    try:
        if args.task == "vitdet-vid":
            from rgtp.data.vid import VIDDataset
            from rgtp.evaluation.vid import evaluate_vid, results_table

            dataset = VIDDataset(
                args.data,
                split=split,
                layout=args.layout,
                max_sequences=args.max_items,
                progress=None if first and not args.quiet else False,
            )
            logger.info("%s: %d sequences, %d frames", args.data, len(dataset), dataset.num_frames)
            evaluate = evaluate_vid
            table = results_table
            what = "mAP"
        else:
            from rgtp.evaluation.action import action_table, evaluate_action

            args.dataset = _EVALUATE_DEFAULTS[args.task][2]
            dataset = action_dataset(args, presets[0], split)
            evaluate = partial(evaluate_action, args.task)
            table = action_table
            what = "accuracy"
        results = evaluate(dataset, presets, args.weights, args.out_dir, split, args.device, not args.quiet)
    finally:
        cleanup()
    if results:
        print(table(results))
        print(f"\nresults: {Path(args.out_dir) / 'results.json'}")
        if args.weights is None:
            print(f"NOTE: random weights (no --weights): {what} is meaningless; compute and speed are real.")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("evaluate", help="evaluate presets on a dataset (resumable; runs under torchrun)")
    p.add_argument(
        "task",
        choices=list(_EVALUATE_DEFAULTS),
        help="vitdet-vid: ImageNet VID mAP50; vivit-k400: Kinetics-400 top-1/5; vivit-epic: EPIC-KITCHENS-100 verbs",
    )
    add_preset_args(p, positional=False, default=None)
    p.add_argument("--presets", help="comma-separated presets to sweep in one run (weights are read once)")
    p.add_argument("--weights", help="model weights (rgtp state dict, see `rgtp convert`); random if omitted")
    p.add_argument(
        "--data", required=True, help="dataset root (layouts per task: docs/reproduce-vid.md, docs/reproduce-vivit.md)"
    )
    p.add_argument("--split", help="split (default: vid_val / val / validation)")
    p.add_argument("--layout", default="auto", choices=typing.get_args(Layout), help="VID annotation layout")
    p.add_argument("--fps", type=float, help="decode at this frame rate (K400 default 25, as the paper; EPIC: native)")
    p.add_argument("--short-side", type=positive_int, help="resize frames at decode time (default: the crop size)")
    p.add_argument("--out-dir", help="predictions (per preset) and results.json (default eval_vid/k400/epic)")
    p.add_argument("--max-items", "--max-sequences", type=positive_int, help="only the first N sequences / clips")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_evaluate)
