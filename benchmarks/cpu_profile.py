"""Where the time of each CPU path goes that the MAC count does not explain: a ``torch.profiler`` table per path.

Paths (random weights, seeded), each run ``--warmup`` times untimed and then once under the profiler:

* ``vitdet672/dense``: a dense ViTDet-B 672 step (backbone and feature pyramid, as the RGTP steps);
* ``vitdet672/FULL`` and ``vitdet672/PRUNED``: an RGTP ``vitdet_vid_672_keep512`` step on a fresh state and on a copy of
  the state after frame 0 (no detection head: every token anchors the rollout);
* ``vivit/dense`` and ``vivit/keep049`` (with ``--vivit``): a ViViT-B K400 clip of ``--views`` views through
  ``run_clip``.

For each path: the wall time, its GMACs (``MacCounter``, every scope), GMACs/s, the same-run throughput of a plain
``torch.mm`` of the model's (N x 768) @ (768 x 3072) shape, and the self-CPU time per operator class: ``matmul``
(mm, addmm, bmm, baddbmm, linear, matmul), ``conv``, ``softmax``, ``layout`` (copies, gathers, scatters, cat,
index, clone, contiguous), ``norm/act`` (layer norm, GELU) and ``other``. What is not ``matmul`` or ``conv`` is the time
the MAC count does not see.

Usage: ``PYTHONPATH=src python benchmarks/cpu_profile.py [--threads 2] [--vivit --views 1] [--out FILE]``
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from _timing import environment
from rgtp.build import build_model
from rgtp.flops import MacCounter
from rgtp.presets import get_preset
from rgtp.runtime.driver import run_clip
from rgtp.runtime.methods import make_runner

CLASSES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"),
    "conv": ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::conv2d", "aten::conv3d"),
    "softmax": ("aten::_softmax", "aten::softmax", "aten::_safe_softmax"),
    "layout": (
        "aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::gather", "aten::scatter",
        "aten::scatter_", "aten::index", "aten::index_select", "aten::constant_pad_nd", "aten::_to_copy", "aten::pad",
    ),
    "norm/act": ("aten::native_layer_norm", "aten::layer_norm", "aten::gelu"),
}  # fmt: skip


def classify(name: str) -> str:
    return next((c for c, names in CLASSES.items() if name in names), "other")


def matmul_gmacs_per_s(n: int, reps: int = 5) -> float:
    """Throughput of a plain (n x 768) @ (768 x 3072) matmul, the model's MLP shape, measured now."""
    a, b = torch.randn(n, 768), torch.randn(768, 3072)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return reps * n * 768 * 3072 / 1e9 / (time.perf_counter() - t)


def paths(vivit: bool, views: int) -> dict[str, tuple[Callable[[], Any], Callable[[], None] | None]]:
    """name -> (the work, a setup run before it, untimed)."""
    torch.manual_seed(0)
    base = get_preset("vitdet_vid_672_base")
    model = build_model(base)
    model.head = None
    images = torch.randn(1, 3, 672, 672)
    rgtp = make_runner(model, get_preset("vitdet_vid_672_keep512").rgtp)
    after0 = rgtp.new_state()
    rgtp.step(images, after0)
    moved = torch.roll(images, (8, 8), (2, 3))
    holder: dict[str, Any] = {}

    def fresh_copy() -> None:
        holder["state"] = copy.deepcopy(after0)

    dense = make_runner(model, None)
    out: dict[str, tuple[Callable[[], Any], Callable[[], None] | None]] = {
        "vitdet672/dense": (lambda: dense.step(images, dense.new_state()), None),
        "vitdet672/FULL": (lambda: rgtp.step(images, rgtp.new_state()), None),
        "vitdet672/PRUNED": (lambda: rgtp.step(moved, holder["state"]), fresh_copy),
    }
    if vivit:
        vivit_model = build_model(get_preset("vivit_k400_base"))
        clip = torch.randn(views, 3, 32, 224, 224)
        for name, preset in (("vivit/dense", "vivit_k400_base"), ("vivit/keep049", "vivit_k400_keep049")):
            runner = make_runner(vivit_model, get_preset(preset).method_config)
            out[name] = (lambda r=runner: run_clip(r, clip), None)
    return out


def measure(work: Callable[[], Any], setup: Callable[[], None] | None, warmup: int) -> dict[str, Any]:
    with torch.no_grad():
        for _ in range(warmup):
            if setup:
                setup()
            work()
        if setup:
            setup()
        with MacCounter() as counter:
            work()
        gmacs = counter.macs(None) / 1e9
        if setup:
            setup()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            work()
            seconds = time.perf_counter() - t
    shares: dict[str, float] = {}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3
        shares[classify(event.key)] = shares.get(classify(event.key), 0.0) + ms
        ops[event.key] = ms
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
    return {"seconds": seconds, "gmacs": gmacs, "classes_ms": shares, "top_ops_ms": dict(top)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vivit", action="store_true", help="also the ViViT-B K400 clip paths")
    p.add_argument("--views", type=int, default=12, help="ViViT views per clip (12: the paper's protocol)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cpu_profile.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name, (work, setup) in paths(args.vivit, args.views).items():
        print(f"{name} ...", file=sys.stderr, flush=True)
        r = measure(work, setup, args.warmup)
        r["matmul_gmacs_per_s"] = matmul_gmacs_per_s(1764 if name.startswith("vitdet") else 197 * 16)
        r["gmacs_per_s"] = r["gmacs"] / r["seconds"]
        results[name] = r
    print("| path | s | GMACs | GMACs/s (% of matmul) | " + " | ".join(f"{c} %" for c in [*CLASSES, "other"]) + " |")
    print("|---|---:|---:|---:|" + "---:|" * (len(CLASSES) + 1))
    for name, r in results.items():
        total = sum(r["classes_ms"].values())
        pct = " | ".join(f"{100 * r['classes_ms'].get(c, 0.0) / total:.0f}" for c in [*CLASSES, "other"])
        share = 100 * r["gmacs_per_s"] / r["matmul_gmacs_per_s"]
        print(f"| {name} | {r['seconds']:.2f} | {r['gmacs']:.1f} | {r['gmacs_per_s']:.0f} ({share:.0f}%) | {pct} |")
    record = {
        "benchmark": "cpu_profile",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment("cpu"),
        "paths": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
