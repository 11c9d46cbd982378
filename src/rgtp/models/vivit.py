"""ViViT factorised encoder (method §1.2): a spatial ViT per tubelet step, then a temporal transformer over steps.

The model knows nothing about pruning. :meth:`ViViT.forward` takes one view (B, 3, T, H, W) and returns logits
(B, num_classes + num_nouns): the main head's, then the optional noun head's (EPIC-KITCHENS); :meth:`ViViT.split`
separates them. Multi-view inference averages the logits of the views (:func:`predict_views`).
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
        self.head_noun = nn.Linear(d, cfg.num_nouns) if cfg.num_nouns else None
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
        """Temporal encoder and classifier(s): (B, steps, C) spatial class tokens -> (B, classes + nouns) logits."""
        x = self.dropout(self.temporal(step_features))  # (B, C)
        if self.head_noun is None:
            return self.head(x)
        return torch.cat([self.head(x), self.head_noun(x)], dim=-1)

    def split(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """(..., classes + nouns) -> the main head's (..., classes) and the noun head's (..., nouns) or None."""
        k = self.cfg.num_classes
        return logits[..., :k], (logits[..., k:] if self.head_noun is not None else None)

    def spatial_features(self, clip: Tensor) -> Tensor:
        """The dense spatial encoder's class token per step: (B, 3, T, H, W) -> (B, steps, C)."""
        tokens = self.embed(clip)  # (B, steps, N, C)
        b, s, n, c = tokens.shape
        return self.spatial(tokens.reshape(b * s, n, c)).view(b, s, c)  # (B, steps, C)

    def forward(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised clip -> (B, classes + nouns) logits."""
        return self.classify(self.spatial_features(clip))


def predict_views(logits: Tensor, num_views: int) -> Tensor:
    """Average the logits of each clip's views, then softmax: (B * views, classes) -> (B, classes) probabilities.

    With a noun head, apply it to each head's part separately (:meth:`ViViT.split` first).
    """
    if logits.shape[0] % num_views:
        raise ValueError(f"{logits.shape[0]} rows are not a multiple of {num_views} views")
    return logits.view(-1, num_views, logits.shape[-1]).mean(dim=1).softmax(dim=-1)  # (B, views, K) -> (B, K)
