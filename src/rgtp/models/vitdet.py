"""ViTDet: a plain ViT backbone with windowed and global blocks, and the simple feature pyramid (method §1.1).

Module and parameter names follow detectron2's ViTDet (``net.blocks.0.attn.qkv``, ``simfp_2.4.norm``...) so that
official checkpoints map onto this model key for key. The model knows nothing about pruning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgtp.config import ViTDetConfig
from rgtp.flops import scope
from rgtp.models.frcnn import Detections, FasterRCNN
from rgtp.models.layers import Block, ConvLN, LayerNorm2d

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "Detections",
    "SimpleFeaturePyramid",
    "ViT",
    "ViTDet",
    "preprocess_frame",
    "resize_scale",
    "resize_shape",
]

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
PIXEL_STD = (58.395, 57.12, 57.375)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, C) tokens in raster order."""
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, C); contiguous rows for gathers


class ViT(nn.Module):
    """The ViTDet backbone: patch embedding, absolute positions, windowed and global blocks; no final norm."""

    def __init__(self, cfg: ViTDetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_embed_grid**2, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                window_size=0 if i in cfg.global_blocks else cfg.window_size,
                rel_pos_size=cfg.rel_pos_grid if i in cfg.global_blocks else cfg.window_size,
                rel_pos_resize=cfg.rel_pos_resize,
            )
            for i in range(cfg.depth)
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    def embed(self, images: Tensor) -> Tensor:
        """Patch embeddings before the position encoding: (B, 3, S, S) -> (B, N, C)."""
        if images.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(
                f"expected padded input of size {self.cfg.img_size}x{self.cfg.img_size}, got {tuple(images.shape[-2:])}"
            )
        with scope("embed"):
            return self.patch_embed(images)

    def position(self) -> Tensor:
        """Absolute position encoding resized bicubically to the token grid: (1, N, C)."""
        side = self.cfg.pos_embed_grid
        pos = self.pos_embed
        if (side, side) != self.grid:
            pos = pos.view(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
            pos = F.interpolate(pos, size=self.grid, mode="bicubic", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)  # (1, N, C)
        return pos

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised, padded frames -> (B, N, C) tokens after the last block."""
        x = self.embed(images) + self.position()
        for blk in self.blocks:
            x = blk(x, self.grid)
        return x


class SimpleFeaturePyramid(nn.Module):
    """Strides 4, 8, 16, 32 from the stride-16 map (scales 4, 2, 1, 0.5), plus p6 by subsampling p5."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        self.simfp_2 = nn.Sequential(
            nn.ConvTranspose2d(dim, half, 2, 2),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, 2),
            ConvLN(quarter, out_dim, 1),
            ConvLN(out_dim, out_dim, 3),
        )
        self.simfp_3 = nn.Sequential(
            nn.ConvTranspose2d(dim, half, 2, 2), ConvLN(half, out_dim, 1), ConvLN(out_dim, out_dim, 3)
        )
        self.simfp_4 = nn.Sequential(ConvLN(dim, out_dim, 1), ConvLN(out_dim, out_dim, 3))
        self.simfp_5 = nn.Sequential(nn.MaxPool2d(2, 2), ConvLN(dim, out_dim, 1), ConvLN(out_dim, out_dim, 3))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) stride-16 map -> {"p2": stride 4, ..., "p5": stride 32, "p6": stride 64}."""
        feats = {f"p{k}": getattr(self, f"simfp_{k}")(x) for k in (2, 3, 4, 5)}
        feats["p6"] = F.max_pool2d(feats["p5"], kernel_size=1, stride=2)
        return feats


class ViTDet(nn.Module):
    """ViTDet backbone + simple feature pyramid + Faster R-CNN head (``cfg.head``; None leaves the head out).

    ``forward`` maps padded, normalised frames to pyramid features; :meth:`detect` turns features into detections.
    """

    def __init__(self, cfg: ViTDetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = ViT(cfg)
        self.pyramid = SimpleFeaturePyramid(cfg.embed_dim, cfg.pyramid_dim)
        self.head = None if cfg.head is None else FasterRCNN(cfg.head, cfg.pyramid_dim, cfg.patch_size)

    def detect(self, features: dict[str, Tensor]) -> list[Detections]:
        """Detections per image in padded-input pixels, clipped to the padded square (as the reference does)."""
        if self.head is None:
            raise RuntimeError("this ViTDet has no detection head (its config has head=None)")
        with scope("head"):
            return self.head(features, (self.cfg.img_size, self.cfg.img_size))

    def features(self, tokens: Tensor) -> dict[str, Tensor]:
        """Pyramid of the backbone's output tokens: (B, N, C) -> {"p2".."p6"}."""
        b, _n, c = tokens.shape
        h, w = self.cfg.grid
        with scope("neck"):
            return self.pyramid(tokens.transpose(1, 2).reshape(b, c, h, w))  # (B, C, H, W)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.features(self.net(images))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def resize_scale(height: int, width: int, size: int) -> float:
    """The paper's resize factor (method §12.1): short side to 640 * size / 1024, long side at most ``size``."""
    return min(640.0 * size / 1024.0 / min(height, width), size / max(height, width))


def resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The resized (height, width) under :func:`resize_scale`, rounded as the reference does (Python's ``round``)."""
    scale = resize_scale(height, width, size)
    return round(height * scale), round(width * scale)


def preprocess_frame(frame: Tensor, size: int) -> tuple[Tensor, float]:
    """Resize (bilinear, antialiased), normalise and zero-pad bottom/right to ``size`` x ``size``.

    Args:
        frame: (H, W, 3) uint8 RGB.

    Returns:
        ((3, size, size) float tensor, scale applied to the frame); boxes in the frame map to boxes * scale (the
        reference scales ground truth by this exact factor, not by the rounded size ratio).
    """
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {tuple(frame.shape)}")
    h, w = frame.shape[:2]
    nh, nw = resize_shape(h, w, size)
    x = frame.permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)  # the reference resizes uint8 frames and gets uint8 back
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, size - nw, 0, size - nh))  # zero = the mean colour after normalisation
    return x[0], resize_scale(h, w, size)
