"""Per-preset compute accounting by counting a dry run on meta tensors (no arithmetic is performed).

Every method is counted the same way: its runner (built through the method registry) steps over meta frames under
:class:`~rgtp.flops.MacCounter` until each kind of step it makes has been seen (ViTDet: a FULL frame and the first
pruned one; ViViT: one clip of all views). The count is data-independent for every method whose kept counts depend
only on its settings; a selector whose count depends on the data (``boxes``) is counted at the count its keep ratio
gives, and the result says so in ``note``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rgtp.config import Preset, RGTPConfig, ViTDetConfig
from rgtp.flops import MacCounter
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import PAPER
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.driver import run_clip, stream
from rgtp.runtime.methods import make_runner
from rgtp.runtime.selectors import RolloutSelector, Selector, UniformSelector, build_selector

__all__ = ["FULL_FRACTION_VID_VAL", "Accounting", "count_preset"]

FULL_FRACTION_VID_VAL = 0.1266  # FULL frames among VID val frames with a full frame every 8 (method §10.2)


@dataclass
class Accounting:
    """Compute of one preset in multiply-accumulates (paper convention: backbone + method overhead)."""

    preset: str
    family: str
    unit: str = "MAC"
    full_frame_gmacs: float | None = None  # ViTDet: a FULL frame (None when the method makes none)
    pruned_frame_gmacs: float | None = None  # ViTDet: a reduced frame (pruned, gated, merged), None for dense
    vid_avg_gmacs: float | None = None  # ViTDet, averaged with the VID val FULL fraction
    full_fraction: float | None = None  # ViTDet: the FULL fraction of that average (staggered: video starts only)
    clip_tmacs: float | None = None  # ViViT, per clip of all views
    kept: dict[str, int] = field(default_factory=dict)  # tokens processed per step kind
    num_tokens: int = 0
    breakdown_gmacs: dict[str, dict[str, float]] = field(default_factory=dict)  # per step kind, per scope
    paper: dict[str, Any] = field(default_factory=dict)
    method: str = "dense"
    note: str = ""  # how a data-dependent count was counted
    # GMACs (paper scopes) per step kind: a ViTDet frame; a ViViT tubelet step of one view (spatial encoder only)
    frame_gmacs: dict[str, float] = field(default_factory=dict)

    def step_gmacs(self, kind: FrameKind | str) -> float:
        """GMACs (paper scopes) of a step of this kind (every kind the preset's schedule makes is counted)."""
        return self.frame_gmacs[FrameKind(kind).value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_preset(preset: Preset) -> Accounting:
    """Count the preset's MACs on meta tensors."""
    reported = PAPER.get(preset.name)
    acc = Accounting(
        preset.name, preset.family, paper={} if reported is None else asdict(reported), method=preset.method
    )
    with torch.device("meta"):
        model = ViTDet(preset.model) if isinstance(preset.model, ViTDetConfig) else ViViT(preset.model)
    acc.num_tokens = preset.model.num_tokens
    cfg = preset.method_config
    if isinstance(cfg, RGTPConfig) and (cfg.schedule.trigger is not None or cfg.schedule.cut is not None):
        # resets triggered by the data cannot be counted on meta tensors: the schedule without them
        preset = dataclasses.replace(preset, rgtp=_schedule_only(cfg))
        acc.note = "resets triggered by the frames (drift, scene cuts) are not counted (measure them with rgtp bench)"
    runner = make_runner(model, preset.method_config, selector=_nominal(preset, acc))
    if isinstance(model, ViTDet):
        _count_frames(preset, runner, acc)
    else:
        _count_clip(preset, model, runner, acc)
    return acc


def _schedule_only(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, trigger=None, cut=None))


def _nominal(preset: Preset, acc: Accounting) -> Selector | None:
    """For a selector whose kept count depends on the data, a stand-in keeping the count its keep ratio gives (grid
    models: the data-dependent selectors read detections, which class-token models have not). A selector reading
    detections for its ranking only (the box prior) is counted as the rollout selector: it keeps as many tokens."""
    cfg = preset.method_config
    if not isinstance(cfg, RGTPConfig) or preset.family != "vitdet":
        return None
    selector = build_selector(cfg)
    if selector.needs_anchors and not selector.data_dependent:
        return RolloutSelector(cfg)
    if not selector.data_dependent:
        return None
    acc.note = (
        f"selection policy {cfg.selection.policy!r} keeps a data-dependent number of tokens; pruned steps are "
        f"counted at the count keep_ratio={cfg.selection.keep_ratio:g} gives (measure on data with rgtp bench)"
    )
    return UniformSelector(cfg)


def _count_frames(preset: Preset, runner: Any, acc: Accounting) -> None:
    """Step meta frames until every kind of step of the schedule has been counted: the first step, the first reduced
    one and, with grid reset steps, the first of those (at most 64 frames)."""
    size = preset.model.img_size
    images = torch.empty(1, 3, size, size, device="meta")
    cfg = preset.method_config
    grid_resets = isinstance(cfg, RGTPConfig) and cfg.schedule.reset_mode == "grid" and cfg.schedule.reset_every
    for tick in stream(runner, (images for _ in range(64)), count=True):
        kind, macs = tick.output.kind, tick.macs
        assert macs is not None
        if kind.value not in acc.kept:
            acc.kept[kind.value] = tick.output.num_kept
            acc.breakdown_gmacs[kind.value] = {k: v / 1e9 for k, v in sorted(macs.items())}
            acc.frame_gmacs[kind.value] = sum(v for k, v in macs.items() if k in ("backbone", "rgtp")) / 1e9
        reduced = [k for k in acc.kept if k not in (FrameKind.FULL.value, FrameKind.GRID.value)]
        if runner.stateless or (reduced and (not grid_resets or FrameKind.GRID.value in acc.kept)):
            break
    full = acc.frame_gmacs.get(FrameKind.FULL.value)
    pruned = next((acc.frame_gmacs[k] for k in acc.kept if k not in (FrameKind.FULL.value, FrameKind.GRID.value)), None)
    acc.full_frame_gmacs, acc.pruned_frame_gmacs = full, pruned
    if full is not None and pruned is not None:
        staggered = isinstance(cfg, RGTPConfig) and cfg.schedule.refresh == "staggered"
        fraction = FULL_FRACTION_VID_VAL - 1 / 8 if staggered else FULL_FRACTION_VID_VAL  # staggered: video starts
        acc.vid_avg_gmacs = fraction * full + (1 - fraction) * pruned
        acc.full_fraction = fraction
    else:
        acc.vid_avg_gmacs = full if full is not None else pruned


def _count_clip(preset: Preset, model: ViViT, runner: Any, acc: Accounting) -> None:
    cfg = preset.model
    views = preset.views[0] * preset.views[1]
    clip = torch.empty(views, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device="meta")
    with MacCounter() as counter:
        out = run_clip(runner, clip, count=True)
    assert out.step_macs is not None
    for step, macs in zip(out.steps, out.step_macs, strict=True):
        acc.kept.setdefault(step.kind.value, step.num_kept)
        per_view = sum(v for k, v in macs.items() if k in ("backbone", "rgtp")) / views / 1e9
        acc.frame_gmacs.setdefault(step.kind.value, per_view)  # GMACs of one step of one view, by kind
    acc.clip_tmacs = counter.macs() / 1e12
    acc.breakdown_gmacs = {"clip": {k: v / 1e9 for k, v in sorted(counter.by_scope().items())}}
