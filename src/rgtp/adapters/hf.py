"""The block protocol on Hugging Face ``transformers`` vision models, used in place (weights shared, nothing converted).

Written against transformers 5.x (5.25 checked); the 4.x module names (``encoder.layer``, ``attention.attention.query``,
``vision_model``) are recognised too. A model whose structure differs gets an :class:`~rgtp.adapters.AdapterError`
naming what is missing.

* ``VitDetBackbone`` / ``VitDetModel``: a grid model (:class:`VitDetAdapter`). Windowed and global layers with
  decomposed relative positions (tables resized linearly, as transformers does); the outputs are the backbone's
  ``out_features`` stages (VitDetModel: ``last_hidden_state``) as (B, C, h, w) maps, kept whole with buffers.
* ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``CLIPVisionModel``: class-token models
  (:class:`ClassTokenAdapter`) over one frame. The class token (and DINOv2's registers) are prefix tokens; the outputs
  are the pooled output (ViT: the pooler's, or the normalised class token; DINOv2: the normalised class token; CLIP:
  ``post_layernorm`` of the class token) and the last hidden state of every token (pruned ones from buffers).

Attention is computed by :func:`~rgtp.models.attention.attend` from the layers' own projection weights, whatever
``attn_implementation`` the model was loaded with: probabilities are materialised only in the blocks whose rows the
rollout reads, and everything else runs through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rgtp.adapters import AdapterError
from rgtp.adapters.common import ProtocolBlock, check_eval, find, optional, patch_tokens
from rgtp.models.attention import AttentionSpec

__all__ = ["BUILDERS", "ClassTokenAdapter", "VitDetAdapter"]

SUPPORTED = "the layout of transformers 5.x (and 4.x module names)"


def _find(root: Any, paths: list[str], what: str, owner: str) -> Any:
    return find(root, paths, what, owner, SUPPORTED)


# ---------------------------------------------------------------------------------------------------------------------
# ViTDet (VitDetBackbone, VitDetModel): a grid model


class VitDetAdapter:
    """transformers' ViTDet as a grid model: (B, 3, H, W) pixel values -> its feature maps, by stage name."""

    family = "grid"

    def __init__(self, model: nn.Module) -> None:
        name = type(model).__name__
        self.model = model
        self.embeddings = _find(model, ["embeddings"], "embeddings", name)
        self.projection = _find(self.embeddings, ["projection"], "embeddings.projection (patch conv)", name)
        if getattr(self.embeddings, "position_embeddings", None) is not None:
            _find(self.embeddings, ["get_absolute_positions"], "embeddings.get_absolute_positions", name)
        layers = _find(model, ["encoder.layer"], "encoder.layer", name)
        self.blocks = [self._block(layer, i, name) for i, layer in enumerate(layers)]
        self.patch_size = int(self.projection.stride[0])
        if name == "VitDetBackbone":
            stages = list(_find(model, ["stage_names"], "stage_names", name))  # "stem", "stage1", ...
            wanted = _find(model, ["out_features"], "out_features", name)
            self.names = {stages.index(s) - 1: s for s in wanted}  # block index (-1: the stem) -> stage name
        else:
            self.names = {len(self.blocks) - 1: "last_hidden_state"}
        self.output_blocks = tuple(sorted(self.names))

    @staticmethod
    def _block(layer: nn.Module, i: int, name: str) -> ProtocolBlock:
        owner = f"{name} layer {i}"
        if getattr(layer, "use_residual_block", False):
            raise AdapterError(f"{owner} has a residual conv block (config.residual_block_indices): not supported")
        attn = _find(layer, ["attention"], "attention", owner)
        qkv, proj = _find(attn, ["qkv"], "attention.qkv", owner), _find(attn, ["proj"], "attention.proj", owner)
        rel = getattr(attn, "use_relative_position_embeddings", False)
        spec = AttentionSpec(
            num_heads=int(_find(attn, ["num_heads"], "attention.num_heads", owner)),
            scale=float(_find(attn, ["scale"], "attention.scale", owner)),
            window_size=int(getattr(layer, "window_size", 0)),
            rel_pos_h=_find(attn, ["rel_pos_h"], "attention.rel_pos_h", owner) if rel else None,
            rel_pos_w=_find(attn, ["rel_pos_w"], "attention.rel_pos_w", owner) if rel else None,
            rel_pos_resize="linear1d",
            pad_qkv=qkv.bias,
            fused=True,
        )
        norm1, norm2 = _find(layer, ["norm1"], "norm1", owner), _find(layer, ["norm2"], "norm2", owner)
        return ProtocolBlock(spec, norm1, (qkv, None, None), proj, norm2, _find(layer, ["mlp"], "mlp", owner))

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        check_eval(self.model)
        return patch_tokens(self.projection, images)  # (B, N, C)

    def position(self, grid: tuple[int, int]) -> Tensor | None:
        table = getattr(self.embeddings, "position_embeddings", None)
        if table is None:
            return None
        pos = self.embeddings.get_absolute_positions(table, True, grid[0], grid[1])  # (1, h, w, C)
        return pos.reshape(1, grid[0] * grid[1], -1)  # (1, N, C)

    def outputs(self, blocks: dict[int, Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
        out = {}
        for i, name in self.names.items():
            x = blocks[i]  # (B, N, C)
            maps = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])  # (B, C, h, w)
            # a copy: the runners update their output buffers in place at the next step
            out[name] = maps.clone(memory_format=torch.contiguous_format)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Class-token ViTs (ViTModel, Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel)


