"""The RGTP per-frame loops on tiny models: equivalence, state isolation, schedules, buffers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_VITDET, vitdet_rgtp, vivit_rgtp
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime import Detections, make_runner, run_clip


def _frames(n: int, seed: int = 0, batch: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, 80, 80, generator=gen)
    # a slowly moving video: each frame shifts the previous one by one pixel and adds a little noise
    return [torch.roll(base, shifts=t, dims=-1) + 0.05 * torch.randn(base.shape, generator=gen) for t in range(n)]


def _assert_features_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("pool", "form", "fill"), [(2, "forward", "none"), (1, "backward", "previous"), (1, "forward", "match")]
)
def test_vitdet_keep_all_without_reset_equals_dense(tiny_vitdet: ViTDet, pool: int, form: str, fill: str) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp(keep_ratio=1.0, reset_every=None, pool=pool, form=form, fill=fill))
    state = runtime.new_state()
    for t, x in enumerate(_frames(4, batch=2)):
        result = runtime.step(x, state)
        assert result.kind is (FrameKind.FULL if t == 0 else FrameKind.ROLLOUT)
        assert result.num_kept == TINY_VITDET.num_tokens
        _assert_features_close(result.features, tiny_vitdet(x))
        torch.testing.assert_close(result.importance.sum(-1), torch.ones(2))


def test_vitdet_full_frames_equal_dense_and_pruned_frames_differ(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp(keep_ratio=0.3, reset_every=4))
    state = runtime.new_state()
    kinds = []
    for x in _frames(6):
        result = runtime.step(x, state)
        kinds.append((result.kind, result.num_kept))
        dense = tiny_vitdet(x)
        if result.kind is FrameKind.FULL:
            _assert_features_close(result.features, dense)
        else:
            assert not torch.allclose(result.features["p4"], dense["p4"], atol=1e-4)
            assert result.keep_idx is not None and result.keep_idx.shape == (1, 30)
            assert torch.all(result.keep_idx[:, 1:] > result.keep_idx[:, :-1])  # ascending, unique
    full, pruned = (FrameKind.FULL, 100), (FrameKind.ROLLOUT, 30)
    assert kinds == [full, pruned, pruned, pruned, full, pruned]


def test_vitdet_pruned_tokens_keep_their_buffered_output(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp(keep_ratio=0.3))
    state = runtime.new_state()
    frames = _frames(2)
    runtime.step(frames[0], state)
    before = state.outputs[3].clone()  # the last block's buffered output
    result = runtime.step(frames[1], state)
    pruned = torch.ones(100, dtype=torch.bool)
    pruned[result.keep_idx[0]] = False
    torch.testing.assert_close(state.outputs[3][0, pruned], before[0, pruned])  # copied from the previous frame
    assert not torch.allclose(state.outputs[3][0, ~pruned], before[0, ~pruned])


@pytest.mark.parametrize("fill", ["none", "previous"])
def test_vitdet_interleaved_streams_equal_separate_runs(tiny_vitdet: ViTDet, fill: str) -> None:
    pool = 2 if fill == "none" else 1
    runtime = make_runner(tiny_vitdet, vitdet_rgtp(pool=pool, fill=fill, form="backward" if pool == 1 else "forward"))
    video_a, video_b = _frames(5, seed=1), _frames(5, seed=2)

    def run(video: list[torch.Tensor]) -> list[torch.Tensor]:
        state = runtime.new_state()
        return [runtime.step(x, state).features["p3"] for x in video]

    separate_a, separate_b = run(video_a), run(video_b)
    state_a, state_b = runtime.new_state(), runtime.new_state()
    for t in range(5):
        torch.testing.assert_close(runtime.step(video_a[t], state_a).features["p3"], separate_a[t])
        torch.testing.assert_close(runtime.step(video_b[t], state_b).features["p3"], separate_b[t])


def test_vitdet_reset_makes_videos_independent(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp())
    video_a, video_b = _frames(3, seed=3), _frames(3, seed=4)
    fresh = runtime.new_state()
    expected = [runtime.step(x, fresh).features["p4"] for x in video_b]
    state = runtime.new_state()
    for x in video_a:
        runtime.step(x, state)
    state.reset()
    assert state.t == 0 and not state.qkv and not state.outputs and state.nbytes() == 0
    for x, want in zip(video_b, expected, strict=True):
        torch.testing.assert_close(runtime.step(x, state).features["p4"], want)


def test_vitdet_detections_define_the_anchors(tiny_vitdet: ViTDet) -> None:
    """Boxes steer the heatmap towards their region; an empty or sub-threshold set falls back to all tokens."""
    box = torch.tensor([[0.0, 0.0, 24.0, 24.0]])  # tokens 0..2 x 0..2 of the 10x10 grid

    def head_with(score: float):
        return lambda feats: [Detections(box, torch.tensor([score]), torch.tensor([0]))]

    results = {}
    for name, head in {"box": head_with(0.9), "low": head_with(0.05), "none": None}.items():
        runtime = make_runner(tiny_vitdet, vitdet_rgtp(pool=1, form="backward", fill="previous"), head=head)
        results[name] = runtime.step(_frames(1)[0], runtime.new_state()).importance
        assert torch.isfinite(results[name]).all()
    torch.testing.assert_close(results["low"], results["none"])
    assert not torch.allclose(results["box"], results["none"])


def test_vitdet_grid_reset_mode_keeps_the_pattern(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp(reset_every=2, reset_mode="grid"))
    state = runtime.new_state()
    kinds = [runtime.step(x, state) for x in _frames(3)]
    assert [r.kind for r in kinds] == [FrameKind.FULL, FrameKind.ROLLOUT, FrameKind.GRID]
    assert kinds[2].num_kept == 25  # 1in4 of 10x10


def test_vitdet_rejects_wrong_frame_size_and_bad_pool(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp())
    with pytest.raises(ValueError, match="80x80"):
        runtime.step(torch.randn(1, 3, 64, 80), runtime.new_state())
    pooled = make_runner(tiny_vitdet, vitdet_rgtp(pool=3))
    with pytest.raises(ValueError, match="pool 3"):
        pooled.step(_frames(1)[0], pooled.new_state())


def test_vitdet_state_moves_with_to(tiny_vitdet: ViTDet) -> None:
    runtime = make_runner(tiny_vitdet, vitdet_rgtp())
    state = runtime.new_state()
    runtime.step(_frames(1)[0], state)
    names = set(state.tensors())
    assert {"importance", "features", "outputs.3", "qkv.1", "attn_rows.1", "attn_rows.3"} <= names
    assert all(v.device.type == "meta" for v in state.to("meta").tensors().values())


def _clip(seed: int = 0, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 32, 32, generator=gen)


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_vivit_keep_all_without_reset_equals_dense(tiny_vivit: ViViT, form: str) -> None:
    runtime = make_runner(tiny_vivit, vivit_rgtp(keep_ratio=1.0, bg_ratio=0.0, reset_every=None, form=form))
    clip = _clip()
    torch.testing.assert_close(run_clip(runtime, clip).logits, tiny_vivit(clip), rtol=1e-4, atol=1e-5)


def test_vivit_kept_counts_and_kinds(tiny_vivit: ViViT) -> None:
    runtime = make_runner(tiny_vivit, vivit_rgtp(keep_ratio=0.5, bg_ratio=0.25, reset_every=2, pattern="1in2"))
    steps = run_clip(runtime, _clip()).steps
    assert [s.kind for s in steps] == [FrameKind.FULL, FrameKind.ROLLOUT, FrameKind.GRID, FrameKind.ROLLOUT]
    # N = 16: K_fg = 8, background: every 4th of the other 8 -> 2; grid 1in2 -> 8
    assert [s.num_kept for s in steps] == [16, 10, 8, 10]
    for s in steps:
        torch.testing.assert_close(s.importance.sum(-1), torch.ones(3))
        assert (s.importance >= 0).all()


def test_vivit_forward_and_backward_rollout_agree(tiny_vivit: ViViT) -> None:
    cfg = vivit_rgtp(keep_ratio=0.4, fg_ratio=0.5, bg_ratio=0.2, reset_every=3, pattern="1in4")
    a = run_clip(make_runner(tiny_vivit, cfg), _clip(1))
    b = make_runner(tiny_vivit, dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, form="backward")))
    b_res = run_clip(b, _clip(1))
    torch.testing.assert_close(a.logits, b_res.logits)
    for x, y in zip(a.steps, b_res.steps, strict=True):
        torch.testing.assert_close(x.importance, y.importance, rtol=1e-4, atol=1e-6)


def test_vivit_views_are_independent_streams(tiny_vivit: ViViT) -> None:
    runtime = make_runner(tiny_vivit, vivit_rgtp())
    clip = _clip(2, batch=3)
    together = run_clip(runtime, clip).logits
    alone = torch.cat([run_clip(runtime, clip[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_vivit_pruned_tokens_copy_their_match(tiny_vivit: ViViT) -> None:
    """A pruned token's heatmap value is the value of a kept token (its key match)."""
    steps = run_clip(make_runner(tiny_vivit, vivit_rgtp(keep_ratio=0.25, bg_ratio=0.0)), _clip()).steps
    step = steps[1]
    kept_values = step.importance.gather(1, step.keep_idx)  # (B, K)
    pruned = torch.ones_like(step.importance, dtype=torch.bool).scatter(1, step.keep_idx, False)
    for b in range(step.importance.shape[0]):
        values = step.importance[b, pruned[b]]
        assert all(torch.isclose(kept_values[b], v).any() for v in values)


