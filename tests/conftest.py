"""Tiny model configurations and helpers shared by the tests (full-size models only appear on meta tensors)."""

from __future__ import annotations

import pytest
import torch

from rgtp.config import (
    DetectorConfig,
    RGTPConfig,
    RolloutConfig,
    ScheduleConfig,
    SelectionConfig,
    TrackingConfig,
    ViTDetConfig,
    ViViTConfig,
)
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT

# A small detection head for 80x80 inputs (strides 2..32).
TINY_HEAD = DetectorConfig(
    num_classes=3,
    anchor_sizes=(8, 16, 24, 40, 64),
    pre_nms_topk=60,
    post_nms_topk=20,
    box_convs=2,
    box_conv_dim=8,
    box_fc_dim=16,
)
# 10x10 tokens, windows of 4 (padded to 12x12), global blocks 1 and 3, relative tables stored for 8x8 (resized).
TINY_VITDET = ViTDetConfig(
    img_size=80,
    patch_size=8,
    embed_dim=32,
    depth=4,
    num_heads=2,
    window_size=4,
    global_blocks=(1, 3),
    pos_embed_grid=6,
    rel_pos_grid=8,
    pyramid_dim=16,
    head=TINY_HEAD,
)
# 4x4 tokens per step, 4 steps.
TINY_VIVIT = ViViTConfig(
    img_size=32, num_frames=8, tubelet=(2, 8, 8), embed_dim=32, depth=3, temporal_depth=1, num_heads=2, num_classes=5
)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (relative positions and position tables included) non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed", "cls_token")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.fixture
def tiny_vitdet() -> ViTDet:
    torch.manual_seed(0)
    return randomize_(ViTDet(TINY_VITDET))  # type: ignore[return-value]


@pytest.fixture
def tiny_vivit() -> ViViT:
    torch.manual_seed(0)
    return randomize_(ViViT(TINY_VIVIT))  # type: ignore[return-value]


def vitdet_rgtp(
    keep_ratio: float = 0.3,
    reset_every: int | None = 4,
    pool: int = 2,
    form: str = "forward",
    fill: str = "none",
    reset_mode: str = "full",
) -> RGTPConfig:
    return RGTPConfig(
        selection=SelectionConfig(keep_ratio=keep_ratio),
        schedule=ScheduleConfig(reset_every=reset_every, reset_mode=reset_mode),  # type: ignore[arg-type]
        rollout=RolloutConfig(pool=pool, form=form, pruned_fill=fill),  # type: ignore[arg-type]
        tracking=TrackingConfig(radius=1),
    )


def vivit_rgtp(
    keep_ratio: float = 0.5,
    bg_ratio: float = 0.25,
    fg_ratio: float = 1.0,
    reset_every: int | None = 2,
    form: str = "forward",
    pattern: str = "1in2",
) -> RGTPConfig:
    return RGTPConfig(
        selection=SelectionConfig(keep_ratio=keep_ratio, fg_ratio=fg_ratio, bg_ratio=bg_ratio),
        schedule=ScheduleConfig(reset_every=reset_every, reset_mode="grid", grid_pattern=pattern),  # type: ignore[arg-type]
        rollout=RolloutConfig(pool=1, form=form, pruned_fill="match"),  # type: ignore[arg-type]
        tracking=TrackingConfig(radius=1),
    )
