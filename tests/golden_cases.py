"""Golden runs: what the paper presets and the benchmark's methods compute, recorded once and checked forever.

Each case runs one method on one model (tiny versions of every paper preset family, the three benchmark presets at
their real size, and every comparison method) over a short moving video, step by step, and records per step: the step
kind, the kept count and indices, the warped scores and the heatmap, the model's outputs (fingerprinted when large),
the MACs per scope (counted by :class:`~rgtp.flops.MacCounter`) and the state's bytes. ``tests/test_golden.py``
replays every case and compares it with ``tests/golden/runs.pt``.

Record (only when a change of results is intended, and say so in the commit)::

    python tests/golden_cases.py --write
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rgtp.accounting import count_preset
from rgtp.config import EventfulConfig, RGTPConfig, ToMeConfig, ViTDetConfig, ViViTConfig
from rgtp.flops import MacCounter
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import get_preset, preset_names
from rgtp.runtime import make_runner, run_clip

GOLDEN = Path(__file__).parent / "golden" / "runs.pt"
SAMPLES = 256  # values kept of a large output tensor, evenly spaced over its elements

# Tiny models for the paper's families: the paper presets' method settings on small grids.
TINY_HEAD = dataclasses.replace(
    get_preset("shapes_det_base").model.head,  # type: ignore[union-attr]
    num_classes=3,
    anchor_sizes=(8, 16, 24, 40, 64),
    pre_nms_topk=60,
    post_nms_topk=20,
    box_conv_dim=8,
    box_fc_dim=16,
)
TINY_VITDET = ViTDetConfig(
    img_size=80,
    patch_size=8,
    embed_dim=32,
    depth=4,
    num_heads=2,
    window_size=4,
    global_blocks=(1, 3),
    pos_embed_grid=6,
    rel_pos_grid=8,
    pyramid_dim=16,
    head=TINY_HEAD,
)
TINY_K400 = ViViTConfig(
    img_size=48, num_frames=20, tubelet=(2, 8, 8), embed_dim=32, depth=3, temporal_depth=1, num_heads=2, num_classes=7
)
TINY_EPIC = dataclasses.replace(TINY_K400, img_size=64, num_frames=12)  # 8x8 tokens, 6 steps


def fingerprint(x: Tensor) -> dict[str, Any]:
    """A tensor, or for a large one its shape, sums and evenly spaced samples."""
    x = x.detach().float().cpu()
    if x.numel() <= 4 * SAMPLES:
        return {"full": x.clone()}
    flat = x.flatten()
    idx = torch.linspace(0, flat.numel() - 1, SAMPLES).long()
    return {"shape": tuple(x.shape), "sum": flat.double().sum(), "abs": flat.double().abs().sum(), "at": flat[idx]}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed", "cls_token")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _video(batch: int, size: int, frames: int, seed: int) -> list[Tensor]:
    """A moving video: a random image panned by 2 pixels a frame plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, size, size, generator=gen)
    return [
        torch.roll(base, shifts=(t, 2 * t), dims=(-2, -1)) + 0.05 * torch.randn(base.shape, generator=gen)
        for t in range(frames)
    ]


def _clip(batch: int, cfg: ViViTConfig, seed: int) -> Tensor:
    """Views (B, 3, T, H, W) of a moving clip."""
    frames = _video(batch, cfg.img_size, cfg.num_frames, seed)
    return torch.stack(frames, dim=2)


def _macs(counter: MacCounter) -> dict[str, int]:
    return dict(sorted(counter.by_scope().items()))


def _opt(x: Tensor | None) -> Any:
    return None if x is None else fingerprint(x)


# ---------------------------------------------------------------------------------------------------------------------
# The harness: the only part that follows the runtime's API.


def run_detection(model: ViTDet, method: RGTPConfig | EventfulConfig | ToMeConfig | None, frames: list[Tensor]) -> dict:
    runner = make_runner(model, method, head=model.detect)
    state = runner.new_state()
    steps = []
    for x in frames:
        with MacCounter() as counter:
            out = runner.step(x, state)
        steps.append(
            {
                "kind": out.kind.value,
                "num_kept": out.num_kept,
                "keep_idx": None if out.keep_idx is None else out.keep_idx.clone(),
                "scores": _opt(out.scores),
                "importance": _opt(out.importance),
                "features": {k: fingerprint(v) for k, v in out.features.items()},
                "detections": [
                    {"boxes": _opt(d.boxes), "scores": _opt(d.scores), "labels": d.labels.clone()}
                    for d in out.detections
                ],
                "macs": _macs(counter),
                "state_nbytes": state.nbytes(),
            }
        )
    return {"steps": steps}


def run_action(model: ViViT, method: RGTPConfig | EventfulConfig | ToMeConfig | None, clip: Tensor) -> dict:
    runner = make_runner(model, method)
    with MacCounter() as counter:
        result = run_clip(runner, clip)
    steps = [
        {
            "kind": s.kind.value,
            "num_kept": s.num_kept,
            "keep_idx": None if s.keep_idx is None else s.keep_idx.clone(),
            "scores": _opt(s.scores),
            "importance": _opt(s.importance),
            "cls": fingerprint(s.pooled),
        }
        for s in result.steps
    ]
    return {"steps": steps, "logits": fingerprint(result.logits), "macs": _macs(counter)}


# ---------------------------------------------------------------------------------------------------------------------
# The cases


