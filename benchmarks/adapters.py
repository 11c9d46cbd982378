"""RGTP on Hugging Face models at their real size: dense vs RGTP at three keep ratios, GMACs and ms per frame.

For each model (random weights built from its standard config: nothing is downloaded):

* ``vitdet``: ``VitDetBackbone`` ViTDet-B at 1024 (windows of 14, global blocks 2/5/8/11, relative positions; eager
  attention, the only implementation transformers has for it);
* ``dinov2``: ``Dinov2Model`` DINOv2-B/14 at 518 (37 x 37 tokens; SDPA);
* ``clip``: ``CLIPVisionModel`` CLIP ViT-B/16 at 224 (14 x 14 tokens; SDPA);

it times, round-robin in one run (every round times every case once, device synchronised before each clock read):

* ``hf``: the unmodified model's forward pass;
* ``dense``: rgtp's dense runner on it (the same math through the block protocol);
* ``rgtp k`` FULL and PRUNED frames at three keep ratios: a FULL sample steps a fresh state, a PRUNED sample a copy
  (made before the clock starts) of the state after one frame, so it is exactly one pruned frame;
* ``forced k``: the same pruned frame with the same kept set given by a forced selector, which needs no rollout and
  no attention rows (SDPA everywhere): the difference to ``rgtp k`` PRUNED is RGTP's whole overhead (attention rows,
  rollout, tracking, selection);
* ``rows``: the attention rows alone: every block the rollout reads, attention with probabilities minus the fastest
  attention without them, at the pruned frame's shapes.

GMACs per frame (backbone + RGTP, MACs) are counted by :class:`rgtp.flops.MacCounter` on one real step of each kind.
``avg`` mixes FULL (grid models: 1 frame in 8) or GRID steps (class-token models: 1 in 8) with pruned ones as RGTP's
default schedule does.

Usage: ``PYTHONPATH=src python benchmarks/adapters.py [--models vitdet dinov2 clip] [--iters 3] [--warmup 1]
[--threads N] [--out FILE]`` (about 12 minutes on 2 CPU cores, most of it ViTDet-B at 1024).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from _timing import Case, environment, measure_interleaved, summarize
from rgtp import adapt
from rgtp.adapters import adapter_for
from rgtp.flops import PAPER_SCOPES, MacCounter
from rgtp.models.attention import attend
from rgtp.models.protocol import with_position
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime import ForcedSelector

KEEPS = {"vitdet": (0.5, 0.3, 0.18), "dinov2": (0.7, 0.5, 0.3), "clip": (0.7, 0.5, 0.3)}
SIZES = {"vitdet": 1024, "dinov2": 518, "clip": 224}


def build(name: str) -> nn.Module:
    """The model at its real size, random weights (seeded)."""
    import transformers as t

    torch.manual_seed(0)
    if name == "vitdet":
        cfg = t.VitDetConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_ratio=4,
            image_size=1024,
            pretrain_image_size=224,
            patch_size=16,
            window_size=14,
            window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
            use_relative_position_embeddings=True,
            use_absolute_position_embeddings=True,
            out_features=["stage12"],
        )
        cfg._attn_implementation = "eager"
        return t.VitDetBackbone(cfg).eval()
    if name == "dinov2":
        cfg = t.Dinov2Config(image_size=518, patch_size=14)  # DINOv2-B: 768 wide, 12 layers, 12 heads
        cfg._attn_implementation = "sdpa"
        return t.Dinov2Model(cfg).eval()
    cfg = t.CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    cfg._attn_implementation = "sdpa"
    return t.CLIPVisionModel(cfg).eval()


def frames(size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two consecutive frames: noise, then the same noise moved by one patch with a little new noise."""
    g = torch.Generator().manual_seed(seed)
    f0 = torch.randn(1, 3, size, size, generator=g)
    return f0, torch.roll(f0, shifts=(16, 16), dims=(2, 3)) + 0.1 * torch.randn(f0.shape, generator=g)


