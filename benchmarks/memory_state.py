"""Per-stream RGTP state memory of ViTDet-B, compared with the dense backbone's activation memory.

1. State: one FULL and one PRUNED ``RGTPGrid.step`` on meta tensors (shapes only, no compute), then
   ``StreamState.tensors()`` summed by component and compared with the table of method §8.
2. Dense activations: a fresh subprocess builds the model with random fp32 weights, then runs one ``model.net``
   forward under ``no_grad``; the growth of ``ru_maxrss`` over the forward is the measured peak activation memory.
   An analytic lower bound (the largest tensors that must be live at once) is printed next to it.

Usage: ``PYTHONPATH=src python benchmarks/memory_state.py [--threads N] [--out FILE]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from _timing import environment
from rgtp.adapters.native import ViTDetAdapter
from rgtp.models.vitdet import ViTDet
from rgtp.presets import get_preset
from rgtp.runtime.grid_loop import RGTPGrid

MB = 1e6  # decimal megabytes, as in method §8
VARIANTS = {672: "vitdet_vid_672_keep512", 1024: "vitdet_vid_1024_keep750"}
COMPONENTS = ("qkv", "outputs", "attn_rows", "importance", "features")
LABELS = {
    "qkv": "qkv buffers (blocks 1..11, N x 2304)",
    "outputs": "block-11 output buffer (N x 768)",
    "attn_rows": "attention-row buffers (4 global blocks)",
    "importance": "previous heatmap (N)",
    "features": "previous patch embeddings (N x 768)",
}
# Spec §8 table, MB; the spec gives heatmap + patch embeddings as one line.
SPEC_MB = {
    672: {"qkv": 178.8, "outputs": 5.4, "attn_rows": 3.1, "importance+features": 5.4, "total": 190.0},
    1024: {"qkv": 415.2, "outputs": 12.6, "attn_rows": 268.0, "importance+features": 12.6, "total": 710.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads in the dense-forward subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "memory_state.json")
    p.add_argument("--child-dense", type=int, default=None, help=argparse.SUPPRESS)  # internal: run in a subprocess
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# RGTP state, on meta tensors


def _component(name: str) -> str:
    return name.split(".", 1)[0]


def state_breakdown(size: int) -> dict[str, Any]:
    """Bytes of the stream state after a FULL and after a following PRUNED step, by component."""
    preset = get_preset(VARIANTS[size])
    with torch.device("meta"):
        model = ViTDet(preset.model).eval()
    rgtp = RGTPGrid(ViTDetAdapter(model), preset.rgtp)
    state = rgtp.new_state()
    x = torch.empty(1, 3, size, size, device="meta")
    out: dict[str, Any] = {"preset": preset.name, "num_tokens": model.cfg.num_tokens}
    for kind in ("FULL", "PRUNED"):
        res = rgtp.step(x, state)
        parts = dict.fromkeys(COMPONENTS, 0)
        shapes: dict[str, list[int]] = {}
        for name, t in state.tensors().items():
            parts[_component(name)] += t.numel() * t.element_size()
            shapes[name] = list(t.shape)
        total = state.nbytes()
        if total != sum(parts.values()):
            raise RuntimeError(f"nbytes() {total} != sum of components {sum(parts.values())}")
        out[kind] = {"kept": res.num_kept, "bytes": parts, "total_bytes": total, "shapes": shapes}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Dense activation memory, in a fresh process


def _rss_kb() -> int:
    """Current resident set size (kB) from /proc/self/status."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def child_dense(size: int, seed: int) -> dict[str, Any]:
    """One dense backbone forward at ``size`` under no_grad; peak RSS before and after (run in a fresh process)."""
    torch.manual_seed(seed)
    model = ViTDet(get_preset(f"vitdet_vid_{size}_base").model).eval()
    x = torch.randn(1, 3, size, size)
    gc.collect()
    before_max, before_cur = _maxrss_kb(), _rss_kb()
    with torch.no_grad():
        y = model.net(x)
    after_max = _maxrss_kb()
    params = sum(p.numel() * p.element_size() for p in model.net.parameters())
    return {
        "size": size,
        "threads": torch.get_num_threads(),
        "maxrss_before_kb": before_max,
        "rss_before_kb": before_cur,
        "maxrss_after_kb": after_max,
        "backbone_param_bytes": params,
        "output_bytes": y.numel() * y.element_size(),
    }


