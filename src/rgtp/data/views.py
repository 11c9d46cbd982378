"""Multi-view sampling of the ViViT evaluation protocol (method §12.2): temporal x spatial views of one video."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MEAN", "STD", "make_views", "normalize_resize", "pad_frames", "spatial_offsets", "temporal_starts"]

MEAN, STD = 0.45, 0.225  # per channel, on frames scaled to [0, 1]


def _spread(count: int, room: int) -> list[int]:
    """``count`` integer offsets spread evenly over [0, room]: int(k * room / (count - 1)); centred if count == 1."""
    if count == 1:
        return [room // 2]
    return [int(k * room / (count - 1)) for k in range(count)]


def temporal_starts(num_video_frames: int, view_frames: int, count: int = 4) -> list[int]:
    """First frame of each temporal view: int(k * (T - L) / (count - 1)) (T >= L after padding)."""
    return _spread(count, max(num_video_frames - view_frames, 0))


def spatial_offsets(size: int, crop: int, count: int = 3) -> list[int]:
    """Crop offsets along one axis: int(k * (size - crop) / 2) for 3 crops (left/centre/right)."""
    return _spread(count, size - crop)


def pad_frames(video: Tensor, span: int) -> Tensor:
    """Repeat the last frame of a (T, ...) video until it has at least ``span`` frames."""
    if video.shape[0] >= span:
        return video
    return torch.cat([video, video[-1:].expand(span - video.shape[0], *video.shape[1:])])


def normalize_resize(frames: Tensor, crop: int) -> Tensor:
    """uint8 frames (..., H, W) -> scaled to [0, 1], normalised (mean 0.45, std 0.225), resized (bilinear) so that the
    short side equals ``crop``. Normalising before resizing follows the reference (method §1.2)."""
    t = (frames.float() / 255.0 - MEAN) / STD
    h, w = t.shape[-2:]
    scale = max(crop / h, crop / w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    lead = t.shape[:-2]
    t = F.interpolate(t.reshape(1, -1, h, w), size=(nh, nw), mode="bilinear", align_corners=False)  # (1, *, nh, nw)
    return t.view(*lead, nh, nw)


def make_views(
    video: np.ndarray | Tensor, frames: int, stride: int, crop: int, views: tuple[int, int] = (3, 4)
) -> Tensor:
    """The (spatial x temporal) views of a video, spatial-major: -> (S * T_views, 3, frames, crop, crop).

    Steps (method §12.2): pad a short video by repeating its last frame to ``frames * stride``; take each temporal
    view's every ``stride``-th frame; scale to [0, 1] and normalise (mean 0.45, std 0.225); resize so the short side
    equals ``crop``; crop at the spatial offsets.

    Args:
        video: (T, H, W, 3) uint8 RGB frames.
    """
    x = torch.as_tensor(video)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a (T, H, W, 3) video, got shape {tuple(x.shape)}")
    span = frames * stride
    x = pad_frames(x, span)
    n_spatial, n_temporal = views
    clips = [x[s : s + span : stride] for s in temporal_starts(x.shape[0], span, n_temporal)]  # each (F, H, W, 3)
    t = normalize_resize(torch.stack(clips).permute(0, 4, 1, 2, 3), crop)  # (Tv, 3, F, nh, nw)
    nh, nw = t.shape[-2:]
    out = [
        t[:, :, :, y : y + crop, x0 : x0 + crop]
        for y, x0 in zip(spatial_offsets(nh, crop, n_spatial), spatial_offsets(nw, crop, n_spatial), strict=True)
    ]  # spatial-major: for each crop, the temporal views
    return torch.cat(out)  # (S * Tv, 3, F, crop, crop)
