"""The Eventful Transformers baseline (token-wise gates, method §9) on tiny versions of the benchmark's models."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from conftest import randomize_
from rgtp.config import ConfigError, EventfulConfig, from_dict, to_dict
from rgtp.flops import MacCounter
from rgtp.models.attention import split_heads
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import small_detector, small_vivit
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime import EventfulState, make_runner, run_clip

MODES = ("dense", "qk", "qk_av")

_DET = small_detector(3)
# 8x8 tokens; windows of 3 (padded to 9x9); global blocks 1 and 3; relative tables stored for 6x6 (resized).
DET = dataclasses.replace(
    _DET,
    img_size=128,
    embed_dim=32,
    num_heads=2,
    depth=4,
    window_size=3,
    global_blocks=(1, 3),
    rel_pos_grid=6,
    pos_embed_grid=6,
    pyramid_dim=16,
    head=dataclasses.replace(_DET.head, box_conv_dim=8, box_fc_dim=16, pre_nms_topk=50, post_nms_topk=20),
)
# 4x4 tokens + class token, 4 steps.
VIVIT = dataclasses.replace(
    small_vivit(5), img_size=32, num_frames=8, embed_dim=32, depth=2, temporal_depth=1, num_heads=2
)
N_DET, N_VIVIT = DET.num_tokens, VIVIT.num_tokens


@pytest.fixture(scope="module")
def det() -> ViTDet:
    torch.manual_seed(0)
    return randomize_(ViTDet(DET))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def vivit() -> ViViT:
    torch.manual_seed(0)
    return randomize_(ViViT(VIVIT))  # type: ignore[return-value]


def _frames(n: int, seed: int = 0, batch: int = 2, static: bool = False) -> list[torch.Tensor]:
    """A slowly moving video (one-pixel shifts plus noise), or a static one."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, DET.img_size, DET.img_size, generator=gen)
    if static:
        return [base.clone() for _ in range(n)]
    return [torch.roll(base, shifts=t, dims=-1) + 0.05 * torch.randn(base.shape, generator=gen) for t in range(n)]


def _clip(seed: int = 0, batch: int = 2, static: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if static:
        frame = torch.randn(batch, 3, 1, VIVIT.img_size, VIVIT.img_size, generator=gen)
        return frame.expand(-1, -1, VIVIT.num_frames, -1, -1).contiguous()  # (B, 3, T, H, W), all frames equal
    return torch.randn(batch, 3, VIVIT.num_frames, VIVIT.img_size, VIVIT.img_size, generator=gen)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def _vivit_close(runtime: Any, vivit: ViViT, clip: torch.Tensor) -> None:
    """The runtime's spatial class tokens and logits equal the dense model's."""
    out = run_clip(runtime, clip)
    torch.testing.assert_close(out.pooled, vivit.spatial_features(clip), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, vivit(clip), rtol=1e-4, atol=1e-5)


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=1e-4) for k in a)


# ---------------------------------------------------------------------------------------------------------------------
# Equivalences


@pytest.mark.parametrize("mode", MODES)
def test_vitdet_k_equal_n_is_the_dense_model(det: ViTDet, mode: str) -> None:
    runtime = make_runner(det, EventfulConfig(keep_ratio=1.0, global_attention=mode), head=det.detect)
    state = runtime.new_state()
    for t, x in enumerate(_frames(4)):
        result = runtime.step(x, state)
        assert result.kind is (FrameKind.FULL if t == 0 else FrameKind.GATED)
        assert result.num_kept == N_DET and result.keep_idx is None and result.importance is None
        _close(result.features, det(x))
        dense = det.detect(det(x))
        assert result.detections is not None and len(result.detections) == len(dense) == 2
        assert sum(len(d.scores) for d in dense) > 0
        for got, want in zip(result.detections, dense, strict=True):
            torch.testing.assert_close(got.boxes, want.boxes)
            torch.testing.assert_close(got.scores, want.scores)
            assert torch.equal(got.labels, want.labels)


