"""Transformer building blocks shared by ViTDet and ViViT (spec §2).

The dense forward of a :class:`Block` is two residual lines. Its pieces (:meth:`Attention.attend`, :meth:`Block.mlp`)
are public so that the RGTP runtime can run the same math on a subset of tokens without any pruning option living in
the model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "AttentionOutput",
    "Block",
    "ConvLN",
    "LayerNorm2d",
    "Mlp",
    "rel_pos_table",
    "window_partition",
    "window_unpartition",
]


class AttentionOutput(NamedTuple):
    """Result of :meth:`Attention.attend`."""

    out: Tensor  # (B, Q, C) attention output before the projection
    probs: Tensor | None  # (B, heads, Q, K) post-softmax probabilities, when requested (global attention only)
    keys: Tensor | None  # (B, N, head_dim) keys averaged over heads, when requested


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) tensors (detectron2's ``LayerNorm``)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # (B, H, W, C)
        return x.permute(0, 3, 1, 2)


class ConvLN(nn.Conv2d):
    """A bias-free convolution followed by channel LayerNorm, stored like detectron2's ``Conv2d(norm=LN)``."""

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = LayerNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


def rel_pos_table(table: Tensor, size: int, resize: str = "table2d") -> Tensor:
    """Relative position embeddings R[i, j] for i, j in [0, size): (2S - 1, d) -> (size, size, d).

    R[i, j] = T[i - j + S - 1] for the stored length 2S - 1. When S != size: ``table2d`` gathers the S x S table
    and resizes it bicubically as an image (the reference implementation; spec §2.5), ``linear1d`` resizes the 1-D
    table linearly to 2 * size - 1 first (detectron2).
    """
    if resize not in ("table2d", "linear1d"):
        raise ValueError(f"unknown relative-position resize {resize!r}; expected 'table2d' or 'linear1d'")
    stored = (table.shape[0] + 1) // 2
    if resize == "linear1d" and stored != size:
        table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T  # (2*size - 1, d)
        stored = size
    idx = torch.arange(stored, device=table.device)
    rel = table[idx[:, None] - idx[None, :] + stored - 1]  # (S, S, d)
    if stored == size:
        return rel
    rel = F.interpolate(rel.permute(2, 0, 1)[None], size=(size, size), mode="bicubic", align_corners=False)
    return rel[0].permute(1, 2, 0)  # (size, size, d)


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


