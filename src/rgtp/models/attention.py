"""Multi-head attention as functions of a block's parameters, for every model the runtimes drive (method §2).

:class:`AttentionSpec` is what the math needs from a block: its heads, scale, window and relative-position tables
(references to the block's own parameters, never copies). :func:`attend` computes attention for all queries or a
subset of them against every key and value, optionally with the post-softmax probabilities that the rollout reads
and the head-averaged keys that match pruned tokens. Our :class:`~rgtp.models.layers.Attention` and the adapters of
other libraries' modules (:mod:`rgtp.adapters`) all go through it, so every method sees the same math on every model.

Probabilities are materialised only when asked for. Fused attention (a spec with ``fused=True``, the adapters; or
``fused=True`` per call, :class:`~rgtp.config.ExecutionConfig`) computes every call that needs no probabilities with
:func:`torch.nn.functional.scaled_dot_product_attention`, relative positions entering as an additive bias. Our own
models default to the explicit product, which the paper presets' golden outputs were recorded with; both count the
same MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rgtp.config import pick

__all__ = [
    "AttentionOutput",
    "AttentionSpec",
    "attend",
    "rel_pos_table",
    "rel_terms",
    "split_heads",
    "window_partition",
    "window_unpartition",
]


class AttentionOutput(NamedTuple):
    """Result of :func:`attend`."""

    out: Tensor  # (B, Q, C) attention output before the projection
    probs: Tensor | None  # (B, heads, Q, K) post-softmax probabilities, when requested (global attention only)
    keys: Tensor | None  # (B, N, head_dim) keys averaged over heads, when requested


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """What the attention math needs from one block.

    Attributes:
        num_heads: heads; the head size is C / num_heads of the qkv given.
        scale: multiplies q before the product with the keys (usually head_dim ** -0.5).
        window_size: 0 for global attention, else the side of square windows over the token grid.
        rel_pos_h / rel_pos_w: decomposed relative-position tables (2S - 1, head_dim), or None for none.
        rel_pos_resize: how the tables are resized to another grid (see :func:`rel_pos_table`).
        pad_qkv: (3C,) the qkv of a zero token (the qkv bias), which fills the padding of windows; None: zeros.
        fused: use scaled_dot_product_attention where no probabilities are needed (relative positions as a bias).
    """

    num_heads: int
    scale: float
    window_size: int = 0
    rel_pos_h: Tensor | None = None
    rel_pos_w: Tensor | None = None
    rel_pos_resize: str = "table2d"
    pad_qkv: Tensor | None = None
    fused: bool = False

    @property
    def is_global(self) -> bool:
        return self.window_size == 0

    @property
    def use_rel_pos(self) -> bool:
        return self.rel_pos_h is not None


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, n, 3C) with channel layout [3][heads][d] -> q, k, v, each (B, heads, n, d)."""
    b, n, c3 = qkv.shape
    qkv = qkv.view(b, n, 3, num_heads, c3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)  # (3, B, heads, n, d)
    return qkv[0], qkv[1], qkv[2]


def rel_pos_table(table: Tensor, size: int, resize: str = "table2d") -> Tensor:
    """Relative position embeddings R[i, j] for i, j in [0, size): (2S - 1, d) -> (size, size, d).

    R[i, j] = T[i - j + S - 1] for the stored length 2S - 1. When S != size: ``table2d`` gathers the S x S table
    and resizes it bicubically as an image (the reference implementation; method §2.5), ``linear1d`` resizes the 1-D
    table linearly to 2 * size - 1 first (detectron2, and transformers' VitDet).
    """
    stored = (table.shape[0] + 1) // 2
    if pick(_LINEAR_FIRST, resize, "relative-position resize") and stored != size:
        table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T  # (2*size - 1, d)
        stored = size
    idx = torch.arange(stored, device=table.device)
    rel = table[idx[:, None] - idx[None, :] + stored - 1]  # (S, S, d)
    if stored == size:
        return rel
    rel = F.interpolate(rel.permute(2, 0, 1)[None], size=(size, size), mode="bicubic", align_corners=False)
    return rel[0].permute(1, 2, 0)  # (size, size, d)


