"""The ToMe baseline: bipartite matching and merging as pure functions, and the ViTDet / ViViT runtimes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import randomize_
from rgtp.config import ConfigError, ToMeConfig, from_dict
from rgtp.flops import MacCounter
from rgtp.models.layers import Attention
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import small_detector, small_vivit
from rgtp.pruning.merge import (
    bipartite_soft_matching,
    group_centroids,
    init_groups,
    merge_groups,
    merge_schedule,
    merge_tokens,
    unmerge_tokens,
)
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime import GridStep, make_runner, run_clip
from rgtp.runtime.tome import merged_attention

SCOPES = ("backbone", "rgtp")

# 10x10 tokens (patch 16), windows of 4 (padded to 12x12), global blocks 1 and 3, relative tables stored for 8x8.
DET = dataclasses.replace(
    small_detector(3),
    img_size=160,
    embed_dim=32,
    depth=4,
    num_heads=2,
    window_size=4,
    global_blocks=(1, 3),
    pos_embed_grid=8,
    rel_pos_grid=8,
    pyramid_dim=16,
    head=None,
)
# 6x6 tokens + CLS per step, 2 steps.
VIV = dataclasses.replace(
    small_vivit(5), img_size=48, num_frames=4, embed_dim=32, depth=3, temporal_depth=1, num_heads=2
)


@pytest.fixture(scope="module")
def det() -> ViTDet:
    torch.manual_seed(0)
    return randomize_(ViTDet(DET))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def viv() -> ViViT:
    torch.manual_seed(0)
    return randomize_(ViViT(VIV))  # type: ignore[return-value]


def _images(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, DET.img_size, DET.img_size, generator=torch.Generator().manual_seed(seed))


def _clip(batch: int = 1, seed: int = 0) -> torch.Tensor:
    shape = (batch, 3, VIV.num_frames, VIV.img_size, VIV.img_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- configuration and schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"r": 2, "keep_ratio": 0.5},
        {"r": -1},
        {"keep_ratio": 0.0},
        {"keep_ratio": 1.5},
        {"r": 4, "spread": "front"},
        {"r": 4, "spread": "sideways"},
        {"r": 4, "global_attn": "windowed"},
    ],
)
def test_config_rejects_invalid(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ToMeConfig(**kwargs)


def test_config_round_trip() -> None:
    cfg = from_dict(ToMeConfig, {"keep_ratio": 0.5, "spread": "front", "global_attn": "merged"})
    assert cfg == ToMeConfig(keep_ratio=0.5, spread="front", global_attn="merged")
    with pytest.raises(ConfigError):
        from_dict(ToMeConfig, {"r": 2, "ratio": 0.5})


def test_schedules() -> None:
    assert merge_schedule(100, 4, r=8) == [8, 8, 8, 8]
    assert merge_schedule(100, 4, r=40) == [40, 30, 15, 7]  # capped at half of what is left
    even = merge_schedule(100, 4, keep_ratio=0.3)
    assert even == [18, 18, 17, 17] and sum(even) == 70
    assert merge_schedule(100, 4, keep_ratio=0.3, spread="front") == [50, 20, 0, 0]
    assert sum(merge_schedule(100, 4, keep_ratio=0.07)) == 93  # later caps force earlier blocks to merge more
    assert merge_schedule(100, 4, keep_ratio=1.0) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="leave at least"):
        merge_schedule(100, 4, keep_ratio=0.01)


# --- pure functions ---------------------------------------------------------------------------------------------


def test_duplicates_merge_and_unmerge_losslessly() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, 16, generator=gen)
    x = base.repeat_interleave(2, dim=1)  # (2, 10, 16): tokens 2k and 2k + 1 are equal
    assign, m = bipartite_soft_matching(x, 5)
    assert m == 5
    assert torch.equal(assign, torch.arange(10).div(2, rounding_mode="floor").expand(2, 10))
    groups = merge_groups(init_groups(2, 10, "cpu", x.dtype), assign, m)
    merged = merge_tokens(x, assign, m, init_groups(2, 10, "cpu", x.dtype).sizes)
    assert torch.equal(merged, base)
    assert torch.equal(unmerge_tokens(merged, groups.source), x)
    assert torch.equal(groups.sizes, torch.full((2, 5), 2.0))


def test_sizes_and_source_map_over_several_steps() -> None:
    gen = torch.Generator().manual_seed(2)
    b, n, c = 3, 50, 8
    x = torch.randn(b, n, c, generator=gen)
    groups = init_groups(b, n, "cpu", x.dtype)
    for r in (10, 7, 12, 0, 5):
        assign, m = bipartite_soft_matching(x, r)
        x = merge_tokens(x, assign, m, groups.sizes)
        groups = merge_groups(groups, assign, m)
        assert x.shape == (b, m, c) and groups.sizes.shape == (b, m)
        torch.testing.assert_close(groups.sizes.sum(-1), torch.full((b,), float(n)))
        for i in range(b):
            counts = torch.bincount(groups.source[i], minlength=m)  # each original token lies in exactly one group
            assert counts.shape == (m,) and torch.all(counts >= 1)
            assert torch.equal(counts.float(), groups.sizes[i])
    assert x.shape[1] == n - 34


def test_size_weighted_mean_and_full_grid_average() -> None:
    x = torch.tensor([[[1.0], [4.0], [10.0]]])  # (1, 3, 1)
    assign = torch.tensor([[0, 0, 1]])
    merged = merge_tokens(x, assign, 2, torch.tensor([[3.0, 1.0, 2.0]]))
    torch.testing.assert_close(merged, torch.tensor([[[7.0 / 4.0], [10.0]]]))
    torch.testing.assert_close(merge_tokens(x, assign, 2), torch.tensor([[[2.5], [10.0]]]))  # plain mean


def test_protected_first_token_is_never_merged() -> None:
    metric = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(3))
    metric[:, 1] = metric[:, 0]  # token 0's best match is perfect
    free, _ = bipartite_soft_matching(metric, 1)
    assert torch.all(free[:, 0] == free[:, 1])  # unprotected: 0 merges into 1
    kept, m = bipartite_soft_matching(metric, 10, protect=1)  # more than allowed: capped at 4
    assert m == 5
    assert torch.all(kept[:, 0] == 0) and torch.all(kept[:, 1:] != 0)


def test_protected_prefix_tokens_neither_merge_nor_receive() -> None:
    """A class token and registers (protect=3): tokens 0 (set A) and 1 (set B) and 2 (A) keep their own slots."""
    metric = torch.randn(2, 13, 4, generator=torch.Generator().manual_seed(4))
    metric[:, 3] = metric[:, 2]  # token 2's best match is perfect
    metric[:, 4] = metric[:, 1]  # and token 4 matches token 1 perfectly
    assign, m = bipartite_soft_matching(metric, 10, protect=3)  # capped at (13 - 3) // 2 = 5
    assert m == 8
    assert torch.equal(assign[:, :3], torch.tensor([[0, 1, 2]] * 2))
    assert torch.all(assign[:, 3:] >= 3)  # no other token goes into a protected one


def test_ties_are_broken_deterministically() -> None:
    metric = torch.ones(1, 8, 3)  # every pair equally similar
    assign, m = bipartite_soft_matching(metric, 2)
    # the first two A tokens (0, 2) merge into the first B token (1); survivors keep their order: 1, 3, 4, 5, 6, 7
    assert m == 6
    assert assign.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5]]


def test_centroids() -> None:
    source = torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2, 1]])  # 3x3 grid
    groups = init_groups(1, 9, "cpu", torch.float32)._replace(source=source, sizes=torch.tensor([[3.0, 3.0, 3.0]]))
    cent = group_centroids(groups, (3, 3))
    # group 0: (0,0), (0,1), (1,1) -> (0.33, 0.67) -> (0, 1); group 1: (0,2), (1,0), (2,2) -> (1, 1.33) -> (1, 1)
    # group 2: (1,2), (2,0), (2,1) -> (1.67, 1) -> (2, 1)
    assert cent.tolist() == [[[0, 1], [1, 1], [2, 1]]]


def test_proportional_attention_equals_attention_over_duplicates() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2)
    qkv = torch.randn(1, 6, 48)
    qkv[:, 4] = qkv[:, 3]  # tokens 3 and 4 are duplicates
    full = attn.attend(qkv, None).out  # (1, 6, C)
    keep = torch.tensor([0, 1, 2, 3, 5])
    merged = merged_attention(attn.spec, qkv[:, keep], torch.tensor([[1.0, 1.0, 1.0, 2.0, 1.0]]))
    torch.testing.assert_close(merged, full[:, keep], rtol=1e-5, atol=1e-6)
    plain = merged_attention(attn.spec, qkv[:, keep], None)
    assert not torch.allclose(plain, full[:, keep], atol=1e-4)


# --- ViTDet -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unmerge", "merged"])
def test_vitdet_r0_equals_dense(det: ViTDet, mode: str) -> None:
    x = _images()
    tome = make_runner(det, ToMeConfig(r=0, global_attn=mode))
    result = tome.step(x, tome.new_state())
    dense = det(x)
    assert result.features.keys() == dense.keys()
    assert all(torch.equal(result.features[k], dense[k]) for k in dense)


def test_vitdet_step_interface(det: ViTDet) -> None:
    calls = []

    def head(features: dict[str, torch.Tensor]) -> list:
        calls.append(features)
        return ["detections"]

    tome = make_runner(det, ToMeConfig(keep_ratio=0.5), head=head)
    state = tome.new_state()
    assert state.nbytes() == 0 and state.tensors() == {}
    for t in range(2):
        result = tome.step(_images(seed=t), state)
        assert isinstance(result, GridStep)
        assert result.t == t and result.kind is FrameKind.MERGED
        assert result.num_kept == 50 == DET.num_tokens - sum(tome.schedule(DET.num_tokens))
        assert result.keep_idx is None and result.scores is None and result.importance is None
        assert result.detections == ["detections"] and calls[-1] is result.features
        assert result.features["p4"].shape == (1, 16, 10, 10)
        assert torch.isfinite(result.features["p2"]).all()
    assert state.t == 2 and state.nbytes() == 0
    state.reset()
    assert state.t == 0


@pytest.mark.parametrize("mode", ["unmerge", "merged"])
def test_vitdet_macs_decrease_with_r(det: ViTDet, mode: str) -> None:
    x = _images()
    macs = []
    for r in (0, 4, 12, 24):
        tome = make_runner(det, ToMeConfig(r=r, global_attn=mode))
        with MacCounter() as counter:
            tome.step(x, tome.new_state())
        macs.append(counter.macs(SCOPES))
        assert (counter.by_scope().get("rgtp", 0) > 0) == (r > 0)  # the matching is counted as overhead
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


def test_vitdet_merged_global_attention_is_cheaper(det: ViTDet) -> None:
    x = _images()
    macs = {}
    for mode in ("unmerge", "merged"):
        tome = make_runner(det, ToMeConfig(r=12, global_attn=mode))
        with MacCounter() as counter:
            tome.step(x, tome.new_state())
        macs[mode] = counter.macs(SCOPES)
    assert macs["merged"] < macs["unmerge"]


@pytest.mark.parametrize("mode", ["unmerge", "merged"])
def test_vitdet_batch_items_are_independent(det: ViTDet, mode: str) -> None:
    tome = make_runner(det, ToMeConfig(r=12, global_attn=mode))
    x = torch.cat([_images(seed=5), _images(seed=6)])
    batched = tome.step(x, tome.new_state()).features["p4"]
    for i in range(2):
        alone = tome.step(x[i : i + 1], tome.new_state()).features["p4"]
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_vitdet_constant_image(det: ViTDet) -> None:
    # every patch embedding is equal, so tokens differ by position only (many near-ties); front-loaded merging
    tome = make_runner(det, ToMeConfig(keep_ratio=0.25, spread="front"))
    out = tome.step(torch.zeros(1, 3, DET.img_size, DET.img_size), tome.new_state())
    assert out.num_kept == 25 and all(torch.isfinite(f).all() for f in out.features.values())


# --- ViViT ------------------------------------------------------------------------------------------------------


def test_vivit_r0_equals_dense(viv: ViViT) -> None:
    clip = _clip(batch=2)
    tome = make_runner(viv, ToMeConfig(r=0))
    out = run_clip(tome, clip)
    assert torch.equal(out.logits, viv(clip))
    assert torch.equal(out.pooled, viv.spatial_features(clip))
    assert out.state_nbytes == 0 and all(s.kind is FrameKind.FULL for s in out.steps)


def test_vivit_cls_is_never_merged(viv: ViViT) -> None:
    tome = make_runner(viv, ToMeConfig(r=100))  # as much as the cap allows: 36 -> 18 -> 9 -> 5 patch tokens
    plan = tome.schedule(VIV.num_tokens)
    assert plan == [18, 9, 4]
    embeds = viv.embed(_clip(batch=2))[:, 0]  # (2, N, C)
    out = tome.step(embeds, tome.new_state())
    assert out.num_kept == 5 and out.kind is FrameKind.MERGED and out.pooled.shape == (2, VIV.embed_dim)
    _, groups = tome._encode(tome.model.tokens(embeds, VIV.grid), plan)
    assert groups is not None
    assert torch.all(groups.source[:, 0] == 0) and torch.all(groups.source[:, 1:] != 0)
    assert torch.all(groups.sizes[:, 0] == 1)
    torch.testing.assert_close(groups.sizes.sum(-1), torch.full((2,), 1.0 + VIV.num_tokens))


def test_vivit_macs_decrease_with_r(viv: ViViT) -> None:
    clip = _clip()
    macs = []
    for r in (0, 3, 6, 12):
        tome = make_runner(viv, ToMeConfig(r=r))
        with MacCounter() as counter:
            run_clip(tome, clip)
        macs.append(counter.macs(SCOPES))
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


@pytest.mark.parametrize("prop_attn", [True, False])
def test_vivit_batch_items_are_independent(viv: ViViT, prop_attn: bool) -> None:
    tome = make_runner(viv, ToMeConfig(keep_ratio=0.4, prop_attn=prop_attn))
    clip = torch.cat([_clip(seed=1), _clip(seed=2)])
    out = run_clip(tome, clip)
    batched = out.pooled  # (2, steps, C); the random classifier's logits barely depend on them
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)
    for i in range(2):
        alone = run_clip(tome, clip[i : i + 1]).pooled
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched, viv.spatial_features(clip), atol=1e-4)  # merging changes the result
    assert out.logits.shape == (2, VIV.num_classes)
