"""Per-frame latency of RGTP ViTDet-B against the dense backbone, FULL and PRUNED frames side by side.

Times, in one run and round-robin (every round times every case once):

* the dense backbone ``model.net(images)``;
* ``RGTPGrid.step`` on a FULL frame (t=0, fresh state) and on a PRUNED frame (t=1: a deep copy of the state saved
  after frame 0, made outside the timed interval), for each preset;
* the simple feature pyramid ``model.features(tokens)`` alone, subtracted from each ``step`` sample of the same round
  to give backbone + RGTP time;
* the RGTP overhead pieces of a PRUNED frame on real tensors: the warp, the top-k selection, the fused/pooled
  attention rows of the global blocks and the rollout product that makes the next frame's heatmap.

GMACs per frame type are counted with :class:`rgtp.flops.MacCounter` on meta tensors (paper scopes: backbone + rgtp).

Usage: ``PYTHONPATH=src python benchmarks/latency_vitdet.py [--iters 5] [--warmup 1] [--threads N]
[--device cpu|cuda] [--dtype fp32|bf16] [--size 672|1024] [--out FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from _timing import Case, environment, measure_interleaved, summarize
from rgtp.adapters.native import ViTDetAdapter
from rgtp.flops import PAPER_SCOPES, MacCounter
from rgtp.models.vitdet import ViTDet
from rgtp.presets import PAPER, get_preset
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.selection import gilbert_rank, keep_count, select_fg_bg, stride_of
from rgtp.pruning.tracking import warp_importance
from rgtp.runtime.common import kept_count
from rgtp.runtime.grid_loop import RGTPGrid

BASE = {672: "vitdet_vid_672_base", 1024: "vitdet_vid_1024_base"}
VARIANTS = {
    672: ("vitdet_vid_672_keep512", "vitdet_vid_672_keep196"),
    1024: ("vitdet_vid_1024_keep750", "vitdet_vid_1024_keep400"),
}
FULL_FRACTION = 0.1266  # FULL frames among all ImageNet VID val frames (method §10.2)
SPEEDUP_TARGET = 0.85  # PRUNED-frame speedup >= 85% of the GMAC ratio (first variant)
OVERHEAD_TARGET_PCT = 5.0  # warp + selection + rollout < 5% of a PRUNED frame
OVERHEAD_PIECES = ("warp", "select", "rows", "rollout")
METHOD = (
    "backbone+rgtp = RGTPGrid.step(images, state) - model.features(tokens), per round (both timed in the same "
    "round; the pyramid on a dense (1, N, 768) output), then summarised. step includes the patch embedding and "
    "position encoding (as does the dense model.net), all blocks, warp + selection, buffer updates and the rollout "
    "for the next frame; no detection head is attached, so all tokens are rollout anchors. FULL samples step a "
    "fresh state (t=0). PRUNED samples step a deep copy (made before the clock starts) of the state saved after "
    "frame 0 (t=1), so every sample is exactly one PRUNED frame."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 runs under torch.autocast")
    p.add_argument("--size", type=int, choices=sorted(BASE), default=672)
    p.add_argument("--presets", nargs="+", default=None, help="RGTP presets (default: per size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    if args.presets is None:
        args.presets = list(VARIANTS[args.size])
    if args.out is None:
        suffix = "" if (args.size, args.dtype) == (672, "fp32") else f"_{args.size}_{args.dtype}"
        args.out = Path(__file__).resolve().parent / "results" / f"latency_vitdet_{args.device}{suffix}.json"
    return args


def amp(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------------------
# Compute accounting


def count_gmacs(size: int, presets: list[str]) -> dict[str, Any]:
    """GMACs (paper scopes) of a dense frame and of each preset's FULL and PRUNED frames, on meta tensors."""
    cfg = get_preset(BASE[size]).model
    with torch.device("meta"):
        model = ViTDet(cfg).eval()
    x = torch.empty(1, 3, size, size, device="meta")
    out: dict[str, Any] = {}
    with torch.no_grad(), MacCounter() as c:
        model.net(x)
    out["dense"] = {"FULL": c.gmacs(), "scopes": c.by_scope()}
    for name in presets:
        rgtp = RGTPGrid(ViTDetAdapter(model), get_preset(name).rgtp)
        state = rgtp.new_state()
        entry: dict[str, Any] = {"scopes": {}}
        for kind in ("FULL", "PRUNED"):
            with MacCounter() as c:
                rgtp.step(x, state)
            entry[kind] = c.gmacs()
            entry["rgtp_" + kind] = c.gmacs(("rgtp",))
            entry["scopes"][kind] = c.by_scope()
        out[name] = entry
    out["paper_scopes"] = list(PAPER_SCOPES)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Timing cases


