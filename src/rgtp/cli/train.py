"""``rgtp cache-spatial`` and ``rgtp train``: spatial caching, temporal fine-tuning, ViViT and ViTDet training."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import TYPE_CHECKING, Any

from rgtp.cli.common import (
    action_dataset,
    add_preset_args,
    logger,
    positive_int,
    preset_assignments,
    resolve,
)
from rgtp.config import ConfigError, Preset, override
from rgtp.training.detection import DetTrainConfig
from rgtp.training.vivit import TrainConfig

if TYPE_CHECKING:
    from rgtp.data.detection import DetectionSet


def _set_help(config: type) -> str:
    """--set's help on a training command: every training setting is ``train.KEY=VALUE`` (the same mechanism as a
    preset's fields), KEY a field of the recipe's config."""
    keys = ", ".join(f.name for f in dataclasses.fields(config) if f.name != "recipe")
    return (
        "override a preset field (e.g. rgtp.selection.keep_ratio=0.2) or a training setting of the recipe, "
        f"train.KEY=VALUE (e.g. train.lr=2e-6 train.epochs=3 train.precision=bf16), KEY one of: {keys} (repeatable)"
    )


def training_config(recipe: Any, args: argparse.Namespace) -> Any:
    """The recipe's training config with every ``--set train.KEY=VALUE`` applied (checked against its types)."""
    assignments = [a.removeprefix("train.") for a in args.set or [] if a.startswith("train.")]
    try:
        cfg = override(recipe, *assignments) if assignments else recipe
    except ConfigError as exc:
        raise ConfigError(f"--set train.*: {exc}") from None
    if assignments:
        logger.info("training settings changed: %s", ", ".join(assignments))
    return cfg


