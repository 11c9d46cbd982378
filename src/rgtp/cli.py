"""The ``rgtp`` command line: presets, configs, compute accounting, running presets on videos, conversion,
evaluation, caching and training."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import typing
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rgtp.config import (
    PRECISIONS,
    ConfigError,
    ExecutionConfig,
    Preset,
    changed,
    load_config,
    override,
    save_config,
    to_dict,
)
from rgtp.interrupt import Interrupted, exit_status, interrupt_as_exception

if TYPE_CHECKING:
    from rgtp.data.action import ActionDataset
    from rgtp.data.detection import DetectionSet

__all__ = ["main"]

logger = logging.getLogger("rgtp")
PRECISION_HELP = "fp32, or bf16 mixed precision (about 2x faster on CPUs with bfloat16 instructions; default: fp32)"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of frames, items or steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _resolve(args: argparse.Namespace) -> Preset:
    """The preset named on the command line (or read from --config), with every --set applied."""
    from rgtp.presets import get_preset

    preset = load_config(Preset, args.config) if getattr(args, "config", None) else get_preset(args.preset)
    if args.set:
        preset = changed(preset, override(preset, *args.set), args.set)
    return preset


def _add_preset_args(
    p: argparse.ArgumentParser, positional: bool, default: str | None = "vitdet_vid_672_keep512"
) -> None:
    if positional:
        p.add_argument("preset", nargs="?", help="preset name (see `rgtp presets`)")
    else:
        default_help = f"; default {default}" if default else ""
        p.add_argument("--preset", default=default, help=f"preset name (see `rgtp presets`{default_help})")
    p.add_argument("--config", help="a preset saved as YAML/JSON (instead of a preset name)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field, e.g. rgtp.selection.keep_ratio=0.2 (repeatable)",
    )


def cmd_presets(args: argparse.Namespace) -> int:
    from rgtp.presets import PAPER, get_preset, preset_names

    for name in preset_names():
        preset = get_preset(name)
        paper = f"{PAPER[name].accuracy:6.2f}" if name in PAPER else "     -"
        print(f"{name:28s} {paper}  {preset.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    preset = _resolve(args)
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

    preset = _resolve(args)
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


def _execution(args: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(attention=args.attention, precision=args.precision, compile=args.compile)


def cmd_run(args: argparse.Namespace) -> int:
    from rgtp.run import run_video, run_videos

    preset = _resolve(args)
    if len(args.video) > 1:
        if args.jsonl or args.out or args.compare:
            raise ValueError("--jsonl, --out and --compare take one video; several videos write to --out-dir")
        summaries = run_videos(
            args.video, preset, args.weights, args.out_dir or ".", args.max_frames, args.device, args.strict,
            _execution(args),
        )  # fmt: skip
        for summary in summaries:
            _report(summary)
        stopped = summaries[0].interrupted
        return exit_status(stopped) if stopped else 0
    video = args.video[0]
    default = str(Path(video).with_suffix("").name + f".{preset.name}.jsonl")
    jsonl = args.jsonl or (str(Path(args.out_dir) / default) if args.out_dir else default)
    summary = run_video(
        video,
        preset,
        args.weights,
        jsonl,
        args.out,
        args.max_frames,
        args.device,
        args.segment_frames,
        strict=args.strict,
        compare=args.compare is not None,
        out_scale=args.out_scale,
        execution=_execution(args),
    )
    _report(summary)
    return exit_status(summary.interrupted) if summary.interrupted else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rgtp.run import run_video

    preset = _resolve(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "input.mp4"
    segment = _demo_video(preset, video, args)
    summary = run_video(
        video,
        preset,
        args.weights,
        out_dir / "frames.jsonl",
        out_dir / "annotated.mp4",
        None,
        args.device,
        segment,
        execution=_execution(args),
    )
    _report(summary)
    return exit_status(summary.interrupted) if summary.interrupted else 0


def _demo_video(preset: Preset, path: Path, args: argparse.Namespace) -> int:
    """Write the demo's generated input video; returns the frames per classified segment (ViViT)."""
    import numpy as np

    from rgtp.lab.data.synthetic import moving_shapes_video, write_video

    name = preset.name
    if name.startswith("shapes_det"):  # the shipped detector's own test distribution
        from rgtp.lab.data.shapes import make_shapes_split

        seq = make_shapes_split("test", num_sequences=1, length=args.frames, seed=args.seed)[0]
        frames = seq.frames
    elif name.startswith("motions"):  # one clip of each motion class, back to back
        from rgtp.lab.data.motions import MOTION_CLASSES, motion_clip

        num_frames = preset.model.num_frames  # type: ignore[union-attr]
        frames = np.concatenate(
            [motion_clip(c, [args.seed, c], num_frames, preset.model.img_size) for c in range(len(MOTION_CLASSES))]
        )
        logger.info("clips, in order: %s", ", ".join(MOTION_CLASSES))
        write_video(path, frames, fps=8)
        return num_frames
    else:
        height, width = args.height or 378, args.width or 672
        frames, _ = moving_shapes_video(num_frames=args.frames, height=height, width=width, seed=args.seed)
    write_video(path, frames, fps=10)
    logger.info("generated %s (%d frames %dx%d)", path, len(frames), frames.shape[2], frames.shape[1])
    return 250


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
        for assignment in args.set or []:
            presets = [override(p, assignment) for p in presets]
        return presets
    if args.preset is None and args.config is None:
        args.preset = _EVALUATE_DEFAULTS[args.task][0]
    return [_resolve(args)]


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
            dataset = _action_dataset(args, presets[0], split)
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