@pytest.mark.parametrize("mode", MODES)
def test_vivit_k_equal_n_is_the_dense_model(vivit: ViViT, mode: str) -> None:
    runtime = make_runner(vivit, EventfulConfig(k=N_VIVIT, global_attention=mode))
    clip = _clip()
    _vivit_close(runtime, vivit, clip)


@pytest.mark.parametrize("mode", MODES)
def test_static_video_is_exact_with_few_tokens(det: ViTDet, vivit: ViViT, mode: str) -> None:
    """Zero errors: the rows no gate recomputes are stale but equal to what the dense model computes."""
    runtime = make_runner(det, EventfulConfig(k=5, global_attention=mode))
    state = runtime.new_state()
    for x in _frames(4, static=True):
        result = runtime.step(x, state)
        _close(result.features, det(x))
    clip = _clip(static=True)
    vivit_runtime = make_runner(vivit, EventfulConfig(k=3, global_attention=mode))
    _vivit_close(vivit_runtime, vivit, clip)


@pytest.mark.parametrize("mode", MODES)
def test_few_tokens_on_a_moving_video_approximate(det: ViTDet, vivit: ViViT, mode: str) -> None:
    runtime = make_runner(det, EventfulConfig(k=16, global_attention=mode))
    state = runtime.new_state()
    frames = _frames(3)
    _close(runtime.step(frames[0], state).features, det(frames[0]))
    for x in frames[1:]:
        result = runtime.step(x, state)
        assert result.kind is FrameKind.GATED and result.num_kept == 16
        assert result.keep_idx is not None and result.keep_idx.shape == (2, 16)
        assert torch.all(result.keep_idx[:, 1:] > result.keep_idx[:, :-1])  # ascending, unique
        assert result.scores is not None and result.scores.shape == (2, N_DET)
        assert _differs(result.features, det(x))
    clip = _clip()
    vivit_runtime = make_runner(vivit, EventfulConfig(k=4, global_attention=mode))
    out = run_clip(vivit_runtime, clip)
    assert out.logits.shape == (2, VIVIT.num_classes)
    assert [s.kind for s in out.steps] == [FrameKind.FULL] + [FrameKind.GATED] * (VIVIT.num_steps - 1)
    assert out.steps[1].num_kept == 4 and out.steps[1].keep_idx.shape == (2, 4)  # patch tokens (the class token too)
    assert int(out.steps[1].keep_idx.max()) < N_VIVIT and out.steps[1].scores.shape == (2, N_VIVIT)
    feats, dense = out.pooled, vivit.spatial_features(clip)  # (B, steps, C)
    torch.testing.assert_close(feats[:, 0], dense[:, 0])  # the first step is dense
    assert not torch.allclose(feats[:, 1:], dense[:, 1:], atol=1e-4)


def test_incremental_qk_equals_dense_attention_on_the_accumulated_qkv(det: ViTDet, vivit: ViViT) -> None:
    """Updating the rows and columns of QKᵀ of the updated tokens is exact (relative positions included)."""
    outputs = {}
    for mode in ("dense", "qk"):
        runtime = make_runner(det, EventfulConfig(k=12, global_attention=mode))
        state = runtime.new_state()
        outputs[mode] = [runtime.step(x, state).features for x in _frames(4)]
    for a, b in zip(outputs["dense"], outputs["qk"], strict=True):
        _close(a, b)
    clip = _clip()
    dense = run_clip(make_runner(vivit, EventfulConfig(k=5, global_attention="dense")), clip).pooled
    qk = run_clip(make_runner(vivit, EventfulConfig(k=5, global_attention="qk")), clip).pooled
    torch.testing.assert_close(qk, dense)


