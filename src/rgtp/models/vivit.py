"""ViViT factorised encoder (spec §1.2): a spatial ViT per tubelet step, then a temporal transformer over steps.

The model knows nothing about pruning. :meth:`ViViT.forward` takes one view (B, 3, T, H, W); multi-view inference
averages the logits of the views (:func:`predict_views`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rgtp.config import ViViTConfig
from rgtp.flops import scope
from rgtp.models.layers import Block

__all__ = ["Encoder", "ViViT", "predict_views"]


class Encoder(nn.Module):
    """A class token, learned positions, global blocks and a final LayerNorm; returns the class token's output."""

    def __init__(self, num_tokens: int, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def tokens(self, x: Tensor) -> Tensor:
        """Prepend the class token and add positions: (B, n, C) -> (B, n + 1, C)."""
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, C) -> (B, C), the class token after the final LayerNorm."""
        x = self.tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, 0])


class ViViT(nn.Module):
    """ViViT factorised encoder: tubelet embedding, spatial encoder per step, temporal encoder, classifier."""

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = nn.Conv3d(3, d, kernel_size=cfg.tubelet, stride=cfg.tubelet)
        self.spatial = Encoder(cfg.num_tokens, d, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.temporal = Encoder(cfg.num_steps, d, cfg.temporal_depth, cfg.num_heads, cfg.mlp_ratio)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(d, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    def embed(self, clip: Tensor) -> Tensor:
        """Tubelet embeddings before positions: (B, 3, T, H, W) -> (B, steps, N, C)."""
        expected = (3, self.cfg.num_frames, self.cfg.img_size, self.cfg.img_size)
        if tuple(clip.shape[1:]) != expected:
            raise ValueError(f"expected a clip of shape (B, {', '.join(map(str, expected))}), got {tuple(clip.shape)}")
        with scope("embed"):
            x = self.patch_embed(clip)  # (B, C, steps, h, w)
        return x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, steps, N, C)

    def classify(self, step_features: Tensor) -> Tensor:
        """Temporal encoder and classifier: (B, steps, C) spatial class tokens -> (B, classes) logits."""
        return self.head(self.dropout(self.temporal(step_features)))

    def forward(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised clip -> (B, classes) logits."""
        tokens = self.embed(clip)  # (B, steps, N, C)
        b, s, n, c = tokens.shape
        cls = self.spatial(tokens.reshape(b * s, n, c)).view(b, s, c)  # (B, steps, C)
        return self.classify(cls)


def predict_views(logits: Tensor, num_views: int) -> Tensor:
    """Average the logits of each clip's views, then softmax: (B * views, classes) -> (B, classes) probabilities."""
    if logits.shape[0] % num_views:
        raise ValueError(f"{logits.shape[0]} rows are not a multiple of {num_views} views")
    return logits.view(-1, num_views, logits.shape[-1]).mean(dim=1).softmax(dim=-1)
