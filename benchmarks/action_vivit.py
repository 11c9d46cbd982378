"""ViViT-B action recognition, dense vs every RGTP preset: TMACs per clip and clips per second, side by side.

Runs the real evaluation path (``rgtp.evaluation.action.evaluate_action``: the Kinetics-400 / EPIC-KITCHENS-100
reader decodes an mp4 with PyAV, the 12 views are cut, all views run as one batch) on generated clips in the
dataset's own layout (``rgtp.lab.data.synthetic.write_synthetic_kinetics`` / ``write_synthetic_epic``). All presets of a
task run in one sweep, so each clip is decoded once and the presets alternate clip by clip (the machine's drift hits
them alike). Reported per preset: TMACs per clip from the package's counter (the paper's count) next to the paper's
figure, clips per second of the model step (decoding and view cutting excluded, reported separately), and the
speedup over dense.

With random weights (no checkpoint can be downloaded here) accuracy is not reported; compute and time do not depend
on the weights.

Usage: ``PYTHONPATH=src python benchmarks/action_vivit.py [--task k400|epic|both] [--clips 2] [--threads 2]
[--device cpu|cuda] [--weights W] [--out FILE]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from _timing import environment
from rgtp.data.registry import build_action_dataset
from rgtp.evaluation.action import evaluate_action
from rgtp.lab.data.synthetic import write_synthetic_epic, write_synthetic_kinetics
from rgtp.presets import get_preset, preset_names

TASKS = {  # task: (preset prefix, dataset, split)
    "k400": ("vivit_k400_", "kinetics400", "val"),
    "epic": ("vivit_epic_", "epic-kitchens", "validation"),
}


def _clip_seconds(part_dir: Path) -> list[float]:
    return [
        json.loads(line)["seconds"]
        for part in sorted(part_dir.glob("part-*.jsonl"))
        for line in part.read_text().splitlines()[1:]
    ]


def run_task(task: str, clips: int, device: str, weights: str | None, tmp: Path) -> list[dict[str, Any]]:
    prefix, name, split = TASKS[task]
    if task == "k400":  # 10 s at 25 fps, 340x256 (the common Kinetics size); the reader resizes to 224
        root = write_synthetic_kinetics(tmp / task, clips=clips, frames=250, height=256, width=340)
    else:  # EPIC segments of 2 s at 30 fps, 568x320
        root = write_synthetic_epic(tmp / task, segments=clips, frames=60, height=320, width=568)
    dataset = build_action_dataset(name, root, split)
    presets = [get_preset(n) for n in preset_names() if n.startswith(prefix)]
    out = tmp / f"eval_{task}"
    # no prefetch: decoding in a thread would share the 2 cores with the timed model step
    results = evaluate_action(f"vivit-{task}", dataset, presets, weights, out, split, device, True, prefetch=False)
    base = results[0]
    rows = []
    for r in results:
        seconds = _clip_seconds(out / r.preset)
        rows.append(
            {
                "task": task,
                "preset": r.preset,
                "clips": r.clips,
                "tmacs_per_clip": r.tmacs_per_clip,
                "paper_tmacs_per_clip": r.paper.get("clip_tmacs"),
                "clips_per_s": r.clips_per_s,
                "median_s_per_clip": statistics.median(seconds),
                "clip_seconds": seconds,
                "speedup": r.clips_per_s / base.clips_per_s if base.clips_per_s else None,
                "mac_ratio": base.tmacs_per_clip / r.tmacs_per_clip,
                "decode_s_per_clip": r.decode_s_per_clip,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="both", choices=[*TASKS, "both"])
    ap.add_argument("--clips", type=int, default=2, help="clips per task (each runs every preset)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", help="rgtp ViViT weights (default: random)")
    ap.add_argument("--out", default="benchmarks/results/action_vivit_cpu.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = list(TASKS) if args.task == "both" else [args.task]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            rows += run_task(task, args.clips, args.device, args.weights, Path(tmp))
    print(
        f"\nViViT-B, 12 views per clip in one batch, {args.clips} clip(s) per task, "
        f"{'random' if args.weights is None else args.weights} weights, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| preset | TMACs/clip | paper | MAC cut | clips/s | s/clip (median) | speedup | decode s/clip |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        paper = row["paper_tmacs_per_clip"]
        print(
            f"| {row['preset']} | {row['tmacs_per_clip']:.4f} | {'' if paper is None else f'{paper:.4f}'} "
            f"| {row['mac_ratio']:.2f}x | {row['clips_per_s']:.4f} | {row['median_s_per_clip']:.1f} "
            f"| {row['speedup']:.2f}x | {row['decode_s_per_clip']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "action_vivit",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "clips": args.clips,
        "weights": args.weights or "random",
        "environment": environment(),
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