def frames(size: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """Two consecutive synthetic frames: noise, then the same noise shifted by 8 px with a little new noise."""
    g = torch.Generator().manual_seed(seed + 1)
    f0 = torch.randn(1, 3, size, size, generator=g)
    f1 = torch.roll(f0, shifts=(8, 8), dims=(2, 3)) + 0.1 * torch.randn(1, 3, size, size, generator=g)
    return f0.to(device), f1.to(device)


def overhead_cases(rgtp: RGTPGrid, tag: str, s0: Any, f1: Tensor, pruned_state: Any, keep: Tensor) -> list[Case]:
    """Cases for the RGTP work of one PRUNED frame, on the tensors of a real frame-0 -> frame-1 step."""
    net, cfg = rgtp.model.model.net, rgtp.cfg
    grid = net.grid
    embeds = net.embed(f1)  # (1, N, C) features of this frame
    sel = cfg.selection
    num_fg = keep_count(embeds.shape[1], sel.keep_ratio)
    bg_stride = stride_of(sel.bg_ratio) if sel.bg_ratio > 0 else None
    curve = gilbert_rank(grid[0], grid[1], embeds.device) if sel.curve_order else None
    radius, rel = cfg.tracking.radius, cfg.tracking.rel_threshold_pct

    def warp(_: Any) -> Tensor:
        return warp_importance(s0.importance, embeds, s0.features, grid, radius, rel)

    scores = warp(None)
    globals_ = [i for i, blk in enumerate(net.blocks) if blk.is_global and i > 0]
    # Real attention probabilities of this PRUNED frame: kept queries against the refreshed qkv buffers.
    probs = {
        i: net.blocks[i].attn.attend(pruned_state.qkv[i], grid, query_idx=keep, need_probs=True).probs for i in globals_
    }
    rows_state = copy.deepcopy(s0)  # attention rows of frame 0, updated with this frame's rows below

    def rows(_: Any) -> None:
        for i in globals_:
            rgtp._record_rows(rows_state, i, rgtp._fuse(probs[i]), keep, grid)

    def rollout(_: Any) -> Tensor:
        return rgtp._importance(rows_state, None, keep, None, grid)

    return [
        Case(f"{tag}/warp", warp, repeat=5),
        Case(
            f"{tag}/select", lambda _: select_fg_bg(scores, num_fg, stride_of(sel.fg_ratio), bg_stride, curve), repeat=5
        ),
        Case(f"{tag}/rows", rows, repeat=5),
        Case(f"{tag}/rollout", rollout, repeat=5),
    ]


def variant_cases(model: ViTDet, name: str, f0: Tensor, f1: Tensor) -> tuple[list[Case], list[Case], dict[str, Any]]:
    """FULL and PRUNED ``step`` cases of one preset, its overhead cases, and what its PRUNED step keeps."""
    cfg = get_preset(name).rgtp
    rgtp = RGTPGrid(ViTDetAdapter(model), cfg)
    s0 = rgtp.new_state()
    first = rgtp.step(f0, s0)  # t=0: FULL; s0.t is now 1
    check = copy.deepcopy(s0)
    res = rgtp.step(f1, check)
    n, grid = model.cfg.num_tokens, model.cfg.grid
    expected = kept_count(FrameKind.ROLLOUT, n, grid, cfg)
    if first.kind is not FrameKind.FULL or res.kind is not FrameKind.ROLLOUT or res.num_kept != expected:
        raise RuntimeError(f"{name}: unexpected steps {first.kind}/{res.kind}, kept {res.num_kept} != {expected}")
    assert res.keep_idx is not None
    steps = [
        Case(f"{name}/FULL", lambda st: rgtp.step(f0, st), setup=rgtp.new_state),
        Case(f"{name}/PRUNED", lambda st: rgtp.step(f1, st), setup=lambda: copy.deepcopy(s0)),
    ]
    info = {"kept_full": first.num_kept, "kept_pruned": res.num_kept}
    return steps, overhead_cases(rgtp, name, s0, f1, check, res.keep_idx), info


# ---------------------------------------------------------------------------------------------------------------------
# Results


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def derive(
    samples: dict[str, list[float]], gmacs: dict[str, Any], kept: dict[str, Any], presets: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (backbone + RGTP per frame type) and the overhead breakdown of PRUNED frames."""
    dense = summarize(samples["dense"])
    dense_g = gmacs["dense"]["FULL"]
    n = kept[presets[0]]["kept_full"]
    rows = [_row("dense", "FULL", n, dense_g, dense.median_ms, dense, dense_g, samples["dense"])]
    overhead: dict[str, Any] = {}
    for name in presets:
        meds = {}
        for kind in ("FULL", "PRUNED"):
            diff = _diff(samples[f"{name}/{kind}"], samples["pyramid"])
            stats = summarize(diff)
            meds[kind] = stats.median_ms
            k = kept[name]["kept_full" if kind == "FULL" else "kept_pruned"]
            rows.append(_row(name, kind, k, gmacs[name][kind], stats.median_ms, dense, dense_g, diff))
        mix_ms = FULL_FRACTION * meds["FULL"] + (1 - FULL_FRACTION) * meds["PRUNED"]
        mix_g = FULL_FRACTION * gmacs[name]["FULL"] + (1 - FULL_FRACTION) * gmacs[name]["PRUNED"]
        rows.append(_row(name, "VID avg", None, mix_g, mix_ms, dense, dense_g, None))
        pieces = {p: summarize(samples[f"{name}/{p}"]).median_ms for p in OVERHEAD_PIECES}
        total = sum(pieces.values())
        overhead[name] = {
            **{f"{p}_ms": v for p, v in pieces.items()},
            "total_ms": total,
            "pruned_frame_ms": meds["PRUNED"],
            "pct_of_pruned_frame": 100 * total / meds["PRUNED"],
        }
    return rows, overhead


def _row(
    variant: str,
    kind: str,
    kept: int | None,
    g: float,
    ms: float,
    dense: Any,
    dense_g: float,
    samples: list[float] | None,
) -> dict[str, Any]:
    speedup = dense.median_ms / ms
    ratio = dense_g / g
    row = {
        "variant": variant,
        "frame": kind,
        "kept": kept,
        "gmacs": g,
        "median_ms": ms,
        "speedup": speedup,
        "gmac_ratio": ratio,
        "speedup_over_ratio_pct": 100 * speedup / ratio,
    }
    if samples is not None:
        row["stats"] = summarize(samples).as_dict()
    return row


def targets(rows: list[dict[str, Any]], overhead: dict[str, Any], presets: list[str]) -> list[dict[str, Any]]:
    first = presets[0]
    paper = PAPER[first]
    assert paper.full_gmacs is not None and paper.pruned_gmacs is not None
    ratio = paper.full_gmacs / paper.pruned_gmacs
    speedup = next(r["speedup"] for r in rows if r["variant"] == first and r["frame"] == "PRUNED")
    out = [
        {
            "target": f"{first} PRUNED speedup >= {SPEEDUP_TARGET:.0%} of GMAC ratio "
            f"{paper.full_gmacs}/{paper.pruned_gmacs} = {ratio:.3f}",
            "value": f"{speedup:.3f}x = {100 * speedup / ratio:.1f}% of {ratio:.3f}",
            "met": speedup >= SPEEDUP_TARGET * ratio,
        }
    ]
    for name in presets:
        pct = overhead[name]["pct_of_pruned_frame"]
        out.append(
            {
                "target": f"{name} RGTP overhead < {OVERHEAD_TARGET_PCT:g}% of a PRUNED frame",
                "value": f"{pct:.2f}%",
                "met": pct < OVERHEAD_TARGET_PCT,
            }
        )
    return out


def print_report(
    rows: list[dict[str, Any]],
    overhead: dict[str, Any],
    pyramid_ms: float,
    tgts: list[dict[str, Any]],
    gmacs: dict[str, Any],
    presets: list[str],
) -> None:
    print("\n| variant | frame | kept | GMACs | median ms | speedup vs dense | GMAC ratio | speedup / GMAC ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kept = "" if r["kept"] is None else str(r["kept"])
        print(
            f"| {r['variant']} | {r['frame']} | {kept} | {r['gmacs']:.2f} | {r['median_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['gmac_ratio']:.2f} | {r['speedup_over_ratio_pct']:.0f}% |"
        )
    print(
        f"\nPyramid (subtracted from every step sample): median {pyramid_ms:.1f} ms. "
        f"'VID avg' mixes FULL/PRUNED medians with a FULL fraction of {FULL_FRACTION}."
    )
    print(
        "Paper GMACs (full / pruned): "
        + ", ".join(
            f"{p}: {PAPER[p].full_gmacs} / {PAPER[p].pruned_gmacs} (counted {gmacs[p]['FULL']:.2f} / "
            f"{gmacs[p]['PRUNED']:.2f})"
            for p in presets
        )
    )
    print("\nRGTP overhead on a PRUNED frame (medians, ms):\n")
    print(
        "| variant | warp | select | attn rows (fuse+pool, global blocks) | rollout + upsample | total | % of PRUNED |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, o in overhead.items():
        print(
            f"| {name} | {o['warp_ms']:.2f} | {o['select_ms']:.2f} | {o['rows_ms']:.2f} | {o['rollout_ms']:.2f} | "
            f"{o['total_ms']:.2f} | {o['pct_of_pruned_frame']:.2f}% |"
        )
    print("\nTargets:")
    for t in tgts:
        print(f"- [{'MET' if t['met'] else 'NOT MET'}] {t['target']}: {t['value']}")


@contextlib.contextmanager
def _mode(device: torch.device, dtype: str) -> Iterator[None]:
    with torch.inference_mode(), amp(device, dtype):
        yield


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and args.dtype == "bf16":
        print("note: bf16 on CPU runs under autocast; its speed depends on the CPU's bf16 support", file=sys.stderr)
    sync: Callable[[], None] | None = torch.cuda.synchronize if device.type == "cuda" else None
    print(f"counting GMACs on meta tensors for {args.presets} ...", file=sys.stderr)
    gmacs = count_gmacs(args.size, args.presets)
    torch.manual_seed(args.seed)
    cfg = get_preset(BASE[args.size]).model
    for name in args.presets:
        if get_preset(name).model != cfg or get_preset(name).rgtp is None:
            raise SystemExit(f"{name} is not an RGTP preset of the {BASE[args.size]} model")
    model = ViTDet(cfg).eval().to(device)
    f0, f1 = frames(args.size, device, args.seed)
    with _mode(device, args.dtype):
        tokens = model.net(f0)
        cases = [Case("dense", lambda _: model.net(f0))]
        ov_cases, kept = [], {}
        for name in args.presets:
            steps, ov, kept[name] = variant_cases(model, name, f0, f1)
            cases += steps
            ov_cases += ov
        cases.append(Case("pyramid", lambda _: model.features(tokens)))
        cases += ov_cases
        print(f"timing {len(cases)} cases x ({args.warmup} warm-up + {args.iters}) rounds ...", file=sys.stderr)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        samples = measure_interleaved(cases, args.warmup, args.iters, sync)
        busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)  # cores this process kept busy
    rows, overhead = derive(samples, gmacs, kept, args.presets)
    tgts = targets(rows, overhead, args.presets)
    pyramid_ms = summarize(samples["pyramid"]).median_ms
    print_report(rows, overhead, pyramid_ms, tgts, gmacs, args.presets)
    print(
        f"\nProcess CPU time / wall time while timing: {busy:.2f} (threads: {torch.get_num_threads()}); "
        "well below the thread count on CPU means other load competed for the cores."
    )
    return {
        "benchmark": "latency_vitdet",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "size": args.size,
            "batch": 1,
            "presets": args.presets,
            "device": args.device,
            "dtype": args.dtype,
            "warmup": args.warmup,
            "iters": args.iters,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
            "interleaved": True,
            "cpu_time_over_wall": busy,
        },
        "environment": environment(device),
        "method": METHOD,
        "gmacs": gmacs,
        "paper": {
            p: {
                "full_gmacs": PAPER[p].full_gmacs,
                "pruned_gmacs": PAPER[p].pruned_gmacs,
                "avg_gmacs": PAPER[p].avg_gmacs,
            }
            for p in [BASE[args.size], *args.presets]
        },
        "kept": kept,
        "timings_ms": {k: {**summarize(v).as_dict(), "samples": v} for k, v in samples.items()},
        "table": rows,
        "pyramid_median_ms": pyramid_ms,
        "overhead": overhead,
        "targets": tgts,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
