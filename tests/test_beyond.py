"""RGTP beyond the paper (opt-in): fresh outputs, staggered refresh, change-triggered resets, box and change priors.

The paper presets do not move (tests/test_golden.py); here each variant's own contract on tiny models.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_VITDET, vitdet_rgtp, vivit_rgtp
from rgtp.config import ConfigError, RGTPConfig, ScheduleConfig, SelectionConfig
from rgtp.data.detection import DetectionSet, DetSequence
from rgtp.lab.data.registry import with_cuts
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.pruning.schedule import (
    FrameKind,
    adaptive_kind,
    embedding_change,
    frame_kind,
    staggered_count,
    stalest_tokens,
)
from rgtp.runtime import make_runner, run_clip


def _frames(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 80, 80, generator=gen)
    return [torch.roll(base, shifts=t, dims=-1) + 0.05 * torch.randn(base.shape, generator=gen) for t in range(n)]


def _schedule(cfg: RGTPConfig, **changes: object) -> RGTPConfig:
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, **changes))


def _selection(cfg: RGTPConfig, **changes: object) -> RGTPConfig:
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, **changes))


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions


def test_embedding_change_is_relative_and_zero_when_static() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 50, 16, generator=gen), torch.randn(2, 50, 16, generator=gen)
    torch.testing.assert_close(embedding_change(a, a), torch.zeros(2))
    torch.testing.assert_close(embedding_change(3 * b, 3 * a), embedding_change(b, a))  # scale-free
    assert torch.all((embedding_change(b, a) > 1.2) & (embedding_change(b, a) < 1.6))  # unrelated frames: ~sqrt(2)


def test_adaptive_kind_is_the_paper_schedule_without_its_options() -> None:
    for every in (None, 1, 3, 8):
        since = 0
        for t in range(20):
            since = since + 1
            kind = adaptive_kind(t, since, 0.0, every, "full", "reset", None)
            assert kind is frame_kind(t, every, "full")
            if kind is FrameKind.FULL:
                since = 0


def test_adaptive_kind_triggers_and_staggered_never_resets_on_its_own() -> None:
    assert adaptive_kind(5, 2, 1.5, None, "full", "reset", 1.0) is FrameKind.FULL
    assert adaptive_kind(5, 2, 0.5, None, "grid", "reset", 1.0) is FrameKind.ROLLOUT
    assert adaptive_kind(5, 2, 1.0, 8, "grid", "reset", 1.0) is FrameKind.GRID
    assert adaptive_kind(0, 1, 0.0, 8, "full", "staggered", None) is FrameKind.FULL
    assert all(adaptive_kind(t, t, 0.0, 4, "full", "staggered", None) is FrameKind.ROLLOUT for t in range(1, 30))
    assert adaptive_kind(9, 9, 2.0, 4, "full", "staggered", 1.0) is FrameKind.FULL
    with pytest.raises(ValueError, match="since_reset"):
        adaptive_kind(3, 0, 0.0, 4, "full", "reset", None)


def test_stalest_tokens_skip_the_kept_ones_and_take_the_oldest_first() -> None:
    age = torch.tensor([[0, 5, 2, 5, 9, 1]])
    keep = torch.tensor([[4]])
    assert sorted(stalest_tokens(age, keep, 2)[0].tolist()) == [1, 3]  # 9 is kept; the two 5s
    assert sorted(stalest_tokens(age, keep, 3)[0].tolist()) == [1, 2, 3]
    assert stalest_tokens(age, keep, 0).shape == (1, 0)
    assert staggered_count(100, 8) == 13 and staggered_count(96, 8) == 12


@pytest.mark.parametrize("every", [2, 5, 8])
def test_staggered_refresh_bounds_every_tokens_age(every: int) -> None:
    """Whatever the selector keeps, adding the ceil(N / f) stalest tokens leaves no token unprocessed for f steps."""
    gen = torch.Generator().manual_seed(every)
    n, k = 37, 3
    age = torch.zeros(1, n, dtype=torch.int32)
    for _ in range(200):
        keep = torch.randperm(n, generator=gen)[:k].sort().values[None]  # an adversary's choice
        stale = stalest_tokens(age, keep, staggered_count(n, every))
        processed = torch.cat([keep, stale], dim=1)
        assert processed.unique().numel() == processed.shape[1]
        age += 1
        age.scatter_(1, processed, 0)
        assert int(age.max()) < every


def test_config_checks_of_the_new_options() -> None:
    with pytest.raises(ConfigError, match="staggered"):
        ScheduleConfig(refresh="staggered", reset_every=None)
    with pytest.raises(ConfigError, match="trigger"):
        ScheduleConfig(trigger=0.0)
    with pytest.raises(ConfigError, match="pruned_output"):
        RGTPConfig(pruned_output="warm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="change_weight"):
        SelectionConfig(change_weight=1.5)
    assert not ScheduleConfig().adaptive and ScheduleConfig(trigger=1.0).adaptive


# ---------------------------------------------------------------------------------------------------------------------
# The loops


def test_fresh_outputs_equal_stale_ones_on_a_static_video_and_differ_on_a_moving_one(tiny_vitdet: ViTDet) -> None:
    """A pruned token's fresh output is this step's base plus its last change: on a repeated frame the base has not
    moved, so fresh equals stale; on a moving video, kept tokens stay exact and pruned tokens follow the base."""
    stale_cfg = vitdet_rgtp(keep_ratio=0.3, reset_every=None, pool=1)
    fresh_cfg = dataclasses.replace(stale_cfg, pruned_output="fresh")
    frame = _frames(1)[0]
    outs = []
    for cfg in (stale_cfg, fresh_cfg):
        runner = make_runner(tiny_vitdet, cfg)
        state = runner.new_state()
        outs.append([runner.step(frame, state).features["p4"] for _ in range(3)])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    moving = _frames(4)
    results = []
    for cfg in (stale_cfg, fresh_cfg):
        runner = make_runner(tiny_vitdet, cfg)
        state = runner.new_state()
        results.append([runner.step(x, state) for x in moving])
    stale, fresh = results
    assert [r.kind for r in fresh] == [r.kind for r in stale]
    torch.testing.assert_close(fresh[0].features["p4"], stale[0].features["p4"])  # step 0 is full
    assert not torch.allclose(fresh[2].features["p4"], stale[2].features["p4"], atol=1e-4)
    assert torch.equal(fresh[1].keep_idx, stale[1].keep_idx)  # the choice of tokens does not depend on it


def test_fresh_outputs_with_every_token_kept_are_the_dense_model(tiny_vitdet: ViTDet) -> None:
    cfg = dataclasses.replace(vitdet_rgtp(keep_ratio=1.0, reset_every=None, pool=1), pruned_output="fresh")
    runner = make_runner(tiny_vitdet, cfg)
    state = runner.new_state()
    for x in _frames(3):
        out = runner.step(x, state)
        for key, value in tiny_vitdet(x).items():
            torch.testing.assert_close(out.features[key], value, rtol=1e-4, atol=1e-5)


def test_staggered_refresh_has_no_full_step_after_the_first_and_a_constant_cost(tiny_vitdet: ViTDet) -> None:
    cfg = _schedule(vitdet_rgtp(keep_ratio=0.2, pool=1), refresh="staggered", reset_every=4)
    runner = make_runner(tiny_vitdet, cfg)
    state = runner.new_state()
    steps = [runner.step(x, state) for x in _frames(12)]
    n = TINY_VITDET.num_tokens
    assert steps[0].kind is FrameKind.FULL and all(s.kind is FrameKind.ROLLOUT for s in steps[1:])
    assert {s.num_kept for s in steps[1:]} == {20 + staggered_count(n, 4)}
    assert state.age is not None and int(state.age.max()) < 4
    state.reset()
    assert state.age is None and state.since_reset == 0


def test_change_trigger_resets_on_a_scene_cut_and_not_on_a_static_camera(tiny_vitdet: ViTDet) -> None:
    cfg = _schedule(vitdet_rgtp(keep_ratio=0.3, pool=1), reset_every=None, trigger=0.5)
    runner = make_runner(tiny_vitdet, cfg)
    state = runner.new_state()
    scene_a, scene_b = _frames(1, seed=1)[0], _frames(1, seed=2)[0]
    kinds = [runner.step(x, state).kind for x in [scene_a] * 5 + [scene_b] * 3]
    assert kinds == [FrameKind.FULL] + [FrameKind.ROLLOUT] * 4 + [FrameKind.FULL] + [FrameKind.ROLLOUT] * 2
    assert state.drift is not None and float(state.drift.max()) == pytest.approx(0.0, abs=1e-6)


def test_change_trigger_on_vivit_resets_with_the_grid_pattern(tiny_vivit: ViViT) -> None:
    cfg = _schedule(vivit_rgtp(reset_every=None), trigger=1e-6)
    clip = torch.randn(1, 3, 8, 32, 32)
    out = run_clip(make_runner(tiny_vivit, cfg), clip)
    assert [s.kind for s in out.steps] == [FrameKind.FULL] + [FrameKind.GRID] * 3  # each noise step is a cut


def test_buffered_context_lets_the_class_token_see_pruned_tokens(tiny_vivit: ViViT) -> None:
    """Class-token models: with a buffered context the kept queries attend over every token (pruned ones through
    their last keys and values); everything kept equals the dense model, and the kept sets do not change."""
    drop_cfg = vivit_rgtp(keep_ratio=0.5, bg_ratio=0.0, reset_every=None)
    ctx_cfg = dataclasses.replace(drop_cfg, pruned_context="buffered")
    clip = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    drop = run_clip(make_runner(tiny_vivit, drop_cfg), clip)
    ctx = run_clip(make_runner(tiny_vivit, ctx_cfg), clip)
    torch.testing.assert_close(ctx.steps[0].pooled, drop.steps[0].pooled)  # step 0 is full
    assert all(torch.equal(a.keep_idx, b.keep_idx) for a, b in zip(ctx.steps[1:], drop.steps[1:], strict=True))
    assert not torch.allclose(ctx.steps[1].pooled, drop.steps[1].pooled, atol=1e-4)
    every = dataclasses.replace(ctx_cfg, selection=dataclasses.replace(ctx_cfg.selection, keep_ratio=1.0))
    torch.testing.assert_close(run_clip(make_runner(tiny_vivit, every), clip).logits, tiny_vivit(clip))
    runner = make_runner(tiny_vivit, ctx_cfg)
    state = runner.new_state()
    runner.step(tiny_vivit.patch_embed(clip[:, :, :2]).flatten(2).transpose(1, 2), state)
    assert sorted(state.qkv) == [1, 2]  # a (B, P + N, 3C) buffer per block after the first
    with pytest.raises(ConfigError, match="pruned_context"):
        RGTPConfig(pruned_context="all")  # type: ignore[arg-type]


def test_box_prior_keeps_the_previous_boxes_tokens_first(tiny_vitdet: ViTDet) -> None:
    cfg = _selection(vitdet_rgtp(keep_ratio=0.3, reset_every=None, pool=1), policy="rollout_boxes", box_margin=0)
    runner = make_runner(tiny_vitdet, cfg, head=tiny_vitdet.detect)
    state = runner.new_state()
    frames = _frames(3)
    runner.step(frames[0], state)
    assert state.importance is not None
    boxes = state.importance > state.importance.min() + 0.5 / TINY_VITDET.num_tokens  # ranked first by the prior
    out = runner.step(frames[1], state)
    assert out.keep_idx is not None
    if 0 < int(boxes.sum()) <= out.keep_idx.shape[1]:
        kept = torch.zeros_like(boxes)
        kept[0, out.keep_idx[0]] = True
        assert bool((kept | ~boxes).all())  # every box token (carried by tracking) is kept
    with pytest.raises(ValueError, match="detection head"):
        make_runner(tiny_vitdet, cfg)


def test_change_prior_picks_the_tokens_that_changed(tiny_vitdet: ViTDet) -> None:
    cfg = _selection(vitdet_rgtp(keep_ratio=0.1, reset_every=None, pool=1), change_weight=1.0)
    runner = make_runner(tiny_vitdet, cfg)
    state = runner.new_state()
    frame = _frames(1)[0]
    runner.step(frame, state)
    changed = frame.clone()
    changed[..., 40:56, 8:24] += 3.0  # tokens (5..6, 1..2) of the 10x10 grid of 8x8 patches
    out = runner.step(changed, state)
    assert out.keep_idx is not None
    assert {51, 52, 61, 62} <= set(out.keep_idx[0].tolist())
    assert state.reference is not None and state.reference.shape == (1, TINY_VITDET.num_tokens, 32)


# ---------------------------------------------------------------------------------------------------------------------
# Data for the harder measurements


def test_with_cuts_splices_segments_of_other_sequences() -> None:
    seqs = []
    for i in range(3):
        frames = torch.full((6, 4, 4, 3), i, dtype=torch.uint8).numpy()
        boxes = tuple(torch.tensor([[0.0, 0.0, 2.0, 2.0]]).numpy() for _ in range(6))
        labels = tuple(torch.tensor([i]).numpy() for _ in range(6))
        seqs.append(DetSequence(f"s{i}", frames, boxes, labels))
    cut = with_cuts(DetectionSet("x", "test", ("a", "b", "c"), tuple(seqs)), 2)
    assert [int(f[0, 0, 0]) for f in cut[0].frames] == [0, 0, 1, 1, 2, 2]
    assert [int(lab[0]) for lab in cut[2].labels] == [2, 2, 0, 0, 1, 1]
    assert cut.num_frames == 18 and cut[1].name == "s1_cut2"
    with pytest.raises(ValueError, match="every"):
        with_cuts(cut, 0)


def test_shapes_pan_speed_controls_the_camera() -> None:
    from rgtp.lab.data.shapes import make_shapes_split

    static = make_shapes_split("test", num_sequences=1, length=3, size=(48, 64), pan=0.0)[0]
    fast = make_shapes_split("test", num_sequences=1, length=3, size=(48, 64), pan=8.0)[0]
    assert static.frames.shape == fast.frames.shape == (3, 48, 64, 3)

    def change(frames: object) -> float:
        f = torch.as_tensor(frames).float()
        return float((f[1:] - f[:-1]).abs().mean())

    assert change(fast.frames) > 2 * change(static.frames)
    with pytest.raises(ValueError, match="pan"):
        make_shapes_split("test", num_sequences=1, length=2, pan=-1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Presets and accounting


def test_plus_presets_keep_the_paper_settings_they_build_on() -> None:
    from rgtp.presets import PLUS_PRESETS, get_preset

    for name, (paper, keep) in PLUS_PRESETS.items():
        plus, base = get_preset(name), get_preset(paper)
        assert plus.model == base.model and plus.rgtp is not None and base.rgtp is not None
        assert plus.rgtp.selection.keep_ratio == keep and plus.rgtp.rollout == base.rgtp.rollout
        assert plus.rgtp.tracking == base.rgtp.tracking
        assert base.rgtp.schedule.refresh == "reset" and base.rgtp.pruned_output == "stale"  # the paper's untouched
        assert base.rgtp.pruned_context == "drop" and base.rgtp.selection.change_weight == 0
        detection = plus.family == "vitdet"
        assert (plus.rgtp.pruned_output == "fresh") == detection == (plus.rgtp.schedule.refresh == "staggered")
        assert (plus.rgtp.selection.policy == "rollout_boxes") == detection
        assert (plus.rgtp.pruned_context == "buffered") != detection
        assert (plus.rgtp.schedule.cut is not None) == detection  # cut detection: calibrated on ViTDet embeddings


def test_accounting_of_a_plus_preset_counts_the_staggered_step_and_notes_the_cuts() -> None:
    from rgtp.accounting import FULL_FRACTION_VID_VAL, count_preset
    from rgtp.presets import get_preset

    preset = get_preset("shapes_det_plus")
    acc = count_preset(preset)
    n = preset.model.num_tokens
    keep = preset.rgtp.selection.keep_ratio
    assert acc.kept == {"full": n, "rollout": round(keep * n) + staggered_count(n, 32)}
    assert "scene cuts" in acc.note and acc.full_fraction == pytest.approx(FULL_FRACTION_VID_VAL - 1 / 8)