class ClassTokenAdapter:
    """A transformers class-token ViT over one frame: (B, 3, H, W) pixel values -> (pooled, last hidden state).

    Args:
        model: the model object.
        kind: ``vit``, ``dinov2`` or ``clip`` (the module layout).
    """

    family = "cls"
    dense_output = True

    def __init__(self, model: nn.Module, kind: str) -> None:
        name = type(model).__name__
        self.model, self.kind = model, kind
        root = model.vision_model if hasattr(model, "vision_model") else model  # CLIP in transformers 4.x
        emb = self.embeddings = _find(root, ["embeddings"], "embeddings", name)
        self.patch = _find(emb, ["patch_embeddings.projection", "patch_embedding"], "patch embedding conv", name)
        self.patch_size = int(self.patch.stride[0])
        self.cls_token = _find(emb, ["class_embedding" if kind == "clip" else "cls_token"], "class token", name)
        _find(emb, ["interpolate_pos_encoding"], "embeddings.interpolate_pos_encoding", name)
        self.registers = optional(emb, ["register_tokens"])
        self.num_prefix = 1 + (0 if self.registers is None else self.registers.shape[1])
        self.pre_norm = optional(root, ["pre_layrnorm"])
        layers = _find(root, ["layers", "encoder.layer", "encoder.layers"], "list of layers", name)
        self.blocks = [_class_block(layer, f"{name} layer {i}") for i, layer in enumerate(layers)]
        if kind == "clip":
            self.final_norm, self.pool_norm = None, _find(root, ["post_layernorm"], "post_layernorm", name)
        else:
            self.final_norm, self.pool_norm = _find(root, ["layernorm"], "final layernorm", name), None
        self.pooler = optional(root, ["pooler"]) if kind == "vit" else None

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        check_eval(self.model)
        return patch_tokens(self.patch, images)  # (B, N, C)

    def tokens(self, embeds: Tensor, grid: tuple[int, int]) -> Tensor:
        b = embeds.shape[0]
        cls = self.cls_token.reshape(1, 1, -1).expand(b, -1, -1).to(embeds.dtype)  # (B, 1, C)
        x = torch.cat([cls, embeds], dim=1)  # (B, 1 + N, C)
        x = x + self.embeddings.interpolate_pos_encoding(x, grid[0] * self.patch_size, grid[1] * self.patch_size)
        if self.registers is not None:  # DINOv2 registers go after the class token, without positions
            x = torch.cat([x[:, :1], self.registers.expand(b, -1, -1), x[:, 1:]], dim=1)  # (B, 1 + R + N, C)
        return x if self.pre_norm is None else self.pre_norm(x)  # (B, P + N, C)

    def finish(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.pool_norm is not None:  # CLIP: the last hidden state is not normalised; the pooled output is
            return self.pool_norm(x[:, 0]), x
        seq = self.final_norm(x)
        pooled = self.pooler(seq) if self.pooler is not None else seq[:, 0]
        return pooled, seq


def _class_block(layer: nn.Module, owner: str) -> ProtocolBlock:
    """A ViT / DINOv2 / CLIP layer (transformers 5.x names, then 4.x)."""
    attn = _find(layer, ["attention", "self_attn"], "attention module", owner)
    q = _find(attn, ["q_proj", "attention.query"], "query projection", owner)
    k = _find(attn, ["k_proj", "attention.key"], "key projection", owner)
    v = _find(attn, ["v_proj", "attention.value"], "value projection", owner)
    out = _find(attn, ["o_proj", "out_proj", "output.dense"], "output projection", owner)
    heads = int(_find(attn, ["num_attention_heads", "num_heads", "attention.num_attention_heads"], "head count", owner))
    scale = optional(attn, ["scaling", "scale", "attention.scaling"])  # the model's own, else 1/sqrt(head_dim)
    spec = AttentionSpec(heads, float(scale) if scale is not None else (q.out_features // heads) ** -0.5, fused=True)
    norm1 = _find(layer, ["norm1", "layernorm_before", "layer_norm1"], "first norm", owner)
    norm2 = _find(layer, ["norm2", "layernorm_after", "layer_norm2"], "second norm", owner)
    scales = (optional(layer, ["layer_scale1"]), optional(layer, ["layer_scale2"]))
    mlp = optional(layer, ["mlp"])
    if mlp is None:  # transformers 4.x ViT: intermediate (dense + act), then output.dense (its residual is ours)
        inter = _find(layer, ["intermediate"], "mlp", owner)
        down = _find(layer, ["output.dense"], "output.dense", owner)

        def mlp(h: Tensor) -> Tensor:
            return down(inter(h))

    return ProtocolBlock(spec, norm1, (q, k, v), out, norm2, mlp, scales)


#: Adapter builders by module layout.
BUILDERS: dict[str, Callable[[nn.Module], Any]] = {
    "vitdet": VitDetAdapter,
    "vit": lambda m: ClassTokenAdapter(m, "vit"),
    "dinov2": lambda m: ClassTokenAdapter(m, "dinov2"),
    "clip": lambda m: ClassTokenAdapter(m, "clip"),
}
