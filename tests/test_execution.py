"""The execution settings (the GPU path): fused attention, autocast with a float32 rollout, compiled bodies, no host
synchronisation inside a pruned step, out-of-place buffer updates. None of them may change what a step keeps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_VITDET, randomize_, vitdet_rgtp, vivit_rgtp
from rgtp.adapters import adapter_for
from rgtp.config import ConfigError, EventfulConfig, ExecutionConfig
from rgtp.models.attention import AttentionSpec, attend
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.runtime.common import refresh
from rgtp.runtime.driver import run_clip
from rgtp.runtime.methods import make_runner
from rgtp.runtime.selectors import ForcedSelector
from rgtp.runtime.streams import MultiStream

FUSED = ExecutionConfig(attention="fused")
GPU_PATH = ExecutionConfig(attention="fused", precision="bf16", compile="graphs")


def frames(n: int, size: int = 80, seed: int = 0) -> list[torch.Tensor]:
    """A panning noise video: (1, 3, size, size) per frame."""
    base = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return [torch.roll(base, (t, 2 * t), (2, 3)) for t in range(n)]


def run(runner, xs):
    state = runner.new_state()
    return [runner.step(x, state) for x in xs], state


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / a.float().abs().max())


def test_config_checks() -> None:
    assert ExecutionConfig().exact and not FUSED.exact
    with pytest.raises(ConfigError, match="precision"):
        ExecutionConfig(precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no execution settings"):
        make_runner(randomize_(ViTDet(TINY_VITDET)), EventfulConfig(keep_ratio=0.3), execution=FUSED)


@pytest.mark.parametrize("window", [0, 4])
def test_fused_attention_matches_explicit(window: int) -> None:
    """scaled_dot_product_attention with the relative positions as a bias equals the explicit product (global
    blocks with a query subset, windowed blocks with padding and resized tables)."""
    g = torch.Generator().manual_seed(0)
    d, heads, grid = 8, 2, (6, 5)
    spec = AttentionSpec(
        heads, d**-0.5, window, torch.randn(15, d, generator=g), torch.randn(15, d, generator=g), "table2d"
    )
    qkv = torch.randn(2, 30, 3 * heads * d, generator=g)
    idx = None if window else torch.sort(torch.randperm(30, generator=g)[:11])[0].expand(2, -1)
    explicit = attend(spec, qkv, grid, query_idx=idx).out
    fused = attend(spec, qkv, grid, query_idx=idx, fused=True).out
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    # probabilities always come from the explicit product
    assert attend(spec, qkv, grid, query_idx=idx, need_probs=not window, fused=True).out.shape == explicit.shape


def test_fused_runners_keep_the_same_tokens(tiny_vitdet: ViTDet, tiny_vivit: ViViT) -> None:
    xs = frames(6)
    for method in (vitdet_rgtp(fill="previous"), None):
        ref, _ = run(make_runner(tiny_vitdet, method), xs)
        out, _ = run(make_runner(tiny_vitdet, method, execution=FUSED), xs)
        for a, b in zip(ref, out, strict=True):
            assert a.kind == b.kind and (a.keep_idx is None or torch.equal(a.keep_idx, b.keep_idx))
            for k in a.features:
                torch.testing.assert_close(b.features[k], a.features[k], atol=1e-4, rtol=1e-4)
    clip = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    ref_clip = run_clip(make_runner(tiny_vivit, vivit_rgtp()), clip)
    out_clip = run_clip(make_runner(tiny_vivit, vivit_rgtp(), execution=FUSED), clip)
    torch.testing.assert_close(out_clip.logits, ref_clip.logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(ref_clip.steps, out_clip.steps, strict=True):
        assert a.keep_idx is None or torch.equal(a.keep_idx, b.keep_idx)


def test_autocast_keeps_the_rollout_in_float32(tiny_vitdet: ViTDet, tiny_vivit: ViViT) -> None:
    """Under bf16 the blocks run in bf16; the attention rows, the heatmap and the tracking features stay float32,
    and with the same kept sets the outputs agree with fp32 within bf16 tolerance."""
    xs = frames(4)
    ref, _ = run(make_runner(tiny_vitdet, vitdet_rgtp(fill="previous")), xs)
    kept = iter([s.keep_idx for s in ref if s.keep_idx is not None])
    forced = ForcedSelector(lambda t, embeds, grid: next(kept))
    cfg = vitdet_rgtp(fill="previous")
    out, state = run(make_runner(tiny_vitdet, cfg, selector=forced, execution=ExecutionConfig(precision="bf16")), xs)
    assert out[-1].features["p2"].dtype == torch.bfloat16
    _, state = run(make_runner(tiny_vitdet, cfg, execution=ExecutionConfig(precision="bf16")), xs)
    assert state.importance.dtype == state.features.dtype == torch.float32
    assert state.qkv[1].dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in state.attn_rows.values())
    for a, b in zip(ref, out, strict=True):
        assert rel_err(a.features["p3"], b.features["p3"]) < 0.05
    clip = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    ref_clip = run_clip(make_runner(tiny_vivit, vivit_rgtp()), clip)
    bf16_clip = run_clip(make_runner(tiny_vivit, vivit_rgtp(), execution=ExecutionConfig(precision="bf16")), clip)
    assert all(s.importance.dtype == torch.float32 for s in bf16_clip.steps)
    assert rel_err(ref_clip.logits, bf16_clip.logits) < 0.05


def test_out_of_place_buffers_equal_in_place() -> None:
    g = torch.Generator().manual_seed(0)
    buf, rows = torch.randn(2, 9, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    keep = torch.tensor([[0, 4, 8], [1, 2, 3]])
    copy = refresh(buf, keep, rows, inplace=False)
    assert not torch.equal(copy, buf)
    torch.testing.assert_close(refresh(buf, keep, rows), copy, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="full step"):
        refresh(None, keep, rows)


class _HostSyncs(TorchDispatchMode):
    """Records the operators that read a tensor's value on the host (a synchronisation on a GPU)."""

    NAMES = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in self.NAMES:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", ["grid", "cls"])
