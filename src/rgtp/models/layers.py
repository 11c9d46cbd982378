"""Transformer building blocks shared by ViTDet and ViViT (method §2).

The dense forward of a :class:`Block` is two residual lines. Its pieces (``norm1``, :meth:`Block.qkv`, the attention
math of :mod:`rgtp.models.attention`, :meth:`Block.proj`, ``norm2``, ``mlp``) form the block protocol of
:mod:`rgtp.models.protocol`, so that the runtimes run the same math on a subset of tokens without any pruning option
living in the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgtp.models.attention import (
    AttentionOutput,
    AttentionSpec,
    attend,
    rel_pos_table,
    window_partition,
    window_unpartition,
)

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

    @property
    def spec(self) -> AttentionSpec:
        """The parameters :func:`~rgtp.models.attention.attend` needs (references, not copies)."""
        return AttentionSpec(
            self.num_heads,
            self.scale,
            self.window_size,
            self.rel_pos_h if self.use_rel_pos else None,
            self.rel_pos_w if self.use_rel_pos else None,
            self.rel_pos_resize,
            self.qkv.bias,
        )

    def attend(
        self,
        qkv: Tensor,
        grid: tuple[int, int] | None,
        query_idx: Tensor | None = None,
        need_probs: bool = False,
        need_keys: bool = False,
    ) -> AttentionOutput:
        """Attention of the queries ``query_idx`` (all if None) over all N keys and values (see
        :func:`~rgtp.models.attention.attend`)."""
        return attend(self.spec, qkv, grid, query_idx, need_probs, need_keys)


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

    # The block protocol (rgtp.models.protocol.BlockOps): norm1, norm2 and mlp are the modules themselves.
    @property
    def spec(self) -> AttentionSpec:
        return self.attn.spec

    def qkv(self, h: Tensor) -> Tensor:
        """(B, n, C) normalised tokens -> (B, n, 3C)."""
        return self.attn.qkv(h)

    def proj(self, a: Tensor) -> Tensor:
        """(B, n, C) attention output -> (B, n, C), what the first residual adds."""
        return self.attn.proj(a)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn.proj(self.attn.attend(self.attn.qkv(self.norm1(x)), grid).out)
        return x + self.mlp(self.norm2(x))

    def mlp_residual(self, x: Tensor) -> Tensor:
        """The second half of the block: x + MLP(LN(x))."""
        return x + self.mlp(self.norm2(x))