#: Relative-position resizes by ``ViTDetConfig.rel_pos_resize``: whether the 1-D table is resized first.
_LINEAR_FIRST = {"table2d": False, "linear1d": True}


def window_partition(x: Tensor, window: int, fill: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
    """Split a (B, H, W, C) grid into windows -> ((B * nW, window², C), (Hp, Wp)).

    The grid is padded bottom/right to multiples of ``window`` with the (C,) vector ``fill`` (zeros if None).
    """
    b, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    if (hp, wp) != (h, w):
        pad = x.new_zeros(c) if fill is None else fill.to(x.dtype)
        canvas = pad.expand(b, hp, wp, c).clone()  # (B, Hp, Wp, C)
        canvas[:, :h, :w] = x
        x = canvas
    x = x.view(b, hp // window, window, wp // window, window, c)  # (B, nH, w, nW, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c), (hp, wp)


def window_unpartition(x: Tensor, window: int, padded: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window², C) -> (B, H, W, C), cropping the padding."""
    hp, wp = padded
    b = x.shape[0] // ((hp // window) * (wp // window))
    x = x.view(b, hp // window, wp // window, window, window, -1)  # (B, nH, nW, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)  # (B, Hp, Wp, C)
    return x[:, : grid[0], : grid[1]]


def attend(
    spec: AttentionSpec,
    qkv: Tensor,
    grid: tuple[int, int] | None,
    query_idx: Tensor | None = None,
    need_probs: bool = False,
    need_keys: bool = False,
    fused: bool | None = None,
) -> AttentionOutput:
    """Attention of the queries ``query_idx`` (all if None) over all N keys and values.

    Args:
        spec: the block's attention parameters.
        qkv: (B, N, 3C) projected tokens of the whole grid (N = H * W) or sequence.
        grid: (H, W) token grid, needed for windows and relative positions.
        query_idx: (B, Q) indices of the queries to compute, or None for all N.
        need_probs: also return the post-softmax probabilities (global attention only).
        need_keys: also return the head-averaged keys (B, N, head_dim).
        fused: fused attention where no probabilities are needed (None: the spec's ``fused``).

    Returns:
        :class:`AttentionOutput` with ``out`` of shape (B, Q, C).
    """
    keys = split_heads(qkv, spec.num_heads)[1].mean(dim=1) if need_keys else None  # (B, N, d)
    fused = spec.fused if fused is None else fused
    if spec.window_size:
        if need_probs:
            raise ValueError("attention probabilities are only recorded for global attention")
        out = _windowed(spec, qkv, grid, fused)  # (B, N, C): windows always run in full
        if query_idx is not None:
            out = out.gather(1, query_idx[..., None].expand(-1, -1, out.shape[-1]))  # (B, Q, C)
        return AttentionOutput(out, None, keys)
    out, probs = _global(spec, qkv, grid, query_idx, need_probs, fused)
    return AttentionOutput(out, probs, keys)


def _global(
    spec: AttentionSpec,
    qkv: Tensor,
    grid: tuple[int, int] | None,
    query_idx: Tensor | None,
    need_probs: bool,
    fused: bool,
) -> tuple[Tensor, Tensor | None]:
    q, k, v = split_heads(qkv, spec.num_heads)  # (B, h, N, d) each
    if query_idx is not None:
        q = q.gather(2, query_idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))  # (B, h, Q, d)
    if spec.use_rel_pos and grid is None:
        raise ValueError("relative positions need the token grid")
    if fused and not need_probs:
        bias = _rel_pos_bias(spec, q, grid, query_idx) if spec.use_rel_pos else None  # (B, h, Q, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=spec.scale)  # (B, h, Q, d)
        probs = None
    else:
        logits = (q * spec.scale) @ k.transpose(-2, -1)  # (B, h, Q, N)
        if spec.use_rel_pos:
            assert grid is not None
            logits = _add_rel_pos(spec, logits, q, grid, query_idx)
        probs = logits.softmax(dim=-1)
        out = probs @ v  # (B, h, Q, d)
    b, h, nq, d = out.shape
    return out.transpose(1, 2).reshape(b, nq, h * d), probs if need_probs else None  # (B, Q, C)


def _windowed(spec: AttentionSpec, qkv: Tensor, grid: tuple[int, int] | None, fused: bool) -> Tensor:
    if grid is None:
        raise ValueError("windowed attention needs the token grid")
    b, n, c3 = qkv.shape
    ws = spec.window_size
    # Pad with the qkv of a zero token (the bias): the same as padding the normalised input with zeros.
    windows, padded = window_partition(qkv.view(b, grid[0], grid[1], c3), ws, spec.pad_qkv)  # (B*nW, ws², 3C)
    out, _ = _global(spec, windows, (ws, ws), None, False, fused)  # (B * nW, ws², C)
    return window_unpartition(out, ws, padded, grid).reshape(b, n, -1)  # (B, N, C)


def rel_terms(spec: AttentionSpec, q: Tensor, grid: tuple[int, int], query_idx: Tensor | None) -> tuple[Tensor, Tensor]:
    """Decomposed relative-position terms of the queries q (B, h, Q, d) (unscaled), at raster positions
    ``query_idx`` (B, Q) or at every cell: (B, h, Q, H) added to every key row, (B, h, Q, W) to every column."""
    assert spec.rel_pos_h is not None and spec.rel_pos_w is not None
    gh, gw = grid
    rh = rel_pos_table(spec.rel_pos_h, gh, spec.rel_pos_resize)  # (H, H, d)
    rw = rel_pos_table(spec.rel_pos_w, gw, spec.rel_pos_resize)  # (W, W, d)
    b, h, nq, d = q.shape
    if query_idx is None:
        r_q = q.reshape(b, h, gh, gw, d)  # (B, h, H, W, d)
        rel_h = torch.einsum("bhyxd,ykd->bhyxk", r_q, rh).reshape(b, h, nq, gh)  # (B, h, Q, H)
        rel_w = torch.einsum("bhyxd,xkd->bhyxk", r_q, rw).reshape(b, h, nq, gw)  # (B, h, Q, W)
        return rel_h, rel_w
    qy, qx = query_idx // gw, query_idx % gw  # (B, Q)
    return torch.einsum("bhqd,bqkd->bhqk", q, rh[qy]), torch.einsum("bhqd,bqkd->bhqk", q, rw[qx])


def _add_rel_pos(
    spec: AttentionSpec, logits: Tensor, q: Tensor, grid: tuple[int, int], query_idx: Tensor | None
) -> Tensor:
    """logits[q, k] += <q, Rh[qy, ky]> + <q, Rw[qx, kx]> (unscaled q), for Q queries: (B, h, Q, N)."""
    gh, gw = grid
    b, h, nq, _ = q.shape
    rel_h, rel_w = rel_terms(spec, q, grid, query_idx)  # (B, h, Q, H), (B, h, Q, W)
    grid_logits = logits.view(b, h, nq, gh, gw)  # (B, h, Q, H, W); in place: no new (B, h, Q, N) tensors
    grid_logits.add_(rel_h[..., :, None]).add_(rel_w[..., None, :])
    return logits


def _rel_pos_bias(spec: AttentionSpec, q: Tensor, grid: tuple[int, int] | None, query_idx: Tensor | None) -> Tensor:
    """The relative-position terms as an additive attention bias: (B, h, Q, N), in q's dtype."""
    assert grid is not None
    gh, gw = grid
    rel_h, rel_w = rel_terms(spec, q, grid, query_idx)  # (B, h, Q, H), (B, h, Q, W)
    b, h, nq, _ = q.shape
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, h, Q, H, W)
    return bias.view(b, h, nq, gh * gw).to(q.dtype)
