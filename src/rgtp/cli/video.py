"""``rgtp run`` and ``rgtp demo``: a preset frame by frame on videos (several at once as one batch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rgtp.cli.common import (
    add_execution_args,
    add_preset_args,
    execution_of,
    logger,
    positive_int,
    report,
    resolve,
)
from rgtp.config import Preset
from rgtp.interrupt import exit_status


def cmd_run(args: argparse.Namespace) -> int:
    from rgtp.run import run_video, run_videos

    preset = resolve(args)
    if len(args.video) > 1:
        if args.jsonl or args.out or args.compare:
            raise ValueError("--jsonl, --out and --compare take one video; several videos write to --out-dir")
        summaries = run_videos(
            args.video, preset, args.weights, args.out_dir or ".", args.max_frames, args.device, args.strict,
            execution_of(args),
        )  # fmt: skip
        for summary in summaries:
            report(summary)
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
        execution=execution_of(args),
    )
    report(summary)
    return exit_status(summary.interrupted) if summary.interrupted else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rgtp.run import run_video

    preset = resolve(args)
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
        execution=execution_of(args),
    )
    report(summary)
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


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
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
        add_preset_args(p, positional=False, default="shapes_det_plus" if name == "demo" else "pedestrians_det_plus")
        p.add_argument(
            "--weights",
            help="model weights (rgtp state dict); default: the ones shipped for the preset if any, else random; "
            "'random' for random weights",
        )
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        add_execution_args(p)
        p.set_defaults(fn=fn)
