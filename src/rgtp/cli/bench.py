"""``rgtp bench`` and ``rgtp pedestrian-boxes``: the lab's offline benchmark and its data (rgtp.lab, imported
when a command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rgtp.cli.common import (
    positive_int,
)


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
        help="pedestrians: path to vtest.avi (OpenCV sample clip; see docs/benchmark.md); agreement: comma-separated "
        "videos",
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


def _add_boxes_parser(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
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


def add_parsers(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    _add_boxes_parser(sub)
    _add_bench_parser(sub)