def test_vivit_rejects_bad_clip(tiny_vivit: ViViT) -> None:
    with pytest.raises(ValueError, match="expected a clip"):
        run_clip(make_runner(tiny_vivit, vivit_rgtp()), torch.randn(1, 3, 6, 32, 32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_vitdet_runs_in_other_dtypes_with_detections(tiny_vitdet: ViTDet, dtype: torch.dtype) -> None:
    model = tiny_vitdet.to(dtype)

    def head(feats: dict[str, torch.Tensor]) -> list[Detections]:  # boxes on the CPU in float32, whatever the model
        return [Detections(torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([0.9]), torch.tensor([1]))]

    for pool, form in ((2, "forward"), (1, "backward")):
        runtime = make_runner(model, vitdet_rgtp(pool=pool, form=form, fill="previous"), head=head)
        state = runtime.new_state()
        for x in _frames(2):
            result = runtime.step(x.to(dtype), state)
        assert result.importance.dtype == dtype and torch.isfinite(result.importance.float()).all()


def _with_policy(cfg, **selection):
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, **selection))


@pytest.mark.parametrize("policy", ["uniform", "random"])
def test_vitdet_unguided_policies_keep_k_tokens_without_rollout(tiny_vitdet: ViTDet, policy: str) -> None:
    runtime = make_runner(tiny_vitdet, _with_policy(vitdet_rgtp(keep_ratio=0.3), policy=policy))
    state = runtime.new_state()
    kept = []
    for x in _frames(4, batch=2):
        result = runtime.step(x, state)
        assert result.importance is None and not state.attn_rows  # no rollout is computed
        assert result.kind is (FrameKind.FULL if result.keep_idx is None else FrameKind.PRUNED)
        if result.kind is FrameKind.PRUNED:
            assert result.keep_idx.shape == (2, 30)
            assert torch.all(result.keep_idx[:, 1:] > result.keep_idx[:, :-1])
            kept.append(result.keep_idx)
    assert not torch.equal(kept[0], kept[1])  # the subset changes from frame to frame
    if policy == "uniform":
        assert torch.equal(kept[0][0], kept[0][1])  # the same pattern for every stream
    again = make_runner(tiny_vitdet, runtime.cfg)
    state2 = again.new_state()
    redo = [again.step(x, state2).keep_idx for x in _frames(4, batch=2)][1:]
    assert all(torch.equal(a, b) for a, b in zip(kept, redo, strict=True))  # reproducible


