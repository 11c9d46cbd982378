"""The block protocol on a timm ``VisionTransformer``, used in place (weights shared, nothing converted).

Written against timm 1.0 (1.0.31 checked with a local stand-in for torchvision: timm imports ``torchvision.ops`` at
import time, and torchvision does not import beside the CPU build of torch that rgtp's CI uses, so the tests skip
where timm cannot be imported). Supported: pre-norm ``Block`` s with a fused ``qkv`` projection, identity q/k norms and
no attention gate; any class token / register tokens (``num_prefix_tokens``), ``no_embed_class`` and
``dynamic_img_size``. The outputs are ``forward_features`` (every token, pruned ones from buffers) and
``forward_head`` of it (logits, or pre-logits features without a head).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rgtp.adapters import AdapterError
from rgtp.adapters.common import ProtocolBlock, check_eval
from rgtp.flops import scope
from rgtp.models.attention import AttentionSpec

__all__ = ["TimmViTAdapter"]


def _block(blk: nn.Module, i: int) -> ProtocolBlock:
    owner = f"timm VisionTransformer block {i} ({type(blk).__name__})"
    missing = [n for n in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2") if not hasattr(blk, n)]
    if missing:
        raise AdapterError(
            f"{owner}: no {', '.join(missing)} (a pre-norm Block is needed; post-norm and parallel "
            "blocks are not supported)"
        )
    attn = blk.attn
    if not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise AdapterError(f"{owner}: the attention has no fused qkv projection")
    for name in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise AdapterError(f"{owner}: attention.{name} is not supported (q/k normalisation)")
    if getattr(attn, "gate", None) is not None:
        raise AdapterError(f"{owner}: gated attention is not supported")
    if not hasattr(attn, "num_heads") or not hasattr(attn, "scale"):
        raise AdapterError(f"{owner}: the attention has no num_heads or scale")
    spec = AttentionSpec(num_heads=int(attn.num_heads), scale=float(attn.scale), fused=True)
    post = getattr(attn, "norm", None)
    proj = attn.proj if post is None else nn.Sequential(post, attn.proj)
    return ProtocolBlock(spec, blk.norm1, (attn.qkv, None, None), proj, blk.norm2, blk.mlp, (blk.ls1, blk.ls2))


class TimmViTAdapter:
    """A timm ``VisionTransformer`` as a class-token model: (B, 3, H, W) images -> (head output, every token)."""

    family = "cls"
    dense_output = True

    def __init__(self, model: nn.Module) -> None:
        for name in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head", "num_prefix_tokens"):
            if not hasattr(model, name):
                raise AdapterError(f"timm {type(model).__name__}: no {name}; supported: timm 1.0 VisionTransformer")
        self.model = model
        self.num_prefix = int(model.num_prefix_tokens)
        self.blocks = [_block(blk, i) for i, blk in enumerate(model.blocks)]
        self.patch_size = int(model.patch_embed.patch_size[0])

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        check_eval(self.model)
        with scope("embed"):
            x = self.model.patch_embed(images)  # (B, N, C), or (B, h, w, C) with dynamic_img_size
        if x.dim() == 4:
            grid = (x.shape[1], x.shape[2])
            return x.flatten(1, 2), grid  # (B, N, C)
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return x, (h, w)

    def tokens(self, embeds: Tensor, grid: tuple[int, int]) -> Tensor:
        model: Any = self.model
        x = embeds.view(embeds.shape[0], grid[0], grid[1], -1) if model.dynamic_img_size else embeds  # (B, h, w, C)
        x = model._pos_embed(x)  # prefix tokens and positions, as forward_features does
        return model.norm_pre(model.patch_drop(x))  # (B, P + N, C)

    def finish(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        tokens = self.model.norm(x)  # (B, P + N, C): forward_features' output
        return self.model.forward_head(tokens), tokens
