"""What the adapters of other libraries' models share: finding modules by path, and a block made of modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rgtp.adapters import AdapterError
from rgtp.flops import scope
from rgtp.models.attention import AttentionSpec

__all__ = ["ProtocolBlock", "check_eval", "find", "optional", "patch_tokens"]


def find(root: Any, paths: Sequence[str], what: str, owner: str, supported: str) -> Any:
    """The first attribute path of ``paths`` that exists under ``root``; else an error naming what is missing."""
    for path in paths:
        node = root
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if node is not None:
            return node
    looked = " or ".join(repr(p) for p in paths)
    raise AdapterError(f"{owner}: no {what} (looked for {looked}); rgtp's adapter supports {supported}")


def optional(root: Any, paths: Sequence[str]) -> Any:
    """The first attribute path of ``paths`` that exists under ``root``, or None."""
    try:
        return find(root, paths, "", "", "")
    except AdapterError:
        return None


def check_eval(model: nn.Module) -> None:
    """Runners compute inference: a model in training mode (dropout, drop path active) is a caller's mistake."""
    if model.training:
        raise AdapterError(f"the {type(model).__name__} is in training mode (dropout active): call model.eval() first")


def patch_tokens(conv: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """A patch-embedding convolution as tokens: (B, 3, H, W) -> ((B, N, C) with contiguous rows, its (h, w) grid).

    Counted in the ``embed`` scope, as our models' patch embeddings are (the paper's figures leave it out)."""
    with scope("embed"):
        x = conv(images.to(conv.weight.dtype))  # (B, C, h, w)
    return x.flatten(2).transpose(1, 2).contiguous(), (x.shape[-2], x.shape[-1])  # (B, N, C)


class ProtocolBlock:
    """One layer of another library as the block protocol: pre-norm attention and MLP, optional layer scales.

    Args:
        spec: the layer's attention parameters.
        norm1 / norm2: the norms before attention and before the MLP.
        qkv_proj: the separate (q, k, v) projections, or (the fused qkv projection, None, None).
        out_proj: the attention output projection.
        mlp: the MLP (without its residual).
        scales: layer scales applied to the attention and MLP branches (None: none).
    """

    def __init__(
        self,
        spec: AttentionSpec,
        norm1: nn.Module,
        qkv_proj: tuple[nn.Module, nn.Module | None, nn.Module | None],
        out_proj: nn.Module,
        norm2: nn.Module,
        mlp: Callable[[Tensor], Tensor],
        scales: tuple[nn.Module | None, nn.Module | None] = (None, None),
    ) -> None:
        self.spec = spec
        self.norm1, self.norm2 = norm1, norm2
        self._q, self._k, self._v = qkv_proj
        self._out, self._mlp = out_proj, mlp
        self._ls1, self._ls2 = scales

    def qkv(self, h: Tensor) -> Tensor:
        """(B, n, C) -> (B, n, 3C), channels [q | k | v], each [heads][head_dim]."""
        if self._k is None or self._v is None:
            return self._q(h)
        return torch.cat([self._q(h), self._k(h), self._v(h)], dim=-1)

    def proj(self, a: Tensor) -> Tensor:
        out = self._out(a)
        return out if self._ls1 is None else self._ls1(out)

    def mlp(self, h: Tensor) -> Tensor:
        out = self._mlp(h)
        return out if self._ls2 is None else self._ls2(out)
