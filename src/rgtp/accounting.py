"""Per-preset compute accounting by counting a dry run on meta tensors (no arithmetic is performed).

The count is data-independent for every preset (kept counts depend only on the settings), so one FULL and one
pruned step (ViTDet), or one clip (ViViT), give the exact per-frame / per-clip figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rgtp.config import Preset, ViTDetConfig
from rgtp.flops import MacCounter
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import PAPER
from rgtp.pruning.schedule import FrameKind, frame_kind
from rgtp.runtime import RGTPViTDet, RGTPViViT

__all__ = ["FULL_FRACTION_VID_VAL", "Accounting", "count_preset"]

FULL_FRACTION_VID_VAL = 0.1266  # FULL frames among VID val frames with a full frame every 8 (spec §10.2)


@dataclass
class Accounting:
    """Compute of one preset in multiply-accumulates (paper convention: backbone + RGTP overhead)."""

    preset: str
    family: str
    unit: str = "MAC"
    full_frame_gmacs: float | None = None  # ViTDet
    pruned_frame_gmacs: float | None = None  # ViTDet, None for a baseline
    vid_avg_gmacs: float | None = None  # ViTDet, averaged with the VID val FULL fraction
    clip_tmacs: float | None = None  # ViViT, per clip of all views
    kept: dict[str, int] = field(default_factory=dict)  # kept tokens per step kind
    num_tokens: int = 0
    breakdown_gmacs: dict[str, dict[str, float]] = field(default_factory=dict)  # per step kind, per scope
    paper: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_preset(preset: Preset) -> Accounting:
    """Count the preset's MACs on meta tensors."""
    reported = PAPER.get(preset.name)
    acc = Accounting(preset.name, preset.family, paper={} if reported is None else asdict(reported))
    with torch.device("meta"):
        model = ViTDet(preset.model) if isinstance(preset.model, ViTDetConfig) else ViViT(preset.model)
    acc.num_tokens = preset.model.num_tokens
    if isinstance(model, ViTDet):
        _count_vitdet(preset, model, acc)
    else:
        _count_vivit(preset, model, acc)
    return acc


def _count_vitdet(preset: Preset, model: ViTDet, acc: Accounting) -> None:
    size = preset.model.img_size
    images = torch.empty(1, 3, size, size, device="meta")
    if preset.rgtp is None:
        with MacCounter() as counter:
            model.net(images)
        acc.full_frame_gmacs = acc.vid_avg_gmacs = counter.gmacs()
        acc.kept = {"full": acc.num_tokens}
        acc.breakdown_gmacs = {"full": _gscopes(counter)}
        return
    runtime = RGTPViTDet(model, preset.rgtp)
    state = runtime.new_state()
    sched = preset.rgtp.schedule
    pruned_t = next(t for t in range(1, 64) if frame_kind(t, sched.reset_every, sched.reset_mode) is not FrameKind.FULL)
    for t in range(pruned_t + 1):
        with MacCounter() as counter:
            result = runtime.step(images, state)
        if t in (0, pruned_t):
            acc.kept[result.kind.value] = result.num_kept
            acc.breakdown_gmacs[result.kind.value] = _gscopes(counter)
            if t == 0:
                acc.full_frame_gmacs = counter.gmacs()
            else:
                acc.pruned_frame_gmacs = counter.gmacs()
    assert acc.full_frame_gmacs is not None and acc.pruned_frame_gmacs is not None
    acc.vid_avg_gmacs = (
        FULL_FRACTION_VID_VAL * acc.full_frame_gmacs + (1 - FULL_FRACTION_VID_VAL) * acc.pruned_frame_gmacs
    )


def _count_vivit(preset: Preset, model: ViViT, acc: Accounting) -> None:
    cfg = preset.model
    views = preset.views[0] * preset.views[1]
    clip = torch.empty(views, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device="meta")
    with MacCounter() as counter:
        if preset.rgtp is None:
            model(clip)
            acc.kept = {"full": acc.num_tokens}
        else:
            for step in RGTPViViT(model, preset.rgtp).run_clip(clip).steps:
                acc.kept.setdefault(step.kind.value, step.num_kept)
    acc.clip_tmacs = counter.macs() / 1e12
    acc.breakdown_gmacs = {"clip": _gscopes(counter)}


def _gscopes(counter: MacCounter) -> dict[str, float]:
    return {k: v / 1e9 for k, v in sorted(counter.by_scope().items())}
