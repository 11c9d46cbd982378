"""Benchmark outputs: the Markdown table, the accuracy-vs-compute plot and the targets of the comparison.

Targets (issue 5): (1) RGTP at 60% fewer GMACs than dense loses at most 0.5 points of accuracy; (2) at every budget
RGTP is at least as accurate as each baseline. RGTP's accuracy at a given compute is read off its own curve by
linear interpolation between its measured points (budgets outside the measured range are not judged).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rgtp.bench.methods import BASELINES

__all__ = ["check_targets", "interpolate", "markdown_table", "plot"]

SAVING = 0.6  # target 1: "60% fewer GMACs than dense"
TOLERANCE = 0.5  # points of accuracy


def _curve(records: Sequence[dict[str, Any]], method: str) -> list[tuple[float, float]]:
    return sorted((r["gmacs"], r["accuracy"]) for r in records if r["method"] == method)


def interpolate(curve: Sequence[tuple[float, float]], gmacs: float) -> float | None:
    """Accuracy at ``gmacs`` on a (gmacs, accuracy) curve sorted by gmacs, linear between points; None outside.

    Where several points share a compute value, the best accuracy is used.
    """
    if not curve or not curve[0][0] <= gmacs <= curve[-1][0]:
        return None
    for (g0, a0), (g1, a1) in itertools.pairwise(curve):
        if g0 <= gmacs <= g1:
            if g1 == g0:
                return max(a0, a1)
            return a0 + (a1 - a0) * (gmacs - g0) / (g1 - g0)
    return max(a for g, a in curve if g == gmacs)


def check_targets(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate both targets; returns what was met, with the numbers behind it."""
    dense = next(r for r in records if r["method"] == "dense")
    rgtp = _curve(records, "RGTP")
    budget = (1.0 - SAVING) * dense["gmacs"]
    at_budget = interpolate(rgtp, budget)
    loss = None if at_budget is None else dense["accuracy"] - at_budget
    comparisons = []
    for r in records:
        if r["method"] not in BASELINES:
            continue
        ours = interpolate(rgtp, r["gmacs"])
        comparisons.append(
            {
                "variant": f"{r['method']} {r['setting']}".strip(),
                "gmacs": r["gmacs"],
                "baseline_accuracy": r["accuracy"],
                "rgtp_accuracy": None if ours is None else round(ours, 3),
                "rgtp_wins": None if ours is None else ours >= r["accuracy"],
            }
        )
    judged = [c for c in comparisons if c["rgtp_wins"] is not None]
    return {
        "dense_accuracy": dense["accuracy"],
        "dense_gmacs": dense["gmacs"],
        "budget_gmacs": budget,
        "rgtp_accuracy_at_budget": None if at_budget is None else round(at_budget, 3),
        "loss_at_budget": None if loss is None else round(loss, 3),
        "target_loss_met": None if loss is None else loss <= TOLERANCE,
        "comparisons": comparisons,
        "baseline_points_judged": len(judged),
        "baseline_points_beaten": sum(c["rgtp_wins"] for c in judged),
        "target_baselines_met": all(c["rgtp_wins"] for c in judged) if judged else None,
        "baselines_lost_to": [c["variant"] for c in judged if not c["rgtp_wins"]],
    }


def markdown_table(records: Sequence[dict[str, Any]], metric: str, unit: str, time_unit: str) -> str:
    """One row per variant: accuracy, compute, share of dense, time, state memory."""
    dense = next(r for r in records if r["method"] == "dense")
    ms_key = f"ms_per_{time_unit}"
    head = (
        f"| method | setting | {metric} | {unit} | % of dense | ms/{time_unit} | speed-up | state MB |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in records:
        ms = r.get(ms_key)
        speed = "" if ms is None or dense.get(ms_key) is None else f"{dense[ms_key] / ms:.2f}×"
        rows.append(
            f"| {r['method']} | {r['setting']} | {r['accuracy']:.2f} | {r['gmacs']:.4f} | "
            f"{100 * r['gmacs'] / dense['gmacs']:.0f}% | {'' if ms is None else f'{ms:.1f}'} | {speed} | "
            f"{r['state_mb']:.2f} |"
        )
    return "\n".join(rows)


_STYLE = {
    "RGTP": ("tab:red", "o", 2.5),
    "Eventful": ("tab:blue", "s", 1.5),
    "ToMe": ("tab:green", "^", 1.5),
    "random": ("tab:gray", "x", 1.2),
    "uniform": ("tab:olive", "+", 1.2),
    "MaskVD boxes": ("tab:purple", "D", 1.5),
    "RGTP no tracking": ("salmon", "v", 1.0),
    "RGTP mean fusion": ("orange", "<", 1.0),
    "RGTP no reset": ("brown", ">", 1.0),
    "RGTP 2x resets": ("darkred", "P", 1.0),
}


def plot(records: Sequence[dict[str, Any]], path: str | Path, title: str, metric: str, unit: str) -> Path:
    """Accuracy vs compute, one line per method, dense as a star; the 60%-saving budget as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in records if r["method"] == "dense")
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "dense"))
    for method in methods:
        pts = _curve(records, method)
        color, marker, width = _STYLE.get(method, ("black", ".", 1.0))
        dashed = method.startswith("RGTP ")
        ax.plot(
            [g for g, _ in pts],
            [a for _, a in pts],
            color=color,
            marker=marker,
            linewidth=width,
            linestyle="--" if dashed else "-",
            label=method,
            zorder=3 if method == "RGTP" else 2,
        )
    ax.plot([dense["gmacs"]], [dense["accuracy"]], "k*", markersize=14, label="dense")
    ax.axvline((1.0 - SAVING) * dense["gmacs"], color="black", linestyle=":", linewidth=1, label="60% fewer than dense")
    lows = [r["accuracy"] for r in records if math.isfinite(r["accuracy"])]
    ax.set_ylim(max(0.0, min(lows) - 2.0), max(lows) + 1.5)
    ax.set_xlabel(unit)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
