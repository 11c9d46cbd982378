"""The block protocol: the few operations the per-frame loops need from a vision transformer.

Every method (dense, RGTP, Eventful-style gating, ToMe-style merging) drives a model only through these operations,
so it runs unchanged on our ViTDet and ViViT (:mod:`rgtp.adapters.native`) and on other libraries' modules
(:mod:`rgtp.adapters.hf`, :mod:`rgtp.adapters.timm`), whose weights are used in place.

A model is one of two families:

* :class:`GridModel` (``family = "grid"``): tokens are the cells of a grid and the outputs are dense maps over it
  (ViTDet: windowed and global blocks, relative positions, a feature pyramid and a detector on the last block's
  grid; transformers' ``VitDetBackbone``). Pruned tokens keep buffered qkv and outputs.
* :class:`ClassModel` (``family = "cls"``): a few prefix tokens (a class token, DINOv2's registers) before the patch
  tokens, global blocks, and the class token's output (ViViT's spatial encoder for one tubelet step, ViT, DINOv2,
  CLIP's vision tower). Pruned tokens leave the step; the patch outputs, when the model has dense outputs, are kept
  whole with a buffer.

A block (:class:`BlockOps`) is pre-norm: ``x + proj(attention(qkv(norm1(x))))``, then ``x + mlp(norm2(x))``, where
``proj`` and ``mlp`` include any layer scale. Its attention is :func:`~rgtp.models.attention.attend` with the block's
:class:`~rgtp.models.attention.AttentionSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from rgtp.models.attention import AttentionSpec, attend

__all__ = ["BlockOps", "ClassModel", "GridModel", "block_forward", "mlp_residual", "with_position"]


class BlockOps(Protocol):
    """One transformer block, split where the methods act."""

    @property
    def spec(self) -> AttentionSpec: ...

    def norm1(self, x: Tensor) -> Tensor: ...  # (B, n, C) -> (B, n, C)

    def qkv(self, h: Tensor) -> Tensor: ...  # (B, n, C) -> (B, n, 3C), channels [3][heads][head_dim]

    def proj(self, a: Tensor) -> Tensor: ...  # (B, n, C) attention output -> (B, n, C) added to x

    def norm2(self, x: Tensor) -> Tensor: ...  # (B, n, C) -> (B, n, C)

    def mlp(self, h: Tensor) -> Tensor: ...  # (B, n, C) -> (B, n, C) added to x


class GridModel(Protocol):
    """A dense-output model over a token grid (ViTDet-style)."""

    family: str  # "grid"
    patch_size: int  # pixels per token side: detections (input pixels) map onto the grid with it
    blocks: Sequence[BlockOps]
    output_blocks: tuple[int, ...]  # blocks whose (whole-grid) outputs :meth:`outputs` reads

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> ((B, N, C) patch embeddings before positions, their (h, w) grid)."""
        ...

    def position(self, grid: tuple[int, int]) -> Tensor | None:
        """The absolute position term added to the embeddings: (1, N, C), or None for a model without one."""
        ...

    def outputs(self, blocks: dict[int, Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
        """The model's outputs from the (B, N, C) outputs of :attr:`output_blocks`, by name."""
        ...


class ClassModel(Protocol):
    """A class-token model over the patch tokens of one frame (or one tubelet step)."""

    family: str  # "cls"
    num_prefix: int  # tokens before the patch tokens (class token, registers); the class token is token 0
    blocks: Sequence[BlockOps]
    dense_output: bool  # whether :meth:`finish` returns the patch tokens' outputs (kept whole with buffers)

    def embed(self, inputs: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Inputs -> ((B, N, C) patch embeddings before positions, their (h, w) grid)."""
        ...

    def tokens(self, embeds: Tensor, grid: tuple[int, int]) -> Tensor:
        """Prefix tokens and positions (and any norm before the blocks): (B, N, C) -> (B, P + N, C)."""
        ...

    def finish(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The last block's tokens (B, P + n, C) -> (pooled (B, C'), the model's token outputs (B, P + n, C) or
        None when the model has no dense output)."""
        ...


def mlp_residual(blk: BlockOps, x: Tensor) -> Tensor:
    """The second half of a block: x + mlp(norm2(x)), (B, n, C) -> (B, n, C)."""
    return x + blk.mlp(blk.norm2(x))


def block_forward(blk: BlockOps, x: Tensor, grid: tuple[int, int] | None, fused: bool | None = None) -> Tensor:
    """The dense block: (B, N, C) -> (B, N, C) (``fused``: see :func:`~rgtp.models.attention.attend`)."""
    x = x + blk.proj(attend(blk.spec, blk.qkv(blk.norm1(x)), grid, fused=fused).out)
    return mlp_residual(blk, x)


def with_position(embeds: Tensor, position: Tensor | None) -> Tensor:
    """Embeddings plus the absolute position term, if the model has one: (B, N, C)."""
    return embeds if position is None else embeds + position