def cmd_cache_spatial(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup
    from rgtp.training import cache_spatial

    preset = resolve(args)
    try:
        dataset = action_dataset(args, preset, args.split)
        summary = cache_spatial(
            dataset,
            preset,
            args.weights,
            args.out,
            args.split,
            args.dtype,
            args.device,
            not args.quiet,
        )
    finally:
        cleanup()
    if os.environ.get("RANK", "0") == "0":
        failed = f"; {len(summary.failed)} could not be read (listed in meta.json)" if summary.failed else ""
        print(f"{summary.written} of {summary.count} clips cached in {summary.directory}{failed}")
    return 0


def _train_preset(args: argparse.Namespace) -> Preset:
    """The named preset (or --config); for `train temporal` without one, the preset the cache was made with."""
    from rgtp.training import cached_preset

    if args.preset or args.config:
        return resolve(args)
    preset = cached_preset(args.cache)
    for assignment in preset_assignments(args):
        preset = override(preset, assignment)
    return preset


def cmd_train(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup
    from rgtp.training import default_splits, make_config, recipe_for, train_temporal, train_vivit

    preset = _train_preset(args)
    try:
        recipe = recipe_for(preset, args.recipe)
    except ConfigError:  # the lab's recipes (the small motions ViViT) join the paper's when imported
        import rgtp.lab.recipes  # noqa: F401

        recipe = recipe_for(preset, args.recipe)
    cfg = training_config(make_config(recipe), args)
    default_train, default_val = default_splits(cfg, preset)
    splits = (args.train_split or default_train, args.val_split or default_val)
    progress = not args.quiet
    try:
        if args.mode == "temporal":
            result = train_temporal(args.cache, args.out, preset, args.weights, cfg, splits, args.device, progress)
        else:
            train, val = (action_dataset(args, preset, s) for s in splits)
            result = train_vivit(train, val, args.out, preset, args.weights, cfg, args.device, progress)
    finally:
        cleanup()
    if os.environ.get("RANK", "0") == "0":
        last, best = result.history[-1], result.best
        print(
            f"epoch {last['epoch']}: val top-1 {last['val']['top1']:.2f}; best top-1 {best['top1']:.2f} at epoch "
            f"{best['epoch']}\nweights: {result.out_dir / 'last.pt'}, {result.out_dir / 'best.pt'}"
        )
    return 0


def _detection_sets(args: argparse.Namespace, preset: Preset) -> tuple[DetectionSet, DetectionSet]:
    """The (train, validation) detection sets of `train vitdet` (--data, --video/--boxes, --max-sequences)."""

    from rgtp.lab.data.registry import build_detection_set
    from rgtp.lab.recipes import DET_SPLITS

    options: dict[str, Any] = {k: v for k, v in (("video", args.video), ("boxes", args.boxes)) if v is not None}
    if options and args.data != "pedestrians":
        raise ConfigError("--video and --boxes are options of --data pedestrians")
    if args.data == "pedestrians":  # frames are resized once, for the model's input size
        options["size"] = preset.model.img_size  # type: ignore[union-attr]
    default_train, default_val = DET_SPLITS.get(args.data, ("train", "val"))
    sets = []
    for split in (args.train_split or default_train, args.val_split or default_val):
        data = build_detection_set(args.data, split, **options)
        if args.max_sequences is not None:
            data = dataclasses.replace(data, sequences=data.sequences[: args.max_sequences])
        logger.info("%s %s: %d sequences, %d frames", args.data, split, len(data), data.num_frames)
        sets.append(data)
    return sets[0], sets[1]


def cmd_train_vitdet(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup
    from rgtp.lab.recipes import DET_RECIPES, det_recipe
    from rgtp.training.detection import train_vitdet

    if not args.preset and not args.config:
        args.preset = f"{args.data}_det_base"
    preset = resolve(args)
    recipe = args.recipe or (args.data if args.data in DET_RECIPES else "shapes")
    cfg = training_config(det_recipe(recipe), args)
    try:
        train, val = _detection_sets(args, preset)
        result = train_vitdet(train, val, args.out, preset, cfg, args.weights, args.device, not args.quiet)
    finally:
        cleanup()
    if os.environ.get("RANK", "0") == "0":
        last, best = result.history[-1], result.best
        shown = f"val mAP50 {last['val']['map50']:.2f}" if last["val"] else "not validated"
        print(
            f"epoch {last['epoch']}: {shown}; best mAP50 {best['map50']:.2f} at epoch {best['epoch']}\n"
            f"weights: {result.out_dir / 'last.pt'}, {result.out_dir / 'best.pt'}"
        )
    return 0


def _add_vitdet_training_parser(modes: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = modes.add_parser("vitdet", help="a ViTDet detector (backbone, pyramid, Faster R-CNN) on a detection set")
    add_preset_args(q, positional=False, default=None, set_help=_set_help(DetTrainConfig))
    q.set_defaults(preset_optional=True)  # without one: <data>_det_base
    q.add_argument("--data", required=True, help="detection set: shapes (generated) or pedestrians (--video --boxes)")
    q.add_argument("--video", help="pedestrians: the video file (vtest.avi)")
    q.add_argument("--boxes", help="pedestrians: the boxes file (default: benchmarks/data/vtest_hog_boxes.json)")
    q.add_argument("--train-split", help="default: train")
    q.add_argument("--val-split", help="default: val (shapes), test (pedestrians)")
    q.add_argument("--max-sequences", type=positive_int, help="only the first N sequences of each split (quick runs)")
    q.add_argument("--out", required=True, help="run directory (checkpoint.pt, last.pt, best.pt, history.jsonl)")
    q.add_argument("--recipe", help="the training defaults: shapes or pedestrians (default: the --data name)")
    q.add_argument("--weights", help="starting weights (rgtp state dict); random if omitted")
    q.add_argument("--device", default="cpu", help="cpu or cuda (cuda:<local rank> under torchrun)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(fn=cmd_train_vitdet)


def _add_training_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dataset", help="kinetics400, epic-kitchens, motions or motions-easy (default: the preset's)")
        q.add_argument("--data", "--data-path", "--data_path", dest="data", required=True, help="dataset root")
        q.add_argument(
            "--fps", type=float, help="decode at this frame rate (K400 default 25, as the paper; EPIC: native)"
        )
        q.add_argument("--short-side", type=positive_int, help="resize frames at decode time (default: the crop size)")
        q.add_argument("--max-items", type=positive_int, help="only the first N clips (of each split)")

    def common_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--device", default="cpu", help="cpu or cuda (cuda:<local rank> under torchrun)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("cache-spatial", help="cache spatial features of a split for `rgtp train temporal` (resumable)")
    add_preset_args(p, positional=False, default=None)
    p.add_argument("--weights", help="model weights (rgtp state dict); random if omitted")
    data_args(p)
    p.add_argument("--split", required=True, help="split to cache (e.g. train, val, validation)")
    p.add_argument("--out", required=True, help="cache directory: features go to OUT/<split>/<index>.npz")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored feature precision")
    common_args(p)
    p.set_defaults(fn=cmd_cache_spatial)

    p = sub.add_parser(
        "train", help="fine-tune the temporal model on cached features, train the whole ViViT, or train a ViTDet"
    )
    modes = p.add_subparsers(dest="mode", required=True)
    temporal = modes.add_parser(
        "temporal", help="temporal encoder + classifier on a spatial-feature cache (method §12.5)"
    )
    temporal.add_argument("--cache", required=True, help="directory written by `rgtp cache-spatial`")
    # default preset: the one the cache was made with
    add_preset_args(temporal, positional=False, default=None, set_help=_set_help(TrainConfig))
    temporal.set_defaults(preset_optional=True)
    temporal.add_argument("--weights", required=True, help="starting weights (rgtp state dict)")
    whole = modes.add_parser("vivit", help="the whole ViViT on decoded clips (one random view per clip)")
    add_preset_args(whole, positional=False, default=None, set_help=_set_help(TrainConfig))
    whole.add_argument("--weights", help="starting weights (rgtp state dict); random if omitted")
    data_args(whole)
    whole.add_argument("--classes", help="motions sets: only the clips of these classes (comma-separated names)")
    _add_vitdet_training_parser(modes)
    for q in (temporal, whole):
        q.add_argument("--out", required=True, help="run directory (checkpoint.pt, last.pt, best.pt, history.jsonl)")
        q.add_argument(
            "--recipe", help="the training defaults: k400, epic or motions (default: from the preset's classes)"
        )
        q.add_argument("--train-split", help="default: the recipe's (train)")
        q.add_argument("--val-split", help="default: the recipe's (val / validation)")
        common_args(q)
        q.set_defaults(fn=cmd_train)


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    _add_training_parsers(sub)
