"""Reproduce the paper's compute columns for every preset: ours (counted on meta tensors) next to the reference's.

Usage: python benchmarks/flops_table.py [--out benchmarks/results/flops_table.json]
Prints a Markdown table (the one in the README) and writes JSON. Units: multiply-accumulates.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from rgtp.accounting import count_preset
from rgtp.presets import PAPER, get_preset


def _pct(ours: float, ref: float) -> str:
    return f"{100 * (ours / ref - 1):+.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/flops_table.json")
    args = parser.parse_args()
    rows, vitdet_lines, vivit_lines = [], [], []
    for name in PAPER:
        acc, paper = count_preset(get_preset(name)), PAPER[name]
        rows.append(acc.to_dict())
        if acc.family == "vitdet":
            pruned = "–" if acc.pruned_frame_gmacs is None else f"{acc.pruned_frame_gmacs:.2f}"
            ref_pruned = "–" if paper.pruned_gmacs is None else f"{paper.pruned_gmacs:.2f}"
            diff = "" if acc.pruned_frame_gmacs is None else _pct(acc.pruned_frame_gmacs, paper.pruned_gmacs)
            vitdet_lines.append(
                f"| {name} | {acc.kept.get('rollout', acc.num_tokens)} | {paper.full_gmacs:.2f} / {ref_pruned} | "
                f"{acc.full_frame_gmacs:.2f} / {pruned} | {_pct(acc.full_frame_gmacs, paper.full_gmacs)} / {diff} | "
                f"{paper.avg_gmacs:.1f} | {acc.vid_avg_gmacs:.1f} |"
            )
        else:
            kept = "/".join(str(acc.kept[k]) for k in ("rollout", "grid") if k in acc.kept) or str(acc.num_tokens)
            vivit_lines.append(
                f"| {name} | {kept} | {paper.clip_tmacs:.4f} | {acc.clip_tmacs:.4f} | "
                f"{_pct(acc.clip_tmacs, paper.clip_tmacs)} |"
            )
    print(
        "| preset | kept (pruned frame) | reference GMACs FULL / PRUNED | ours FULL / PRUNED | diff | "
        "reference VID avg | ours VID avg |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(vitdet_lines))
    print()
    print("| preset | kept (rollout / grid step) | reference TMACs per clip | ours | diff |")
    print("|---|---|---|---|---|")
    print("\n".join(vivit_lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "unit": "MAC", "counted_on": "meta"}
    Path(args.out).write_text(json.dumps({"environment": meta, "presets": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