def test_pruned_step_has_no_host_synchronisation(family: str, tiny_vitdet: ViTDet, tiny_vivit: ViViT) -> None:
    """A pruned step of the paper's method (warp, selection, the blocks, buffers and the rollout) never reads a
    tensor value on the host: no .item(), no nonzero(), no branch on data. (A detection head's NMS does; data-
    triggered resets, RGTP+'s schedule, read one scalar per step.)"""
    if family == "grid":
        runner, x0, x1 = make_runner(tiny_vitdet, vitdet_rgtp(fill="previous")), *frames(2)
    else:
        view = adapter_for(tiny_vivit)
        runner = make_runner(view, vivit_rgtp(reset_every=None))
        tokens = view.embed_clip(torch.randn(1, 3, 8, 32, 32))  # (1, steps, N, C)
        x0, x1 = tokens[:, 0], tokens[:, 1]
    state = runner.new_state()
    runner.step(x0, state)
    with _HostSyncs() as syncs:
        out = runner.step(x1, state)
    assert out.keep_idx is not None and syncs.seen == []


def test_compiled_gpu_path_equals_eager_on_cpu() -> None:
    """The GPU path (fused attention, bf16, graphs: plain torch.compile and out-of-place buffers on a CPU) keeps the
    same tokens as eager bf16 and agrees with eager fp32 within bf16 tolerance."""
    torch.manual_seed(0)
    model = randomize_(ViTDet(dataclasses.replace(TINY_VITDET, depth=2, global_blocks=(1,), head=None)))
    xs = frames(3)
    cfg = vitdet_rgtp(fill="previous")
    eager, _ = run(make_runner(model, cfg, execution=dataclasses.replace(GPU_PATH, compile="none")), xs)
    ref, _ = run(make_runner(model, cfg), xs)
    compiled, state = run(make_runner(model, cfg, execution=GPU_PATH), xs)
    assert [s.kind for s in compiled] == [s.kind for s in ref]
    for a, b, r in zip(eager, compiled, ref, strict=True):
        assert (a.keep_idx is None) == (b.keep_idx is None)
        assert a.keep_idx is None or torch.equal(a.keep_idx, b.keep_idx)
        assert rel_err(r.features["p4"], b.features["p4"]) < 0.05 and rel_err(a.features["p4"], b.features["p4"]) < 0.05
    assert state.importance.dtype == torch.float32
    # fp32, compiled with in-place buffer updates: the exact path's kept sets and outputs up to rounding
    inplace, _ = run(make_runner(model, cfg, execution=ExecutionConfig(compile="compile")), xs)
    for r, b in zip(ref, inplace, strict=True):
        assert (r.keep_idx is None) == (b.keep_idx is None)
        assert r.keep_idx is None or torch.equal(r.keep_idx, b.keep_idx)
        for k in r.features:
            torch.testing.assert_close(b.features[k], r.features[k], atol=1e-4, rtol=1e-4)