def test_incremental_av_keeps_its_product_of_references(det: ViTDet) -> None:
    """qk_av: the A·V buffer always equals A_ref · V, with V the accumulated values."""
    runtime = make_runner(det, EventfulConfig(k=10, global_attention="qk_av"))
    state = runtime.new_state()
    for x in _frames(3):
        runtime.step(x, state)
        for i in DET.global_blocks:
            _, _, v = split_heads(state.accumulators[f"{i}.qkv"], DET.num_heads)  # (B, h, N, d)
            want = state.attention[f"{i}.attn_ref"] @ v
            torch.testing.assert_close(state.attention[f"{i}.av"], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Gates, state, schedule


def test_references_update_only_on_selected_rows(det: ViTDet) -> None:
    runtime = make_runner(det, EventfulConfig(k=10))
    state = runtime.new_state()
    frames = _frames(2)
    runtime.step(frames[0], state)
    before = state.references["0.qkv"].clone()
    accum = state.accumulators["0.qkv"].clone()
    result = runtime.step(frames[1], state)
    blk = det.net.blocks[0]
    with torch.no_grad():
        current = blk.norm1(det.net.embed(frames[1]) + det.net.position())  # block 0's qkv gate input
    selected = torch.zeros(2, N_DET, dtype=torch.bool)
    selected.scatter_(1, result.keep_idx, True)
    after = state.references["0.qkv"]
    torch.testing.assert_close(after[selected], current[selected])
    torch.testing.assert_close(after[~selected], before[~selected])
    assert not torch.allclose(current[~selected], before[~selected])
    torch.testing.assert_close(state.accumulators["0.qkv"][~selected], accum[~selected])  # stale outputs
    # the selected rows are the ones that changed most
    err = (current - before).norm(dim=-1)
    assert torch.all(err[selected].view(2, -1).min(-1).values >= err[~selected].view(2, -1).max(-1).values)


def test_reset_restores_the_first_frame(det: ViTDet) -> None:
    runtime = make_runner(det, EventfulConfig(k=10, global_attention="qk_av"))
    video_a, video_b = _frames(3, seed=1), _frames(3, seed=2)
    fresh = runtime.new_state()
    expected = [runtime.step(x, fresh).features for x in video_b]
    state = runtime.new_state()
    for x in video_a:
        runtime.step(x, state)
    state.reset()
    assert state.t == 0 and state.nbytes() == 0 and not state.tensors()
    for t, (x, want) in enumerate(zip(video_b, expected, strict=True)):
        result = runtime.step(x, state)
        assert result.kind is (FrameKind.FULL if t == 0 else FrameKind.GATED)
        _close(result.features, want)


def test_gated_step_without_history_raises(det: ViTDet) -> None:
    runtime = make_runner(det, EventfulConfig(k=10))
    with pytest.raises(RuntimeError, match="reset"):
        runtime.step(_frames(1)[0], EventfulState(t=1))


def test_refresh_every_runs_dense_steps(det: ViTDet) -> None:
    runtime = make_runner(det, EventfulConfig(k=8, refresh_every=2))
    state = runtime.new_state()
    kinds = []
    for x in _frames(5):
        result = runtime.step(x, state)
        kinds.append(result.kind)
        if result.kind is FrameKind.FULL:
            _close(result.features, det(x))
            assert result.num_kept == N_DET
    assert kinds == [FrameKind.FULL, FrameKind.GATED, FrameKind.FULL, FrameKind.GATED, FrameKind.FULL]


@pytest.mark.parametrize("mode", MODES)
def test_state_memory(det: ViTDet, vivit: ViViT, mode: str) -> None:
    runtime = make_runner(det, EventfulConfig(k=8, global_attention=mode))
    state = runtime.new_state()
    assert state.nbytes() == 0
    for x in _frames(2):
        runtime.step(x, state)
    tensors = state.tensors()
    assert state.nbytes() > 0 and state.nbytes() == sum(v.numel() * v.element_size() for v in tensors.values())
    c, d = DET.embed_dim, DET.depth
    # three gate references and the proj and mlp accumulators of (B, N, C), the qkv accumulator of (B, N, 3C)
    per_block = 2 * N_DET * (3 * c + c + c + 3 * c)
    attention = {"dense": 0, "qk": 1, "qk_av": 2}[mode] * 2 * 2 * N_DET * N_DET  # (B, h, N, N) buffers
    if mode != "dense":
        attention += 2 * 2 * N_DET * 16 + (2 * N_DET * c if mode == "qk_av" else 0)  # rel_h, rel_w (8 + 8); A·V
        attention *= len(DET.global_blocks)
    assert state.nbytes() == 4 * (d * per_block + attention)
    assert state.to("cpu") is state and state.nbytes() == sum(v.nbytes for v in tensors.values())

    vivit_runtime = make_runner(vivit, EventfulConfig(k=4, global_attention=mode))
    assert vivit_runtime.new_state().nbytes() == 0
    nbytes = run_clip(vivit_runtime, _clip()).state_nbytes
    n, c, h = N_VIVIT + 1, VIVIT.embed_dim, VIVIT.num_heads  # every spatial block is global
    per_block = 2 * n * 8 * c + {"dense": 0, "qk": 1, "qk_av": 2}[mode] * 2 * h * n * n
    per_block += 2 * n * c if mode == "qk_av" else 0
    assert nbytes == 4 * VIVIT.depth * per_block


# ---------------------------------------------------------------------------------------------------------------------
# Compute


def _step_macs(runtime: Any, frames: list[torch.Tensor]) -> list[int]:
    """MACs (backbone + method overhead) of each step of one stream."""
    state = runtime.new_state()
    counts = []
    for x in frames:
        with MacCounter() as counter:
            runtime.step(x, state)
        counts.append(counter.macs(("backbone", "rgtp")))
    return counts


@pytest.mark.parametrize("mode", MODES)
def test_vitdet_macs_fall_linearly_with_k(det: ViTDet, mode: str) -> None:
    frames = _frames(2, batch=1)
    with MacCounter() as counter:
        det(frames[0])
    dense = counter.macs(("backbone", "rgtp"))
    gated = {}
    for k in (8, 16, 24, 32):
        first, second = _step_macs(make_runner(det, EventfulConfig(k=k, global_attention=mode)), frames)
        assert first == dense  # the first step is the dense model, nothing more
        gated[k] = second
    assert gated[8] < gated[16] < gated[24] < gated[32]
    assert gated[32] - gated[24] == gated[24] - gated[16] == gated[16] - gated[8]  # affine in k
    assert gated[16] < 0.6 * dense


def test_vivit_macs_fall_linearly_with_k(vivit: ViViT) -> None:
    tokens = vivit.embed(_clip(batch=1))  # (1, steps, N, C)
    frames = [tokens[:, t] for t in range(2)]
    gated = {k: _step_macs(make_runner(vivit, EventfulConfig(k=k)), frames)[1] for k in (2, 4, 6, 8)}
    assert gated[2] < gated[4] < gated[6] < gated[8]
    assert gated[8] - gated[6] == gated[6] - gated[4] == gated[4] - gated[2]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"k": 4, "keep_ratio": 0.5},
        {"k": 0},
        {"keep_ratio": 0.0},
        {"keep_ratio": 1.5},
        {"k": 4, "refresh_every": 0},
        {"k": 4, "global_attention": "sparse"},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EventfulConfig(**kwargs)


def test_config_token_counts_and_round_trip(det: ViTDet, vivit: ViViT) -> None:
    assert EventfulConfig(keep_ratio=0.25).tokens(256) == 64
    assert EventfulConfig(k=32).tokens(256) == 32
    assert EventfulConfig(keep_ratio=0.5).tokens(N_VIVIT) == N_VIVIT // 2
    too_many = make_runner(det, EventfulConfig(k=N_DET + 1))
    with pytest.raises(ConfigError):
        too_many.step(_frames(1)[0], too_many.new_state())
    with pytest.raises(ConfigError):
        EventfulConfig(keep_ratio=0.001).tokens(256)
    cfg = EventfulConfig(keep_ratio=0.3, refresh_every=8, global_attention="qk")
    assert from_dict(EventfulConfig, to_dict(cfg)) == cfg