# `rgtp convert MODEL`: its sources (the first is the default) and the default target preset per source.
_CONVERT_SOURCES = {"vitdet": ("vid", "coco", "eventful"), "vivit": ("k400", "epic")}
_CONVERT_PRESETS = {
    "vitdet": "vitdet_vid_672_keep512",
    "vivit-k400": "vivit_k400_base",
    "vivit-epic": "vivit_epic_base",
}


def cmd_convert(args: argparse.Namespace) -> int:
    import dataclasses

    from rgtp.convert import EPIC_NOUNS, convert_checkpoint

    source = args.source or _CONVERT_SOURCES[args.model][0]
    if source not in _CONVERT_SOURCES[args.model]:
        raise ConfigError(f"--source {source} is not a {args.model} source; choose from {_CONVERT_SOURCES[args.model]}")
    name = f"{args.model}-{source}"
    if not args.preset and not args.config:
        args.preset = _CONVERT_PRESETS.get(name) or _CONVERT_PRESETS[args.model]
    preset = _resolve(args)
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


def cmd_pedestrian_boxes(args: argparse.Namespace) -> int:
    from rgtp.lab.data.pedestrians import write_pedestrian_boxes

    names = ("upscale", "win_stride", "scale", "hit_threshold", "min_motion", "nms_iou")
    kw = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    try:
        out = write_pedestrian_boxes(args.video, args.out, progress=not args.quiet, max_frames=args.max_frames, **kw)
    except ImportError as exc:  # OpenCV (or PyAV) missing
        print(f"rgtp: error: {exc}", file=sys.stderr)
        return 2
    data = json.loads(out.read_text())
    frames, count = data["num_frames"], sum(len(f) for f in data["frames"])
    print(f"wrote {out}: {count} boxes in {frames} frames ({count / max(frames, 1):.2f} per frame)")
    return 0


# --- `rgtp cache-spatial` and `rgtp train` (the logic lives in rgtp.training) ----------------------------------------