def test_vitdet_box_policy_keeps_the_tokens_of_previous_boxes(tiny_vitdet: ViTDet) -> None:
    box = torch.tensor([[16.0, 16.0, 40.0, 32.0]])  # columns 2..4, rows 2..3 of the 10x10 grid (stride 8)
    head = lambda feats: [Detections(box, torch.tensor([0.9]), torch.tensor([0]))]  # noqa: E731
    for margin, expected in ((0, 6), (1, 20)):
        cfg = _with_policy(vitdet_rgtp(keep_ratio=0.3), policy="boxes", box_margin=margin)
        runtime = make_runner(tiny_vitdet, cfg, head=head)
        state = runtime.new_state()
        first = runtime.step(_frames(1)[0], state)
        assert (first.importance > 0).sum() == expected and not state.attn_rows
        second = runtime.step(_frames(2)[1], state)
        assert second.num_kept == expected
        rows, cols = second.keep_idx[0] // 10, second.keep_idx[0] % 10
        assert rows.min() == 2 - margin and rows.max() == 3 + margin and cols.min() == 2 - margin
        assert cols.max() == 4 + margin


@pytest.mark.parametrize("policy", ["uniform", "random"])
def test_vivit_unguided_policies(tiny_vivit: ViViT, policy: str) -> None:
    cfg = _with_policy(vivit_rgtp(keep_ratio=0.3), policy=policy)
    runtime = make_runner(tiny_vivit, cfg)
    clip = torch.randn(2, 3, tiny_vivit.cfg.num_frames, tiny_vivit.cfg.img_size, tiny_vivit.cfg.img_size)
    result = run_clip(runtime, clip)
    assert result.logits.shape == (2, tiny_vivit.cfg.num_classes)
    assert all(s.importance is None for s in result.steps)
    assert result.state_nbytes > 0
    with pytest.raises(ValueError, match="grid models"):
        make_runner(tiny_vivit, _with_policy(cfg, policy="boxes"))
