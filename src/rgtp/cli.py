"""The ``rgtp`` command line: presets, configs, compute accounting, running a preset on a video, the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rgtp.config import ConfigError, Preset, ViTDetConfig, load_config, override, save_config, to_dict

__all__ = ["main"]

logger = logging.getLogger("rgtp")


def _resolve(args: argparse.Namespace) -> Preset:
    """The preset named on the command line (or read from --config), with every --set applied."""
    from rgtp.presets import get_preset

    preset = load_config(Preset, args.config) if getattr(args, "config", None) else get_preset(args.preset)
    for assignment in args.set or []:
        preset = override(preset, assignment)
    return preset


def _add_preset_args(p: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        p.add_argument("preset", nargs="?", help="preset name (see `rgtp presets`)")
    else:
        p.add_argument("--preset", default="vitdet_vid_672_keep512", help="preset name (see `rgtp presets`)")
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
        print(f"{name:28s} {PAPER[name].accuracy:6.2f}  {preset.description}")
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

    acc = count_preset(_resolve(args))
    if args.json:
        print(json.dumps(acc.to_dict(), indent=2))
        return 0
    paper = acc.paper
    print(f"preset {acc.preset} ({acc.family}), {acc.num_tokens} tokens, unit: multiply-accumulates")
    print(f"kept tokens per step kind: {acc.kept}")
    if acc.family == "vitdet":
        print(f"FULL frame    {acc.full_frame_gmacs:9.3f} GMACs   paper {paper.get('full_gmacs')}")
        if acc.pruned_frame_gmacs is not None:
            print(f"PRUNED frame  {acc.pruned_frame_gmacs:9.3f} GMACs   paper {paper.get('pruned_gmacs')}")
        print(f"VID average   {acc.vid_avg_gmacs:9.3f} GMACs   paper {paper.get('avg_gmacs')}  (FULL fraction 0.1266)")
    else:
        print(f"per clip      {acc.clip_tmacs:9.4f} TMACs   paper {paper.get('clip_tmacs')}  (12 views x 16 steps)")
    for kind, scopes in acc.breakdown_gmacs.items():
        print(f"  {kind:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in scopes.items()) + "  (GMACs by scope)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rgtp.run import run_video

    preset = _resolve(args)
    jsonl = args.jsonl or str(Path(args.video).with_suffix("").name + f".{preset.name}.jsonl")
    summary = run_video(
        args.video, preset, args.weights, jsonl, args.out, args.max_frames, args.device, args.segment_frames
    )
    _report(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rgtp.data.synthetic import moving_shapes_video, write_video
    from rgtp.run import run_video

    preset = _resolve(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "input.mp4"
    frames, _ = moving_shapes_video(num_frames=args.frames, height=args.height, width=args.width, seed=args.seed)
    write_video(video, frames, fps=10)
    logger.info("generated %s (%d frames %dx%d)", video, args.frames, args.width, args.height)
    summary = run_video(
        video, preset, args.weights, out_dir / "frames.jsonl", out_dir / "annotated.mp4", None, args.device
    )
    _report(summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rgtp.data.vid import VIDDataset
    from rgtp.evaluation.dist import cleanup
    from rgtp.evaluation.vid import evaluate_vid, results_table
    from rgtp.presets import get_preset

    if args.presets:
        if args.config:
            raise ConfigError("give either --presets or --config, not both")
        presets = [get_preset(name.strip()) for name in args.presets.split(",") if name.strip()]
        for assignment in args.set or []:
            presets = [override(p, assignment) for p in presets]
    else:
        presets = [_resolve(args)]
    first = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process shows progress
    dataset = VIDDataset(
        args.data,
        split=args.split,
        layout=args.layout,
        max_sequences=args.max_sequences,
        progress=None if first and not args.quiet else False,
    )
    logger.info("%s: %d sequences, %d frames", args.data, len(dataset), dataset.num_frames)
    try:
        results = evaluate_vid(
            dataset, presets, args.weights, args.out_dir, split=args.split, device=args.device, progress=not args.quiet
        )
    finally:
        cleanup()
    if results:
        print(results_table(results))
        print(f"\nresults: {Path(args.out_dir) / 'results.json'}")
        if args.weights is None:
            print("NOTE: random weights (no --weights): mAP is meaningless; compute and speed are real.")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from rgtp.convert import convert_checkpoint

    preset = _resolve(args)
    if not isinstance(preset.model, ViTDetConfig):
        raise ConfigError(f"preset {preset.name} is not a ViTDet model")
    report = convert_checkpoint(
        args.src, args.dst, source=f"vitdet-{args.source}", cfg=preset.model, trust=args.trust_pickle
    )
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


def _report(summary: object) -> None:
    from rgtp.run import RunSummary

    assert isinstance(summary, RunSummary)
    print(summary.table())
    unit = "GMACs per frame" if not summary.clips else "GMACs per step and view"
    saving = 100 * (1 - summary.mean_gmacs / summary.dense_gmacs) if summary.dense_gmacs else 0.0
    print(
        f"\n{summary.frames} frames of {summary.video} with {summary.preset}: mean {summary.mean_gmacs:.2f} {unit}"
        f" vs dense {summary.dense_gmacs:.2f} ({saving:.0f}% fewer MACs)"
    )
    for clip in summary.clips:
        print(f"clip {clip['clip']}: top-5 (class, prob) {clip['top5']}")
    if summary.weights == "random":
        print("NOTE: random weights (no --weights): predictions are meaningless; kept tokens, MACs and times are real.")
    for what, path in summary.outputs.items():
        print(f"{what}: {path}")


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
            p.add_argument("video", help="input video file (anything PyAV decodes)")
            p.add_argument("--jsonl", help="per-frame results (default: <video>.<preset>.jsonl)")
            p.add_argument("--out", help="annotated video to write (.mp4)")
            p.add_argument("--max-frames", type=int, help="stop after this many frames")
            p.add_argument(
                "--segment-frames",
                type=int,
                default=250,
                help="ViViT: frames per classified segment (each gets the preset's 3x4 views)",
            )
        else:
            p.add_argument("--out-dir", default="rgtp_demo", help="where input.mp4, frames.jsonl, annotated.mp4 go")
            p.add_argument("--frames", type=int, default=24)
            p.add_argument("--height", type=int, default=378)
            p.add_argument("--width", type=int, default=672)
            p.add_argument("--seed", type=int, default=0)
        _add_preset_args(p, positional=False)
        p.add_argument("--weights", help="model weights (rgtp state dict); random weights if omitted")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.set_defaults(fn=fn)

    p = sub.add_parser("evaluate", help="evaluate presets on a dataset (resumable; runs under torchrun)")
    p.add_argument("task", choices=["vitdet-vid"], help="what to evaluate")
    _add_preset_args(p, positional=False)
    p.add_argument("--presets", help="comma-separated presets to sweep in one run (weights are read once)")
    p.add_argument("--weights", help="model weights (rgtp state dict, see `rgtp convert`); random if omitted")
    p.add_argument("--data", required=True, help="ImageNet VID root (ILSVRC2015 layout or COCO-style JSON layout)")
    p.add_argument("--split", default="vid_val", help="split: val / vid_val / vid_minival / ... (default vid_val)")
    p.add_argument("--layout", default="auto", choices=["auto", "ilsvrc", "coco"])
    p.add_argument("--out-dir", default="eval_vid", help="predictions (per preset) and results.json")
    p.add_argument("--max-sequences", type=int, help="evaluate only the first N sequences")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("convert", help="convert an official checkpoint into rgtp weights (strict)")
    p.add_argument("model", choices=["vitdet"], help="model family")
    p.add_argument("src", help="official checkpoint (.pth / .pkl)")
    p.add_argument("dst", help="rgtp checkpoint to write (.pth)")
    p.add_argument(
        "--source",
        default="vid",
        choices=["vid", "coco", "eventful"],
        help="vid: detectron2 ViTDet-VID Faster R-CNN (frcnn_vitdet_final.pth); coco: detectron2 COCO ViTDet-B "
        "(backbone and pyramid only); eventful: the same VID detector as converted by the reference code",
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)")
    _add_preset_args(p, positional=False)  # the target architecture (input size does not matter)
    p.set_defaults(fn=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "preset", "x") is None and getattr(args, "config", None) is None:
        print("rgtp: error: name a preset (see `rgtp presets`) or give --config FILE", file=sys.stderr)
        return 2
    try:
        return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rgtp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