def paper_gmacs(step: Callable[[], Any]) -> float:
    with torch.no_grad(), MacCounter() as counter:
        step()
    return counter.gmacs(PAPER_SCOPES)


def rows_cases(runner: Any, state: Any, f1: Tensor, keep: Tensor, tag: str) -> tuple[Case, Case]:
    """Attention with probabilities minus without them, for every block whose rows the rollout reads, at the pruned
    frame's shapes (the qkv of the state's buffers, or of the kept tokens)."""
    view = runner.model
    embeds, grid = view.embed(f1)
    with torch.no_grad():
        if view.family == "grid":  # global blocks: kept queries against the buffered qkv
            x0 = with_position(embeds, view.position(grid))
            blocks = [(i, b) for i, b in enumerate(view.blocks) if b.spec.is_global]
            inputs = [(b.spec, state.qkv[i] if i else b.qkv(b.norm1(x0)), grid, keep if i else None) for i, b in blocks]
        else:  # every block: the prefix and kept tokens among themselves
            x = view.tokens(embeds, grid)
            p = view.num_prefix
            kept = torch.cat([x[:, :p], x[:, p:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))], dim=1)
            inputs = [(b.spec, b.qkv(b.norm1(x if i == 0 else kept)), None, None) for i, b in enumerate(view.blocks)]

    def with_rows(_: Any) -> None:
        for spec, qkv, g, q in inputs:
            attend(spec, qkv, g, q, need_probs=True)

    def without(_: Any) -> None:
        for spec, qkv, g, q in inputs:
            attend(spec, qkv, g, q, need_probs=False)

    return Case(f"{tag}/rows+", with_rows), Case(f"{tag}/rows-", without)


def model_cases(name: str) -> tuple[list[Case], dict[str, Any]]:
    model = build(name)
    f0, f1 = frames(SIZES[name])
    view = adapter_for(model)
    n = view.embed(f0)[0].shape[1]
    info: dict[str, Any] = {"tokens": n, "variants": {}}
    with torch.no_grad():
        cases = [Case(f"{name}/hf", lambda _: model(pixel_values=f0))]
        dense = adapt(model, "dense")
        cases.append(Case(f"{name}/dense", lambda _: dense.step(f0, dense.new_state())))
        info["variants"]["dense"] = {"gmacs": paper_gmacs(lambda: dense.step(f0, dense.new_state())), "kept": n}
        for keep_ratio in KEEPS[name]:
            tag = f"{name}/rgtp {keep_ratio:g}"
            runner = adapt(model, keep_ratio=keep_ratio)
            s0 = runner.new_state()
            full = runner.step(f0, s0)
            after = copy.deepcopy(s0)
            pruned = runner.step(f1, after)
            assert full.kind is FrameKind.FULL and pruned.kind is FrameKind.ROLLOUT and pruned.keep_idx is not None
            keep = pruned.keep_idx
            forced = adapt(model, keep_ratio=keep_ratio, selector=ForcedSelector(lambda t, e, g, k=keep: k))
            fs0 = forced.new_state()
            forced.step(f0, fs0)
            cases += [
                Case(f"{tag}/FULL", lambda _, r=runner: r.step(f0, r.new_state())),
                Case(f"{tag}/PRUNED", lambda st, r=runner: r.step(f1, st), setup=lambda s=s0: copy.deepcopy(s)),
                Case(f"{tag}/forced", lambda st, r=forced: r.step(f1, st), setup=lambda s=fs0: copy.deepcopy(s)),
                *rows_cases(runner, after if view.family == "grid" else s0, f1, keep, tag),
            ]
            info["variants"][f"rgtp {keep_ratio:g}"] = {
                "keep_ratio": keep_ratio,
                "kept": pruned.num_kept,
                "gmacs_full": paper_gmacs(lambda r=runner: r.step(f0, r.new_state())),
                "gmacs_pruned": paper_gmacs(lambda r=runner, s=s0: r.step(f1, copy.deepcopy(s))),
                "rgtp_gmacs_pruned": _rgtp_gmacs(runner, f1, s0),
            }
    return cases, info


