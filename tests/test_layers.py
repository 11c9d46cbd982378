"""Tests for rgtp.models.layers: windows, relative positions, attention with query subsets (method §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from rgtp.models.layers import Attention, Block, rel_pos_table, window_partition, window_unpartition

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter (the relative-position tables are initialised to zeros)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def _attention(dim: int, heads: int, window: int, rel: int, seed: int, table_w: int | None = None) -> Attention:
    attn = Attention(dim, heads, window_size=window, rel_pos_size=rel).to(DT)
    if table_w is not None:  # a width table of another length, for non-square grids
        attn.rel_pos_w = nn.Parameter(torch.zeros(2 * table_w - 1, dim // heads, dtype=DT))
    return _randomize(attn, seed)


# ----------------------------------------------------------------------------------------------------------- naive


@torch.no_grad()
def naive_attention(qkv: torch.Tensor, heads: int, grid: tuple[int, int], th, tw) -> torch.Tensor:
    """softmax((q/√d)·kᵀ + <q, Rh[qy, ky]> + <q, Rw[qx, kx]>) v per head, unscaled q in the relative terms.

    qkv: (N, 3C) of one image, channel layout [3][heads][d]. th/tw: (2S-1, d) tables with S = H / W, or None.
    """
    n, c3 = qkv.shape
    c = c3 // 3
    d = c // heads
    gh, gw = grid
    out = torch.zeros(n, c, dtype=qkv.dtype)
    for hi in range(heads):
        q = qkv[:, hi * d : (hi + 1) * d]
        k = qkv[:, c + hi * d : c + (hi + 1) * d]
        v = qkv[:, 2 * c + hi * d : 2 * c + (hi + 1) * d]
        for i in range(n):
            qy, qx = divmod(i, gw)
            logits = torch.zeros(n, dtype=qkv.dtype)
            for j in range(n):
                ky, kx = divmod(j, gw)
                logit = float(q[i] @ k[j]) / math.sqrt(d)
                if th is not None:
                    logit += float(q[i] @ th[qy - ky + gh - 1]) + float(q[i] @ tw[qx - kx + gw - 1])
                logits[j] = logit
            p = logits.softmax(dim=0)
            out[i, hi * d : (hi + 1) * d] = sum(p[j] * v[j] for j in range(n))
    return out


def naive_windowed(qkv: torch.Tensor, heads: int, grid: tuple[int, int], window: int, fill, th, tw):
    """Pad the (N, 3C) grid bottom/right with ``fill`` to multiples of ``window``; attend inside each window."""
    gh, gw = grid
    hp, wp = -(-gh // window) * window, -(-gw // window) * window
    canvas = fill.expand(hp, wp, qkv.shape[-1]).clone()
    canvas[:gh, :gw] = qkv.view(gh, gw, -1)
    out = torch.zeros(hp, wp, qkv.shape[-1] // 3, dtype=qkv.dtype)
    for wy in range(0, hp, window):
        for wx in range(0, wp, window):
            tokens = canvas[wy : wy + window, wx : wx + window].reshape(window * window, -1)
            res = naive_attention(tokens, heads, (window, window), th, tw)
            out[wy : wy + window, wx : wx + window] = res.view(window, window, -1)
    return out[:gh, :gw].reshape(gh * gw, -1)


def naive_partition(x: torch.Tensor, window: int, fill: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    windows = []
    for bi in range(b):
        for wy in range(0, hp, window):
            for wx in range(0, wp, window):
                rows = []
                for y in range(wy, wy + window):
                    for xx in range(wx, wx + window):
                        rows.append(x[bi, y, xx] if y < h and xx < w else fill)
                windows.append(torch.stack(rows))
    return torch.stack(windows)


# ------------------------------------------------------------------------------------------------------- windows


def test_window_partition_round_trip_with_padding_uses_fill() -> None:
    x = torch.randn(2, 5, 7, 3, generator=_gen(0))
    fill = torch.tensor([7.0, -8.0, 9.0])
    windows, padded = window_partition(x, 3, fill)
    assert padded == (6, 9)
    assert windows.shape == (2 * 2 * 3, 9, 3)
    assert_close(windows, naive_partition(x, 3, fill))
    n_fill = int((windows == fill).all(dim=-1).sum())
    assert n_fill == 2 * (6 * 9 - 5 * 7)
    assert_close(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_window_partition_default_fill_is_zero_and_no_padding_needed() -> None:
    x = torch.randn(1, 4, 5, 2, generator=_gen(1))
    windows, padded = window_partition(x, 2)
    assert padded == (4, 6)
    assert_close(windows, naive_partition(x, 2, torch.zeros(2)))
    exact = torch.randn(1, 6, 4, 2, generator=_gen(2))
    w2, p2 = window_partition(exact, 2, torch.full((2,), 5.0))
    assert p2 == (6, 4) and not (w2 == 5.0).all(dim=-1).any()
    assert_close(window_unpartition(w2, 2, p2, (6, 4)), exact)


# -------------------------------------------------------------------------------------------- relative positions


def test_rel_pos_table_gather_when_sizes_match() -> None:
    s, d = 5, 3
    table = torch.randn(2 * s - 1, d, generator=_gen(3))
    for resize in ("table2d", "linear1d"):
        rel = rel_pos_table(table, s, resize)
        assert rel.shape == (s, s, d)
        for i in range(s):
            for j in range(s):
                assert_close(rel[i, j], table[i - j + s - 1])


def test_rel_pos_table2d_resizes_gathered_table_bicubically() -> None:
    s, a, d = 6, 4, 3
    table = torch.randn(2 * s - 1, d, generator=_gen(4), dtype=DT)
    rel = rel_pos_table(table, a, "table2d")
    assert rel.shape == (a, a, d)
    gathered = torch.stack([torch.stack([table[i - j + s - 1] for j in range(s)]) for i in range(s)])  # (S, S, d)
    want = F.interpolate(gathered.permute(2, 0, 1)[None], size=(a, a), mode="bicubic", align_corners=False)
    assert_close(rel, want[0].permute(1, 2, 0))


@pytest.mark.parametrize(("s", "a"), [(6, 4), (3, 5)])
def test_rel_pos_linear1d_resizes_the_1d_table(s: int, a: int) -> None:
    d = 3
    table = torch.randn(2 * s - 1, d, generator=_gen(5), dtype=DT)
    rel = rel_pos_table(table, a, "linear1d")
    assert rel.shape == (a, a, d)
    resized = F.interpolate(table.T[None], size=2 * a - 1, mode="linear", align_corners=False)[0].T  # (2A-1, d)
    for i in range(a):
        for j in range(a):
            assert_close(rel[i, j], resized[i - j + a - 1])  # Toeplitz: depends on i - j only


def test_rel_pos_table_unknown_resize_raises() -> None:
    with pytest.raises(ValueError):
        rel_pos_table(torch.zeros(11, 2), 4, "nearest")


# ----------------------------------------------------------------------------------------------------- attention


def test_global_attention_with_rel_pos_equals_naive_non_square() -> None:
    grid, dim, heads = (3, 4), 8, 2
    attn = _attention(dim, heads, 0, rel=3, seed=10, table_w=4)  # Rh stored for 3 rows, Rw for 4 columns
    assert attn.rel_pos_h.abs().sum() > 0 and attn.rel_pos_w.abs().sum() > 0
    qkv = torch.randn(2, 12, 3 * dim, generator=_gen(11), dtype=DT)
    got = attn.attend(qkv, grid).out
    for bi in range(2):
        assert_close(got[bi], naive_attention(qkv[bi], heads, grid, attn.rel_pos_h, attn.rel_pos_w))


def test_global_attention_without_rel_pos_equals_naive() -> None:
    attn = _attention(8, 2, 0, rel=0, seed=12)
    qkv = torch.randn(1, 7, 24, generator=_gen(13), dtype=DT)
    assert_close(attn.attend(qkv, None).out[0], naive_attention(qkv[0], 2, (1, 7), None, None))


def test_global_attention_query_idx_equals_full_rows() -> None:
    grid, dim, heads = (4, 5), 8, 2
    attn = _attention(dim, heads, 0, rel=4, seed=14, table_w=5)
    qkv = torch.randn(2, 20, 3 * dim, generator=_gen(15), dtype=DT)
    full = attn.attend(qkv, grid, need_probs=True, need_keys=True)
    idx = torch.tensor([[17, 3, 0, 19, 8], [2, 11, 12, 5, 6]])  # unsorted, per stream
    part = attn.attend(qkv, grid, query_idx=idx, need_probs=True, need_keys=True)
    rows = full.out.gather(1, idx[..., None].expand(-1, -1, dim))
    assert part.out.shape == (2, 5, dim)
    assert_close(part.out, rows)
    probs_rows = full.probs.gather(2, idx[:, None, :, None].expand(-1, heads, -1, 20))
    assert_close(part.probs, probs_rows)
    assert_close(part.probs.sum(-1), torch.ones(2, heads, 5, dtype=DT))
    assert_close(part.keys, full.keys)
    assert part.keys.shape == (2, 20, dim // heads)


def test_windowed_attention_with_padding_equals_naive() -> None:
    grid, dim, heads, window = (10, 10), 8, 2, 4  # padded to 12 x 12: 9 windows
    attn = _attention(dim, heads, window, rel=window, seed=16)
    qkv = torch.randn(1, 100, 3 * dim, generator=_gen(17), dtype=DT)
    got = attn.attend(qkv, grid).out
    want = naive_windowed(qkv[0], heads, grid, window, attn.qkv.bias.detach(), attn.rel_pos_h, attn.rel_pos_w)
    assert_close(got[0], want)
    # padding with zeros instead of the qkv bias would give a different result
    zeros = torch.zeros(3 * dim, dtype=DT)
    zero_fill = naive_windowed(qkv[0], heads, grid, window, zeros, attn.rel_pos_h, attn.rel_pos_w)
    assert not torch.allclose(got[0], zero_fill)


def test_windowed_attention_query_idx_equals_full_rows() -> None:
    grid, dim, heads, window = (10, 10), 8, 2, 4
    attn = _attention(dim, heads, window, rel=window, seed=18)
    qkv = torch.randn(2, 100, 3 * dim, generator=_gen(19), dtype=DT)
    full = attn.attend(qkv, grid).out
    idx = torch.tensor([[99, 0, 45, 9, 90, 51], [3, 38, 77, 98, 10, 11]])
    part = attn.attend(qkv, grid, query_idx=idx).out
    assert_close(part, full.gather(1, idx[..., None].expand(-1, -1, dim)))
    with pytest.raises(ValueError):
        attn.attend(qkv, grid, need_probs=True)


def test_block_forward_equals_naive() -> None:
    grid, dim, heads = (3, 3), 8, 2
    blk = _randomize(Block(dim, heads, 2.0, window_size=0, rel_pos_size=3).to(DT), 20)
    x = torch.randn(2, 9, dim, generator=_gen(21), dtype=DT)
    got = blk(x, grid)
    for bi in range(2):
        qkv = blk.attn.qkv(blk.norm1(x[bi]))
        att = naive_attention(qkv, heads, grid, blk.attn.rel_pos_h, blk.attn.rel_pos_w)
        y = x[bi] + blk.attn.proj(att)
        y = y + blk.mlp.fc2(F.gelu(blk.mlp.fc1(F.layer_norm(y, (dim,), blk.norm2.weight, blk.norm2.bias, 1e-6))))
        assert_close(got[bi], y)
    assert_close(blk.mlp_residual(x), x + blk.mlp(blk.norm2(x)))