def _action_dataset(args: argparse.Namespace, preset: Preset, split: str) -> ActionDataset:
    """The --dataset (default: the preset's) split, with the reader options and --max-items applied."""
    from rgtp.data.registry import ACTION_DATASETS, build_action_dataset, dataset_for_preset

    options: dict[str, Any] = {k: v for k, v in (("fps", args.fps), ("short_side", args.short_side)) if v is not None}
    name = args.dataset or dataset_for_preset(preset.name)
    if name not in ACTION_DATASETS:  # the lab's generated sets (motions) join the table when imported
        import rgtp.lab.data.registry  # noqa: F401
    if getattr(args, "classes", None):
        if not name.startswith("motions"):
            raise ConfigError(f"--classes is an option of the generated motions sets, not of {name}")
        options["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    dataset = build_action_dataset(name, args.data, split, **options)
    if args.max_items is not None:
        dataset.clips = dataset.clips[: args.max_items]
    logger.info("%s %s: %d clips", args.data, split, len(dataset))
    return dataset


def cmd_cache_spatial(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup
    from rgtp.training import cache_spatial

    preset = _resolve(args)
    try:
        dataset = _action_dataset(args, preset, args.split)
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
        return _resolve(args)
    preset = cached_preset(args.cache)
    for assignment in args.set or []:
        preset = override(preset, assignment)
    return preset


def cmd_train(args: argparse.Namespace) -> int:
    from rgtp.evaluation.dist import cleanup
    from rgtp.training import default_splits, make_config, recipe_for, train_temporal, train_vivit

    preset = _train_preset(args)
    names = ("lr", "epochs", "batch_size", "weight_decay", "dropout", "seed", "max_steps", "workers", "clip_grad")
    names += ("precision", "stop_top1")
    overrides = {k: getattr(args, k) for k in names}
    flags = {"double_softmax": args.double_softmax or None, "train_nouns": args.train_nouns or None}
    try:
        recipe = recipe_for(preset, args.recipe)
    except ConfigError:  # the lab's recipes (the small motions ViViT) join the paper's when imported
        import rgtp.lab.recipes  # noqa: F401

        recipe = recipe_for(preset, args.recipe)
    cfg = make_config(recipe, **flags, **overrides)
    default_train, default_val = default_splits(cfg, preset)
    splits = (args.train_split or default_train, args.val_split or default_val)
    progress = not args.quiet
    try:
        if args.mode == "temporal":
            result = train_temporal(args.cache, args.out, preset, args.weights, cfg, splits, args.device, progress)
        else:
            train, val = (_action_dataset(args, preset, s) for s in splits)
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
    import dataclasses

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
    preset = _resolve(args)
    recipe = args.recipe or (args.data if args.data in DET_RECIPES else "shapes")
    names = ("lr", "epochs", "batch_size", "weight_decay", "warmup_steps", "seed", "max_steps", "workers", "precision")
    overrides = {k: getattr(args, k) for k in names}
    flags = {"val_frames": args.val_frames, "eval_every": args.eval_every, "hflip": False if args.no_hflip else None}
    cfg = det_recipe(recipe, **overrides, **flags)
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
    _add_preset_args(q, positional=False, default="")  # default: <data>_det_base
    q.add_argument("--data", required=True, help="detection set: shapes (generated) or pedestrians (--video --boxes)")
    q.add_argument("--video", help="pedestrians: the video file (vtest.avi)")
    q.add_argument("--boxes", help="pedestrians: the boxes file (default: benchmarks/data/vtest_hog_boxes.json)")
    q.add_argument("--train-split", help="default: train")
    q.add_argument("--val-split", help="default: val (shapes), test (pedestrians)")
    q.add_argument("--max-sequences", type=positive_int, help="only the first N sequences of each split (quick runs)")
    q.add_argument("--out", required=True, help="run directory (checkpoint.pt, last.pt, best.pt, history.jsonl)")
    q.add_argument("--recipe", choices=["shapes", "pedestrians"], help="defaults (default: the --data name)")
    q.add_argument("--weights", help="starting weights (rgtp state dict); random if omitted")
    q.add_argument("--epochs", type=int)
    q.add_argument("--lr", type=float, help="peak learning rate (linear warmup, then cosine decay)")
    q.add_argument("--batch-size", type=positive_int, help="global batch of frames (split over the torchrun processes)")
    q.add_argument("--weight-decay", type=float)
    q.add_argument("--warmup-steps", type=int)
    q.add_argument("--seed", type=int)
    q.add_argument("--no-hflip", action="store_true", help="no random horizontal flips")
    q.add_argument("--max-steps", type=positive_int, help="at most this many steps per epoch (smoke tests)")
    q.add_argument("--val-frames", type=positive_int, help="validate on the first N frames of the validation split")
    q.add_argument("--eval-every", type=positive_int, help="validate every N epochs (and after the last)")
    q.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    q.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
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
    _add_preset_args(p, positional=False, default=None)
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
    temporal = modes.add_parser("temporal", help="temporal encoder + classifier on a spatial-feature cache (§12.5)")
    temporal.add_argument("--cache", required=True, help="directory written by `rgtp cache-spatial`")
    _add_preset_args(temporal, positional=False, default="")  # default: the preset the cache was made with
    temporal.add_argument("--weights", required=True, help="starting weights (rgtp state dict)")
    temporal.add_argument("--epochs", type=int, help="default: the recipe's")
    whole = modes.add_parser("vivit", help="the whole ViViT on decoded clips (one random view per clip)")
    _add_preset_args(whole, positional=False, default=None)
    whole.add_argument("--weights", help="starting weights (rgtp state dict); random if omitted")
    whole.add_argument("--epochs", type=int, help="default: the recipe's (motions: 20)")
    data_args(whole)
    whole.add_argument("--classes", help="motions sets: only the clips of these classes (comma-separated names)")
    _add_vitdet_training_parser(modes)
    for q in (temporal, whole):
        q.add_argument("--out", required=True, help="run directory (checkpoint.pt, last.pt, best.pt, history.jsonl)")
        q.add_argument(
            "--recipe", choices=["k400", "epic", "motions"], help="defaults (default: from the preset's classes)"
        )
        q.add_argument("--train-split", help="default: the recipe's (train)")
        q.add_argument("--val-split", help="default: the recipe's (val / validation)")
        q.add_argument("--lr", type=float)
        q.add_argument("--batch-size", type=positive_int, help="global batch (split over the torchrun processes)")
        q.add_argument("--weight-decay", type=float)
        q.add_argument("--dropout", type=float, help="before the classifier (default 0.5)")
        q.add_argument("--clip-grad", type=float, help="max gradient norm (default: the recipe's)")
        q.add_argument("--seed", type=int)
        q.add_argument("--double-softmax", action="store_true", help="the reference's loss: CE of the probabilities")
        q.add_argument(
            "--train-nouns", action="store_true", help="EPIC: also train the noun head (the paper trains verbs only)"
        )
        q.add_argument("--max-steps", type=positive_int, help="at most this many steps per epoch (smoke tests)")
        q.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
        q.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
        q.add_argument("--stop-top1", type=float, help="stop after the first epoch whose val top-1 reaches this")
        common_args(q)
        q.set_defaults(fn=cmd_train)


def _report(summary: object) -> None:
    from rgtp.run import RunSummary

    assert isinstance(summary, RunSummary)
    print(summary.table())
    unit = "GMACs per frame" if summary.unit == "frame" else "GMACs per step and view"
    saving = 100 * (1 - summary.mean_gmacs / summary.dense_gmacs) if summary.dense_gmacs else 0.0
    print(
        f"\n{summary.frames} {summary.unit}s of {summary.video} with {summary.preset}: mean {summary.mean_gmacs:.3g} "
        f"{unit} vs dense {summary.dense_gmacs:.3g} ({saving:.0f}% fewer MACs)"
    )
    print(f"model: {summary.model}")
    for clip in summary.clips:
        top = [(name, p) for name, (_, p) in zip(clip["top5_names"], clip["top5"], strict=True)]
        print(f"clip {clip['clip']}: top-5 (class, prob) {top}")
    if summary.agreement:
        print("pruned vs dense: " + ", ".join(f"{k} {v}" for k, v in summary.agreement.items()))
    if summary.interrupted:
        stopped = signal.Signals(summary.interrupted).name
        print(f"STOPPED by {stopped} after {summary.frames} {summary.unit}s: the outputs hold every finished one.")
    for what, path in summary.outputs.items():
        print(f"{what}: {path}")


def _add_execution_args(p: argparse.ArgumentParser) -> None:
    """How the runners execute (:class:`rgtp.config.ExecutionConfig`, its allowed values read from its types)."""
    helps = {
        "attention": "fused: scaled_dot_product_attention wherever the rollout needs no probabilities",
        "precision": "bf16 / fp16: the model under autocast (the rollout stays float32)",
        "compile": "compile: torch.compile the blocks after block 0; graphs: also CUDA graphs on a GPU",
    }
    hints = typing.get_type_hints(ExecutionConfig)
    for f in dataclasses.fields(ExecutionConfig):
        p.add_argument(
            f"--{f.name}",
            default=f.default,
            choices=typing.get_args(hints[f.name]),
            help=f"{helps[f.name]} (default: {f.default}; the GPU path: --attention fused --precision bf16 "
            "--compile graphs)"
            if f.name == "compile"
            else f"{helps[f.name]} (default: {f.default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgtp", description="Rollout-Guided Token Pruning for video ViTs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="list the presets (every row of the paper's tables)").set_defaults(fn=cmd_presets)

    p = sub.add_parser("show", help="print a preset's full configuration (YAML)")
    _add_preset_args(p, positional=True)
    p.add_argument("--save", help="also write it to this .yaml/.json file")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("flops", help="count a preset's multiply-accumulates (no compute: meta tensors)")
    _add_preset_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_flops)

    for name, fn, text in (
        ("run", cmd_run, "run a preset frame by frame on a video"),
        ("demo", cmd_demo, "generate a short video and run a preset on it (no download)"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "run":
            p.add_argument(
                "video",
                nargs="+",
                help="input video file(s), anything PyAV decodes; several videos (ViTDet presets) are stepped together "
                "as the streams of one batch, each with its own <video>.<preset>.jsonl in --out-dir",
            )
            p.add_argument("--jsonl", help="per-frame results (default: <video>.<preset>.jsonl)")
            p.add_argument("--out-dir", help="where the JSON lines go (default: the current directory)")
            p.add_argument("--out", help="annotated video to write (.mp4)")
            p.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
            p.add_argument(
                "--strict",
                action="store_true",
                help="fail on a damaged video (fewer frames than its container announces) instead of warning",
            )
            p.add_argument(
                "--compare",
                choices=["dense"],
                help="also run the dense model on the same frames: both side by side in --out, and how far pruning "
                "changed the answer (detections: mAP50 against the dense ones; classes: top-1 agreement)",
            )
            p.add_argument(
                "--out-scale",
                type=float,
                default=1.0,
                help="size of the annotated video relative to the source (default 1: the source's resolution; frames "
                "narrower than 480 px are first drawn at an integer multiple, so that the caption is legible)",
            )
            p.add_argument(
                "--segment-frames",
                type=positive_int,
                default=250,
                help="ViViT: frames per classified segment (each gets the preset's 3x4 views)",
            )
        else:
            p.add_argument("--out-dir", default="rgtp_demo", help="where input.mp4, frames.jsonl, annotated.mp4 go")
            p.add_argument("--frames", type=positive_int, default=48, help="frames to generate (ViTDet presets)")
            p.add_argument("--height", type=positive_int, help="other ViTDet presets: frame height (default 378)")
            p.add_argument("--width", type=positive_int, help="other ViTDet presets: frame width (default 672)")
            p.add_argument("--seed", type=int, default=0)
        # the defaults are trained models: the detector trained on real footage for a user's video, the shapes
        # detector on its own generated test distribution for the demo
        _add_preset_args(p, positional=False, default="shapes_det_plus" if name == "demo" else "pedestrians_det_plus")
        p.add_argument(
            "--weights",
            help="model weights (rgtp state dict); default: the ones shipped for the preset if any, else random; "
            "'random' for random weights",
        )
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        _add_execution_args(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("evaluate", help="evaluate presets on a dataset (resumable; runs under torchrun)")
    p.add_argument(
        "task",
        choices=list(_EVALUATE_DEFAULTS),
        help="vitdet-vid: ImageNet VID mAP50; vivit-k400: Kinetics-400 top-1/5; vivit-epic: EPIC-KITCHENS-100 verbs",
    )
    _add_preset_args(p, positional=False, default=None)
    p.add_argument("--presets", help="comma-separated presets to sweep in one run (weights are read once)")
    p.add_argument("--weights", help="model weights (rgtp state dict, see `rgtp convert`); random if omitted")
    p.add_argument("--data", required=True, help="dataset root (see README: layouts per task)")
    p.add_argument("--split", help="split (default: vid_val / val / validation)")
    p.add_argument("--layout", default="auto", choices=["auto", "ilsvrc", "coco"], help="VID annotation layout")
    p.add_argument("--fps", type=float, help="decode at this frame rate (K400 default 25, as the paper; EPIC: native)")
    p.add_argument("--short-side", type=positive_int, help="resize frames at decode time (default: the crop size)")
    p.add_argument("--out-dir", help="predictions (per preset) and results.json (default eval_vid/k400/epic)")
    p.add_argument("--max-items", "--max-sequences", type=positive_int, help="only the first N sequences / clips")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_evaluate)

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
    _add_preset_args(p, positional=False)  # the target architecture (ViTDet: the input size does not matter)
    p.set_defaults(fn=cmd_convert, preset="")  # default preset per model and source (see _CONVERT_PRESETS)

    p = sub.add_parser(
        "pedestrian-boxes",
        help="build the pedestrian benchmark's boxes with OpenCV's HOG people detector (needs rgtp[bench])",
        description="Run OpenCV's HOG people detector on every frame of VIDEO and write the boxes JSON that the "
        "pedestrian benchmark loads (pseudo ground truth; see rgtp.lab.data.pedestrians). VIDEO is OpenCV's sample "
        "clip vtest.avi: `apt-get download opencv-doc && dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x "
        "--wildcards '*/examples/data/vtest.avi'`, or samples/data/vtest.avi in OpenCV's GitHub repository.",
    )
    p.add_argument("video", help="the video (vtest.avi)")
    p.add_argument("--out", required=True, help="boxes JSON to write (shipped: benchmarks/data/vtest_hog_boxes.json)")
    p.add_argument("--upscale", type=float, help="resize frames by this factor before HOG (default 2)")
    p.add_argument("--win-stride", type=positive_int, help="HOG window stride, a multiple of 8 (default 8)")
    p.add_argument("--scale", type=float, help="HOG pyramid scale step (default 1.1)")
    p.add_argument("--hit-threshold", type=float, help="smallest SVM margin kept (default 0.3)")
    p.add_argument("--min-motion", type=float, help="smallest moving fraction of a box, 0 disables (default 0.1)")
    p.add_argument("--nms-iou", type=float, help="NMS IoU threshold (default 0.4)")
    p.add_argument("--max-frames", type=positive_int, help="only the first N frames (a quick look)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_pedestrian_boxes)
    _add_training_parsers(sub)
    _add_bench_parser(sub)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from rgtp.lab.bench import run_bench

    results = run_bench(
        args.task,
        out_dir=args.out_dir,
        weights=args.weights,
        train=args.train,
        methods=args.methods.split(",") if args.methods else None,
        video=args.video,
        boxes=args.boxes,
        max_items=args.max_items,
        max_frames=args.max_frames,
        timing=args.timing,
        timing_rounds=args.timing_rounds,
        device=args.device,
        progress=not args.quiet,
        retime=args.retime,
    )
    print(results["table"])
    if args.task != "sweep":
        from rgtp.lab.bench.tasks import _targets_text

        print(_targets_text(results["targets"]))
    return 0


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="accuracy vs compute of RGTP, its ablations and its peers on small models trained here (offline)",
    )
    p.add_argument(
        "task",
        choices=["detection", "action", "pedestrians", "cuts", "sweep", "agreement"],
        help="detection: generated shapes; pedestrians: vtest.avi; action: generated motions; cuts: shapes with scene "
        "cuts; sweep: shapes at camera speeds 0-8 px/frame; agreement: pruned vs dense outputs on real videos",
    )
    p.add_argument("--out-dir", help="results.json, table.md, plot.png, log/ (default benchmarks/results/bench_TASK)")
    p.add_argument("--weights", help="model weights (default: the ones shipped for the task)")
    p.add_argument("--train", action="store_true", help="train the model first with `rgtp train` (OUT/train)")
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: all but RGTP's ablations; 'all': with them), e.g. RGTP,Eventful,ToMe",
    )
    p.add_argument(
        "--video",
        help="pedestrians: path to vtest.avi (OpenCV sample clip; see README); agreement: comma-separated videos",
    )
    p.add_argument("--boxes", help="pedestrians: HOG boxes JSON (default: the shipped benchmarks/data file)")
    p.add_argument("--max-items", type=positive_int, help="only the first N test sequences / clips (quick runs)")
    p.add_argument("--max-frames", type=positive_int, help="detection: only the first N frames of each sequence")
    p.add_argument("--timing", type=int, help="frames (clips) timed per variant and round (0: no timing)")
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument(
        "--retime", action="store_true", help="measure the timing rounds again (reusing the logged accuracy passes)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    first = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only the first process logs (and errors)
    level = (logging.DEBUG if args.verbose else logging.INFO) if first else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command != "evaluate" and getattr(args, "preset", "x") is None and getattr(args, "config", None) is None:
        print("rgtp: error: name a preset (see `rgtp presets`) or give --config FILE", file=sys.stderr)
        return 2
    try:
        if getattr(args, "device", None) is not None:
            from rgtp.build import resolve_device

            args.device = resolve_device(args.device)
        with interrupt_as_exception():
            return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rgtp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Interrupted
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(
            f"rgtp: interrupted ({signal.Signals(signum).name}); what was finished is written "
            "(evaluations, benchmarks and training resume when the same command is run again)",
            file=sys.stderr,
        )
        return exit_status(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
