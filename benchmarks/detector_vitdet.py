"""Whole-detector cost of ViTDet-B VID presets: backbone + RGTP + pyramid + Faster R-CNN head, per frame.

Runs the real evaluation path (``rgtp.evaluation.vid.evaluate_vid``: frame decoding, preprocessing, the model step with
its head, per-sequence reset) on a synthetic ImageNet VID split written in the ILSVRC layout (1280x720 frames of moving
shapes, resized to 672x378 as the paper does), for each preset, in alternating order over ``--rounds`` rounds. It
reports per frame:

* GMACs of backbone + RGTP (the paper's count) and of the whole detector (plus the neck and the head, counted as
  they run: the head's cost depends on how many proposals survive);
* wall-clock ms of the model step per frame kind (FULL / PRUNED) and frames per second over the sequence.

With random weights (the default; no checkpoint can be downloaded here) the head finds no objects, but it still
runs the RPN on every level and the box head on all 300 proposals, which is where its cost is; mAP is not reported.

Usage: ``PYTHONPATH=src python benchmarks/detector_vitdet.py [--presets a,b] [--frames 16] [--rounds 2]
[--threads 2] [--device cpu|cuda] [--weights W] [--out FILE]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from _timing import environment
from rgtp.data.vid import VIDDataset
from rgtp.evaluation.vid import evaluate_vid
from rgtp.lab.data.synthetic import write_synthetic_vid
from rgtp.presets import get_preset


def _per_kind(part: Path) -> dict[str, dict[str, float]]:
    """Median ms and mean GMACs per frame kind, from an evaluation's prediction log."""
    frames = [f for line in part.read_text().splitlines()[1:] for f in json.loads(line)["frames"]]
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({f["kind"] for f in frames}):
        sel = [f for f in frames if f["kind"] == kind]
        out[kind] = {
            "count": len(sel),
            "median_ms": 1e3 * statistics.median(f["seconds"] for f in sel),
            "gmacs": statistics.fmean(f["gmacs"] for f in sel),
            "detector_gmacs": statistics.fmean(f["detector_gmacs"] for f in sel),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="vitdet_vid_672_base,vitdet_vid_672_keep512")
    ap.add_argument("--frames", type=int, default=16, help="frames in the sequence (a FULL frame every 8)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating the preset order")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", help="rgtp ViTDet weights (default: random)")
    ap.add_argument("--out", default="benchmarks/results/detector_vitdet_cpu.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    presets = [get_preset(n) for n in names]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_vid(Path(tmp) / "vid", (args.frames,), 720, 1280, num_objects=4, seed=0)
        dataset = VIDDataset(root, "val")
        for r in range(args.rounds):
            order = presets if r % 2 == 0 else presets[::-1]
            for preset in order:
                out = Path(tmp) / f"round{r}"
                (result,) = evaluate_vid(dataset, [preset], args.weights, out, device=args.device, progress=False)
                runs[preset.name].append(
                    {
                        "fps": result.fps,
                        "gmacs_per_frame": result.gmacs_per_frame,
                        "detector_gmacs_per_frame": result.detector_gmacs_per_frame,
                        "full_fraction": result.full_fraction,
                        "per_kind": _per_kind(out / preset.name / "part-000.jsonl"),
                    }
                )
                print(f"round {r}: {preset.name} {result.fps:.3f} fps", file=sys.stderr)
    rows = []
    for name in names:
        rs = runs[name]
        rows.append(
            {
                "preset": name,
                "fps_median": statistics.median(x["fps"] for x in rs),
                "fps_runs": [x["fps"] for x in rs],
                "gmacs_per_frame": rs[0]["gmacs_per_frame"],
                "detector_gmacs_per_frame": rs[0]["detector_gmacs_per_frame"],
                "full_fraction": rs[0]["full_fraction"],
                "per_kind": rs[0]["per_kind"],
                "per_kind_runs": [x["per_kind"] for x in rs],
            }
        )
    base = rows[0]
    print(
        f"\n{args.frames} frames, 1280x720 -> {presets[0].model.img_size} padded, {args.rounds} rounds, "
        f"{'random' if args.weights is None else args.weights} weights, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| preset | GMACs/frame backbone+RGTP | detector GMACs/frame | fps (median) | speedup | FULL % |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['gmacs_per_frame']:.2f} | {row['detector_gmacs_per_frame']:.2f} "
            f"| {row['fps_median']:.3f} | {row['fps_median'] / base['fps_median']:.2f}x "
            f"| {100 * row['full_fraction']:.1f} |"
        )
    print("\nper frame kind (round 0): ms median / detector GMACs")
    for row in rows:
        for kind, v in row["per_kind"].items():
            print(
                f"  {row['preset']:28s} {kind:8s} n={v['count']:3d}  {v['median_ms']:8.1f} ms  "
                f"{v['detector_gmacs']:8.2f} GMACs (backbone+RGTP {v['gmacs']:.2f})"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "detector_vitdet",
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "frames": args.frames,
                "rounds": args.rounds,
                "weights": args.weights or "random",
                "environment": environment(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