def run_child(size: int, threads: int | None, seed: int) -> dict[str, Any]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-dense", str(size), "--seed", str(seed)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def analytic_dense(size: int) -> dict[str, Any]:
    """Largest tensors live at once in a global block of the dense forward (fp32, batch 1)."""
    cfg = get_preset(f"vitdet_vid_{size}_base").model
    n, c, h = cfg.num_tokens, cfg.embed_dim, cfg.num_heads
    attn = h * n * n * 4  # one (heads, N, N) fp32 logits / probabilities tensor
    small = n * 3 * c * 4 + n * c * 4  # the qkv projection and the residual stream
    return {
        "attn_matrix_bytes": attn,
        "lower_bound_bytes": attn + small,
        # This implementation (rgtp.models.layers.Attention._add_rel_pos) keeps the raw logits alive in the caller while
        # it builds logits + rel_h and then + rel_w, so three (heads, N, N) tensors coexist at the peak.
        "implementation_estimate_bytes": 3 * attn + small,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Report


def print_state_table(states: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(states)
    head = " | ".join(f"{s} FULL | {s} PRUNED | method §8 ({s})" for s in sizes)
    print(f"\nRGTP per-stream state (MB, fp32, batch 1):\n\n| component | {head} |")
    print("|---" + "|---:" * (3 * len(sizes)) + "|")
    for comp in COMPONENTS:
        cells = []
        for s in sizes:
            spec = SPEC_MB[s].get(comp)
            spec_cell = f"{spec:.1f}" if spec is not None else ""
            if comp == "features":
                spec_cell = f"{SPEC_MB[s]['importance+features']:.1f} (with heatmap)"
            cells += [f"{states[s][k]['bytes'][comp] / MB:.2f}" for k in ("FULL", "PRUNED")] + [spec_cell]
        print(f"| {LABELS[comp]} | " + " | ".join(cells) + " |")
    cells = []
    for s in sizes:
        cells += [f"**{states[s][k]['total_bytes'] / MB:.1f}**" for k in ("FULL", "PRUNED")]
        cells.append(f"≈{SPEC_MB[s]['total']:.0f}")
    print("| **total** | " + " | ".join(cells) + " |")
    print(
        "\nPresets: "
        + ", ".join(
            f"{s}: {states[s]['preset']} (N={states[s]['num_tokens']}, PRUNED keeps {states[s]['PRUNED']['kept']})"
            for s in sizes
        )
    )


def print_dense_table(dense: dict[int, dict[str, Any]], states: dict[int, dict[str, Any]]) -> None:
    print("\nDense backbone forward (fp32, batch 1, no_grad), MB:\n")
    print(
        "| size | N | maxrss growth over forward | peak - RSS before forward | lower bound (12xNxN attn + qkv + x) "
        "| implementation estimate (3 x 12xNxN + qkv + x) | weights | RGTP state / maxrss growth |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in sorted(dense):
        d = dense[s]
        state = states[s]["PRUNED"]["total_bytes"] if s in states else float("nan")
        print(
            f"| {s} | {d['num_tokens']} | {d['maxrss_growth_bytes'] / MB:.0f} | "
            f"{d['peak_over_rss_bytes'] / MB:.0f} | "
            f"{d['lower_bound_bytes'] / MB:.0f} | {d['implementation_estimate_bytes'] / MB:.0f} | "
            f"{d['backbone_param_bytes'] / MB:.0f} | {state / d['maxrss_growth_bytes']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child_dense is not None:
        print(json.dumps(child_dense(args.child_dense, args.seed)))
        return
    states = {s: state_breakdown(s) for s in args.sizes}
    dense: dict[int, dict[str, Any]] = {}
    for s in args.sizes:
        print(f"dense forward at {s} in a subprocess ...", file=sys.stderr)
        m = run_child(s, args.threads, args.seed)
        m.update(analytic_dense(s))
        m["num_tokens"] = (s // 16) ** 2
        m["maxrss_growth_bytes"] = (m["maxrss_after_kb"] - m["maxrss_before_kb"]) * 1024
        m["peak_over_rss_bytes"] = (m["maxrss_after_kb"] - m["rss_before_kb"]) * 1024
        dense[s] = m
    print_state_table(states)
    print_dense_table(dense, states)
    result = {
        "benchmark": "memory_state",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "sizes": args.sizes,
            "threads": args.threads or torch.get_num_threads(),
            "seed": args.seed,
            "dtype": "fp32",
            "batch": 1,
            "state_method": "meta tensors, one FULL then one PRUNED step",
            "dense_method": "fresh subprocess; ru_maxrss growth over one model.net forward (no_grad)",
        },
        "environment": environment("cpu"),
        "units": "bytes (tables print decimal MB)",
        "state": {str(s): v for s, v in states.items()},
        "spec_mb": {str(s): v for s, v in SPEC_MB.items()},
        "dense": {str(s): v for s, v in dense.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