def _rgtp_gmacs(runner: Any, f1: Tensor, s0: Any) -> float:
    with torch.no_grad(), MacCounter() as counter:
        runner.step(f1, copy.deepcopy(s0))
    return counter.gmacs(("rgtp",))


def table(name: str, info: dict[str, Any], samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    med = {k: summarize(v).median_ms for k, v in samples.items() if k.startswith(name + "/")}
    dense_ms, dense_g = med[f"{name}/dense"], info["variants"]["dense"]["gmacs"]
    rows = [
        {"model": name, "variant": "hf forward", "ms": med[f"{name}/hf"]},
        {"model": name, "variant": "dense", "kept": info["tokens"], "gmacs": dense_g, "ms": dense_ms},
    ]
    grid = name == "vitdet"
    for label, v in info["variants"].items():
        if label == "dense":
            continue
        tag = f"{name}/{label}"
        full_ms, pruned_ms = med[f"{tag}/FULL"], med[f"{tag}/PRUNED"]
        rows_ms = max(0.0, med[f"{tag}/rows+"] - med[f"{tag}/rows-"])
        overhead_ms = pruned_ms - med[f"{tag}/forced"]
        # the default schedule: grid models a FULL frame every 8; class-token models a 1in2 GRID step every 8,
        # which costs about what a pruned step at keep 0.5 costs (taken as the pruned step's cost here)
        avg_g = (v["gmacs_full"] + 7 * v["gmacs_pruned"]) / 8 if grid else v["gmacs_pruned"]
        avg_ms = (full_ms + 7 * pruned_ms) / 8 if grid else pruned_ms
        rows.append(
            {
                "model": name,
                "variant": label,
                "kept": v["kept"],
                "gmacs": v["gmacs_pruned"],
                "ms": pruned_ms,
                "full_gmacs": v["gmacs_full"],
                "full_ms": full_ms,
                "avg_gmacs": avg_g,
                "avg_ms": avg_ms,
                "gmac_ratio": dense_g / v["gmacs_pruned"],
                "speedup": dense_ms / pruned_ms,
                "rgtp_gmacs": v["rgtp_gmacs_pruned"],
                "overhead_ms": overhead_ms,
                "rows_ms": rows_ms,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| model | variant | kept | GMACs/frame | ms/frame | GMAC ratio | speedup | FULL ms | RGTP overhead ms "
        "| attention rows ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [
            _fmt(r, k, fmt)
            for k, fmt in (
                ("gmacs", ".2f"),
                ("ms", ".1f"),
                ("gmac_ratio", ".2f"),
                ("speedup", ".2f"),
                ("full_ms", ".1f"),
                ("overhead_ms", ".1f"),
                ("rows_ms", ".1f"),
            )
        ]
        print(f"| {r['model']} | {r['variant']} | {r.get('kept', '')} | " + " | ".join(cells) + " |")


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    return "" if key not in row else format(row[key], fmt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(SIZES), default=["clip", "dinov2", "vitdet"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "adapters_cpu.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, infos, all_samples = [], {}, {}
    for name in args.models:  # one model at a time (ViTDet-B at 1024 holds gigabytes of attention)
        cases, info = model_cases(name)
        print(f"{name}: {len(cases)} cases x {args.warmup + args.iters} rounds", file=sys.stderr, flush=True)
        with torch.no_grad():
            samples = measure_interleaved(cases, args.warmup, args.iters)
        rows += table(name, info, samples)
        infos[name], all_samples[name] = info, samples
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"iters": args.iters, "warmup": args.warmup, "keeps": KEEPS, "sizes": SIZES},
        "environment": {**environment("cpu"), "transformers": __import__("transformers").__version__},
    }
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "adapters", "models": {}}
    for name in args.models:  # a run of some models replaces theirs and keeps the others' (each with its own run)
        result["models"][name] = {
            "run": run,
            "rows": [r for r in rows if r["model"] == name],
            "info": infos[name],
            "samples_ms": all_samples[name],
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