def _alone(runner, xs):
    """Outputs of one stream stepped on its own (batch 1)."""
    return run(runner, xs)[0]


def _close(a, b) -> None:
    assert a.kind == b.kind and a.num_kept == b.num_kept
    assert (a.keep_idx is None) == (b.keep_idx is None)
    if a.keep_idx is not None:
        assert torch.equal(a.keep_idx, b.keep_idx)
    for k in a.features:
        torch.testing.assert_close(b.features[k], a.features[k], atol=1e-5, rtol=1e-4)


def test_multistream_slots_equal_streams_alone(tiny_vitdet: ViTDet) -> None:
    """Slots stepped together give each stream's own outputs; a slot that resets (or is added) mid-way starts its
    video with a FULL step and then follows the batch's schedule; dropped slots leave the others untouched."""
    runner = make_runner(tiny_vitdet, vitdet_rgtp(reset_every=None, fill="previous"))
    a, b, c = frames(6, seed=1), frames(6, seed=2), frames(3, seed=3)
    streams = MultiStream(runner)
    got: dict[str, list] = {"a": [], "b": [], "c": []}
    for t in range(6):
        if t < 3:
            batch, reset, names = torch.cat([a[t], b[t]]), None, "ab"
        else:  # slot 1 switches to video c at t = 3
            batch, reset, names = torch.cat([a[t], c[t - 3]]), [False, t == 3], "ac"
        if t == 5:
            streams.drop([1])  # video c has ended: slot 0 goes on alone
            batch, reset, names = a[t], None, "a"
        outs = streams.step(batch, reset)
        assert len(outs) == len(names) and outs[0].t == t
        for name, out in zip(names, outs, strict=True):
            got[name].append(out)
    for name, xs in (("a", a), ("b", b[:3]), ("c", c[:2])):
        ref = _alone(runner, xs)
        assert len(got[name]) == len(ref)
        for x, y in zip(ref, got[name], strict=True):
            _close(x, y)
    assert got["c"][0].kind.name == "FULL" and got["c"][0].t == 0 and got["c"][1].keep_idx is not None


def test_multistream_adds_slots(tiny_vitdet: ViTDet) -> None:
    runner = make_runner(tiny_vitdet, vitdet_rgtp(reset_every=None, fill="previous"))
    a, b = frames(4, seed=1), frames(3, seed=2)
    streams = MultiStream(runner)
    outs_a = [streams.step(a[0])[0]]
    for t in range(1, 4):
        outs = streams.step(torch.cat([a[t], b[t - 1]]))
        outs_a.append(outs[0])
        assert outs[1].t == t - 1
    for x, y in zip(_alone(runner, a), outs_a, strict=True):
        _close(x, y)
    with pytest.raises(ValueError, match="drop"):
        streams.step(a[0])