class Attention(nn.Module):
    """Multi-head self-attention with optional windows and decomposed relative positions (ViTDet style).

    Args:
        dim: channels.
        num_heads: heads.
        window_size: 0 for global attention, else the side of square windows.
        rel_pos_size: side of the grid the relative-position tables are stored for (0: no relative positions).
        rel_pos_resize: how tables are resized to another grid (see :func:`rel_pos_table`).
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int = 0, rel_pos_size: int = 0, rel_pos_resize: str = "table2d"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.rel_pos_resize = rel_pos_resize
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if rel_pos_size:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
        self.use_rel_pos = bool(rel_pos_size)

    def split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, n, 3C) -> q, k, v, each (B, heads, n, head_dim)."""
        b, n, _ = qkv.shape
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, n, d)
        return qkv[0], qkv[1], qkv[2]

    def attend(
        self,
        qkv: Tensor,
        grid: tuple[int, int] | None,
        query_idx: Tensor | None = None,
        need_probs: bool = False,
        need_keys: bool = False,
    ) -> AttentionOutput:
        """Attention of the queries ``query_idx`` (all if None) over all N keys and values.

        Args:
            qkv: (B, N, 3C) projected tokens of the whole grid (N = H * W, plus nothing else) or sequence.
            grid: (H, W) token grid, needed for windows and relative positions.
            query_idx: (B, Q) raster indices of the queries to compute, or None for all N.
            need_probs: also return the post-softmax probabilities (global attention only).
            need_keys: also return the head-averaged keys (B, N, head_dim).

        Returns:
            :class:`AttentionOutput` with ``out`` of shape (B, Q, C).
        """
        keys = None
        if need_keys:
            keys = self.split_heads(qkv)[1].mean(dim=1)  # (B, N, d)
        if self.window_size:
            if need_probs:
                raise ValueError("attention probabilities are only recorded for global attention")
            out = self._windowed(qkv, grid)  # (B, N, C): windows always run in full
            if query_idx is not None:
                out = out.gather(1, query_idx[..., None].expand(-1, -1, out.shape[-1]))  # (B, Q, C)
            return AttentionOutput(out, None, keys)
        out, probs = self._global(qkv, grid, query_idx)
        return AttentionOutput(out, probs if need_probs else None, keys)

    def _global(self, qkv: Tensor, grid: tuple[int, int] | None, query_idx: Tensor | None) -> tuple[Tensor, Tensor]:
        q, k, v = self.split_heads(qkv)  # (B, h, N, d) each
        if query_idx is not None:
            q = q.gather(2, query_idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))  # (B, h, Q, d)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, Q, N)
        if self.use_rel_pos:
            if grid is None:
                raise ValueError("relative positions need the token grid")
            logits = self._add_rel_pos(logits, q, grid, query_idx)
        probs = logits.softmax(dim=-1)
        out = probs @ v  # (B, h, Q, d)
        b, h, nq, d = out.shape
        return out.transpose(1, 2).reshape(b, nq, h * d), probs  # (B, Q, C)

    def _windowed(self, qkv: Tensor, grid: tuple[int, int] | None) -> Tensor:
        if grid is None:
            raise ValueError("windowed attention needs the token grid")
        b, n, c3 = qkv.shape
        ws = self.window_size
        # Pad with the qkv of a zero token (the bias): the same as padding the normalised input with zeros.
        windows, padded = window_partition(qkv.view(b, grid[0], grid[1], c3), ws, self.qkv.bias)  # (B*nW, ws², 3C)
        out, _ = self._global(windows, (ws, ws), None)  # (B * nW, ws², C)
        return window_unpartition(out, ws, padded, grid).reshape(b, n, -1)  # (B, N, C)

    def rel_terms(self, q: Tensor, grid: tuple[int, int], query_idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Decomposed relative-position terms of the queries q (B, h, Q, d) (unscaled), at raster positions
        ``query_idx`` (B, Q) or at every cell: (B, h, Q, H) added to every key row, (B, h, Q, W) to every column."""
        gh, gw = grid
        rh = rel_pos_table(self.rel_pos_h, gh, self.rel_pos_resize)  # (H, H, d)
        rw = rel_pos_table(self.rel_pos_w, gw, self.rel_pos_resize)  # (W, W, d)
        b, h, nq, d = q.shape
        if query_idx is None:
            r_q = q.reshape(b, h, gh, gw, d)  # (B, h, H, W, d)
            rel_h = torch.einsum("bhyxd,ykd->bhyxk", r_q, rh).reshape(b, h, nq, gh)  # (B, h, Q, H)
            rel_w = torch.einsum("bhyxd,xkd->bhyxk", r_q, rw).reshape(b, h, nq, gw)  # (B, h, Q, W)
            return rel_h, rel_w
        qy, qx = query_idx // gw, query_idx % gw  # (B, Q)
        return torch.einsum("bhqd,bqkd->bhqk", q, rh[qy]), torch.einsum("bhqd,bqkd->bhqk", q, rw[qx])

    def _add_rel_pos(self, logits: Tensor, q: Tensor, grid: tuple[int, int], query_idx: Tensor | None) -> Tensor:
        """logits[q, k] += <q, Rh[qy, ky]> + <q, Rw[qx, kx]> (unscaled q), for Q queries: (B, h, Q, N)."""
        gh, gw = grid
        b, h, nq, _ = q.shape
        rel_h, rel_w = self.rel_terms(q, grid, query_idx)  # (B, h, Q, H), (B, h, Q, W)
        grid_logits = logits.view(b, h, nq, gh, gw)  # (B, h, Q, H, W); in place: no new (B, h, Q, N) tensors
        grid_logits.add_(rel_h[..., :, None]).add_(rel_w[..., None, :])
        return logits


class Block(nn.Module):
    """Pre-norm transformer block: x + proj(attn(LN(x))), then x + MLP(LN(x)). LayerNorm eps 1e-6, exact GELU."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        window_size: int = 0,
        rel_pos_size: int = 0,
        rel_pos_resize: str = "table2d",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size, rel_pos_size, rel_pos_resize)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @property
    def is_global(self) -> bool:
        return self.attn.window_size == 0

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn.proj(self.attn.attend(self.attn.qkv(self.norm1(x)), grid).out)
        return x + self.mlp(self.norm2(x))

    def mlp_residual(self, x: Tensor) -> Tensor:
        """The second half of the block: x + MLP(LN(x))."""
        return x + self.mlp(self.norm2(x))