def _vitdet(cfg: ViTDetConfig, seed: int = 0) -> ViTDet:
    torch.manual_seed(seed)
    return _randomize(ViTDet(cfg), seed)  # type: ignore[return-value]


def _vivit(cfg: ViViTConfig, seed: int = 0) -> ViViT:
    torch.manual_seed(seed)
    return _randomize(ViViT(cfg), seed)  # type: ignore[return-value]


def _rgtp(preset: str) -> RGTPConfig:
    cfg = get_preset(preset).rgtp
    assert cfg is not None
    return cfg


def _policy(cfg: RGTPConfig, keep_ratio: float, **selection: Any) -> RGTPConfig:
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, keep_ratio=keep_ratio, **selection))


def _detection_cases() -> dict[str, Callable[[], dict]]:
    tiny = lambda: _vitdet(TINY_VITDET)  # noqa: E731
    video = lambda: _video(2, TINY_VITDET.img_size, 10, 1)  # noqa: E731
    shapes, peds = get_preset("shapes_det_rgtp"), get_preset("pedestrians_det_rgtp")
    base = _rgtp("shapes_det_rgtp")
    methods: dict[str, RGTPConfig | EventfulConfig | ToMeConfig | None] = {
        "vitdet672_keep512": _rgtp("vitdet_vid_672_keep512"),
        "vitdet1024_keep750": _rgtp("vitdet_vid_1024_keep750"),
        "vitdet_dense": None,
        "vitdet_uniform": _policy(base, 0.3, policy="uniform"),
        "vitdet_random": _policy(base, 0.3, policy="random"),
        "vitdet_boxes": _policy(base, 1.0, policy="boxes", box_margin=1),
        "vitdet_eventful_qk_av": EventfulConfig(keep_ratio=0.3),
        "vitdet_eventful_qk": EventfulConfig(keep_ratio=0.3, global_attention="qk", refresh_every=6),
        "vitdet_eventful_dense": EventfulConfig(k=20, global_attention="dense"),
        "vitdet_tome_merged": ToMeConfig(keep_ratio=0.35, spread="front", global_attn="merged"),
        "vitdet_tome_unmerge": ToMeConfig(r=8),
    }
    cases: dict[str, Callable[[], dict]] = {
        name: (lambda m=m: run_detection(tiny(), m, video())) for name, m in methods.items()
    }
    cases["shapes_det_rgtp"] = lambda: run_detection(
        _vitdet(shapes.model),
        shapes.rgtp,
        _video(1, shapes.model.img_size, 10, 2),  # type: ignore[arg-type]
    )
    cases["shapes_det_base"] = lambda: run_detection(
        _vitdet(shapes.model),
        None,
        _video(1, shapes.model.img_size, 3, 2),  # type: ignore[arg-type]
    )
    cases["pedestrians_det_rgtp"] = lambda: run_detection(
        _vitdet(peds.model),
        peds.rgtp,
        _video(1, peds.model.img_size, 10, 3),  # type: ignore[arg-type]
    )
    return cases


def _action_cases() -> dict[str, Callable[[], dict]]:
    motions = get_preset("motions_rgtp")
    base = _rgtp("motions_rgtp")
    k400 = lambda: _vivit(TINY_K400)  # noqa: E731
    epic = lambda: _vivit(TINY_EPIC)  # noqa: E731
    cases: dict[str, Callable[[], dict]] = {
        "vivit_k400_keep049": lambda: run_action(k400(), _rgtp("vivit_k400_keep049"), _clip(2, TINY_K400, 4)),
        "vivit_k400_keep0066": lambda: run_action(k400(), _rgtp("vivit_k400_keep0066"), _clip(2, TINY_K400, 4)),
        "vivit_epic_fg160s05_bg009": lambda: run_action(
            epic(), _rgtp("vivit_epic_fg160s05_bg009"), _clip(2, TINY_EPIC, 5)
        ),
        "vivit_epic_fg300_bg025": lambda: run_action(epic(), _rgtp("vivit_epic_fg300_bg025"), _clip(2, TINY_EPIC, 5)),
        "vivit_dense": lambda: run_action(k400(), None, _clip(2, TINY_K400, 4)),
    }
    cfg = motions.model
    assert isinstance(cfg, ViViTConfig)
    methods: dict[str, RGTPConfig | EventfulConfig | ToMeConfig | None] = {
        "motions_rgtp": base,
        "motions_base": None,
        "motions_uniform": _policy(base, 0.3, policy="uniform"),
        "motions_random": _policy(base, 0.3, policy="random"),
        "motions_eventful": EventfulConfig(keep_ratio=0.3),
        "motions_tome": ToMeConfig(keep_ratio=0.35, spread="front"),
    }
    for name, m in methods.items():
        cases[name] = lambda m=m: run_action(_vivit(cfg), m, _clip(2, cfg, 6))
    return cases


CASES: dict[str, Callable[[], dict]] = {**_detection_cases(), **_action_cases()}


def accounting() -> dict[str, dict[str, Any]]:
    """``rgtp flops`` of every registered preset (full size, counted on meta tensors)."""
    return {name: count_preset(get_preset(name)).to_dict() for name in preset_names()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"record every case to {GOLDEN}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs: dict[str, Any] = {"accounting": accounting()}
    for name, case in CASES.items():
        runs[name] = case()
        print(f"{name}: {len(runs[name]['steps'])} steps")
    print(f"accounting: {len(runs['accounting'])} presets")
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        torch.save(runs, GOLDEN)
        print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
