"""Detection primitives for the Faster R-CNN head, in plain PyTorch (CPU and CUDA, no compiled extensions).

Boxes are ``(x1, y1, x2, y2)`` in absolute coordinates ("xyxy"); areas have no ``+1``.

- :func:`box_area`, :func:`box_iou`, :func:`clip_boxes`, :func:`nonempty`: elementwise box helpers.
- :func:`nms`, :func:`batched_nms`: greedy non-maximum suppression with the semantics of ``torchvision.ops.nms`` /
  ``batched_nms`` on CPU (suppress when IoU > threshold, strictly; the threshold compared as a float64 number).
- :func:`roi_align`: detectron2's ROIAlign (ROIAlignV2 with ``aligned=True``), computed as a weighted gather: the
  bilinear sampling of a bin is separable in y and x, so each output bin is a weighted sum over a small window of
  feature pixels, which :func:`torch.nn.functional.embedding_bag` evaluates without materialising the samples.

Where ``torchvision.ops`` imports (a torchvision built for the installed torch), :func:`nms`, :func:`batched_nms` and
:func:`roi_align` call its compiled kernels (half-precision inputs in float32, as ours compute them);
``RGTP_TORCHVISION=0``, read once per process, turns this off. Elsewhere the plain PyTorch versions here run. The two
agree up to ties and rounding (torchvision's ``batched_nms`` offsets boxes per class, its RoIAlign sums in another
order), so the golden tests of the paper presets, recorded with ours, run with ours.

Everything computes in the input dtype, except that float16/bfloat16 inputs are upcast to float32 for the IoU in
:func:`nms` / :func:`batched_nms` and for the coordinates, weights and accumulation in :func:`roi_align` (the result
is cast back to the input dtype).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batched_nms", "box_area", "box_iou", "clip_boxes", "nms", "nonempty", "roi_align"]

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_NMS_BLOCK = 512  # rows of the IoU matrix computed at once by the greedy pass
_ROI_ALIGN_CHUNK = 1 << 22  # gather taps (index/weight pairs) per embedding_bag call: bounds the index memory


# ------------------------------------------------------------------------------------------------------ torchvision


@functools.cache
def _torchvision_ops() -> ModuleType | None:
    """``torchvision.ops`` when it imports and works with this torch (None otherwise, or with RGTP_TORCHVISION=0)."""
    if os.environ.get("RGTP_TORCHVISION", "1") == "0":
        return None
    try:
        import torchvision.ops as tv_ops

        tv_ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # a CUDA-only build imports but has no CPU kernel
    except Exception as err:  # a torchvision built for another torch fails in many ways
        logger.debug("torchvision.ops unavailable (%s); using rgtp.ops' own NMS and RoIAlign", err)
        return None
    return tv_ops


def _compiled(x: Tensor) -> ModuleType | None:
    """torchvision.ops, if it is available (half-precision inputs are given to it in float32, as ours compute)."""
    return _torchvision_ops() if x.is_floating_point() else None


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32, other dtypes unchanged."""
    return x.float() if x.dtype in _LOW_PRECISION else x


# ------------------------------------------------------------------------------------------------------------ boxes


def box_area(boxes: Tensor) -> Tensor:
    """Areas of xyxy boxes: (..., 4) -> (...,), ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_iou(a: Tensor, b: Tensor, area_a: Tensor, area_b: Tensor) -> Tensor:
    """IoU of (N, 4) x (M, 4) boxes with precomputed areas (N,), (M,) -> (N, M); 0 where the union is 0.

    Operation order follows the usual kernels: ``inter / (area_a + area_b - inter)``.
    """
    # this is the hot loop of nms: contiguous coordinate rows (vectorised broadcasting) and in-place updates
    a = a.t().contiguous()[:, :, None]  # (N, 4) -> (4, N, 1)
    b = b.t().contiguous()[:, None, :]  # (M, 4) -> (4, 1, M)
    w = torch.minimum(a[2], b[2]).sub_(torch.maximum(a[0], b[0]))  # (N, M)
    h = torch.minimum(a[3], b[3]).sub_(torch.maximum(a[1], b[1]))  # (N, M)
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))  # (N, M)
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)  # (N, M)
    return inter.div_(union).masked_fill_(union == 0, 0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4), (M, 4) -> (N, M), ``inter / union`` with 0 where the union is 0."""
    if a.shape[-1] != 4 or b.shape[-1] != 4 or a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"box_iou expects (N, 4) and (M, 4) boxes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _pairwise_iou(a, b, box_area(a), box_area(b))


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp xyxy boxes (..., 4) to an image of ``size = (height, width)``: x to [0, width], y to [0, height].

    Returns a new tensor of the same shape and dtype.
    """
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(-1)  # each (...,)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], dim=-1
    )  # (..., 4)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Boolean mask (...,) of boxes (..., 4) whose width and height both exceed ``threshold``."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return (widths > threshold) & (heights > threshold)


# -------------------------------------------------------------------------------------------------------------- nms


def _check_nms_inputs(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be ({boxes.shape[0]},), got {tuple(scores.shape)}")


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest value t of ``dtype`` with t <= threshold.

    For x of that dtype, ``x > threshold`` (compared as float64 numbers, as torchvision's CPU kernel does) is
    equivalent to ``x > t``, which can be evaluated in ``dtype`` without casting the IoU matrix to float64.
    """
    t = torch.tensor(threshold, dtype=dtype)
    if t.item() > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t.item())


def _greedy_sorted(boxes: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over boxes (n, 4) already sorted by decreasing score -> int64 positions of the kept boxes.

    The IoU matrix is computed in row blocks, only for rows still alive when their block is reached and only
    against the columns from the block start on; the greedy pass ORs the over-threshold row of each kept box into a
    numpy ``removed`` mask. Memory: one (block, n) IoU block at a time.
    """
    n = boxes.shape[0]
    device = boxes.device
    if boxes.dtype in _LOW_PRECISION or not boxes.is_floating_point():
        boxes = boxes.float()
    area = box_area(boxes)  # (n,)
    thr = _threshold_below(iou_threshold, boxes.dtype)
    removed = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        alive = np.flatnonzero(~removed[start:stop]) + start  # (k,) absolute positions
        if alive.size == 0:
            continue
        rows = torch.from_numpy(alive).to(device)
        iou = _pairwise_iou(boxes[rows], boxes[start:], area[rows], area[start:])  # (k, n - start)
        over = (iou > thr).cpu().numpy()  # (k, n - start) bool
        tail = removed[start:]  # view: columns start..n-1
        for k, i in enumerate(alive.tolist()):
            if tail[i - start]:
                continue
            keep[i] = True
            tail |= over[k]
    return torch.from_numpy(np.flatnonzero(keep)).to(device)


def _score_order(scores: Tensor) -> Tensor:
    """Indices sorting ``scores`` by decreasing value; ties keep the input order (stable)."""
    return torch.sort(scores, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, with the semantics of ``torchvision.ops.nms``.

    Boxes are visited by decreasing score (stable sort: equal scores in input order); a box is kept unless its IoU
    with an already kept box is strictly greater than ``iou_threshold``.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores.
        iou_threshold: suppression threshold; 0 suppresses any overlap, 1 (or more) keeps everything.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, by decreasing score, on ``boxes.device``.
    """
    _check_nms_inputs(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if (tv := _compiled(boxes)) is not None:
        wide = _wide(boxes)
        return tv.nms(wide, scores.to(wide.dtype), float(iou_threshold))
    order = _score_order(scores)  # (N,)
    return order[_greedy_sorted(boxes[order], iou_threshold)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS run independently for each value of ``idxs`` (boxes of different categories never suppress each other).

    Same contract as ``torchvision.ops.batched_nms``, computed exactly per group (no coordinate offsets).

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores.
        idxs: (N,) integer category (or image, level...) of each box.
        iou_threshold: suppression threshold, as in :func:`nms`.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, by decreasing score (stable), on ``boxes.device``.
    """
    _check_nms_inputs(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must be ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if (tv := _compiled(boxes)) is not None:
        wide = _wide(boxes)
        return tv.batched_nms(wide, scores.to(wide.dtype), idxs, float(iou_threshold))
    order = _score_order(scores)  # (N,) score order
    grouped = order[torch.sort(idxs[order], stable=True).indices]  # (N,) group-major, score order inside a group
    counts = torch.unique_consecutive(idxs[grouped], return_counts=True)[1].tolist()
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)  # (N,) over input indices
    start = 0
    for count in counts:
        members = grouped[start : start + count]  # (count,) input indices, by decreasing score
        if count == 1:
            keep[members] = True
        else:
            keep[members[_greedy_sorted(boxes[members], iou_threshold)]] = True
        start += count
    return order[keep[order]]


# -------------------------------------------------------------------------------------------------------- roi_align


def _axis_taps(start: Tensor, bin_size: Tensor, grid: int, out_size: int, size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps along one axis for ROIs sharing ``grid`` samples per bin.

    Args:
        start: (n,) ROI start in feature pixels (already shifted by the alignment offset).
        bin_size: (n,) bin length in feature pixels.
        grid: samples per bin along this axis (>= 1).
        out_size: bins along this axis.
        size: feature-map length along this axis.

    Returns:
        ``(index, weight)``, both (n, out_size, K): pixel indices in [0, size) and weights such that the mean over
        the bin's samples of the 1-D bilinear interpolation is ``sum_k weight[..., k] * f[index[..., k]]``. Samples
        outside [-1, size] get weight 0. When the samples of a bin touch fewer than 2 * grid distinct pixels (always
        the case for adaptive grids), the taps are that dense window, K = span + 1; otherwise the raw corners.
    """
    dtype, device = start.dtype, start.device
    bins = torch.arange(out_size, device=device, dtype=dtype)  # (out,)
    frac = torch.arange(grid, device=device, dtype=dtype) + 0.5  # (g,)
    # sample = start + p * bin + (i + 0.5) * bin / grid, in detectron2's operation order
    pos = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + frac[None, None, :] * bin_size[:, None, None] / grid
    )  # (n, out, g)
    valid = (pos >= -1) & (pos <= size)  # (n, out, g)
    pos = pos.clamp(min=0)
    low = pos.floor()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    pos = torch.where(edge, low, pos)
    high = torch.where(edge, low, low + 1)
    frac_high = pos - low  # (n, out, g): weight of the high pixel
    scale = valid.to(dtype) / grid  # (n, out, g): 1/grid for valid samples, 0 otherwise
    corners = torch.stack([low, high], dim=-1).long().flatten(2)  # (n, out, g, 2) -> (n, out, 2g)
    weights = torch.stack([(1 - frac_high) * scale, frac_high * scale], dim=-1).flatten(2)  # (n, out, 2g)

    base = corners.amin(dim=-1)  # (n, out): first pixel of each bin's window
    span = int((corners.amax(dim=-1) - base).max().item()) + 1
    if span >= 2 * grid:
        return corners, weights
    offsets = torch.arange(span, device=device)  # (K,)
    index = (base[..., None] + offsets).clamp_(max=size - 1)  # (n, out, K); clamped slots carry weight 0
    # fold the corner weights into the window with a one-hot sum (no atomics: deterministic on every device)
    hits = (corners - base[..., None])[..., None] == offsets  # (n, out, 2g, K)
    dense = (weights[..., None] * hits).sum(dim=-2)  # (n, out, 2g, K) -> (n, out, K)
    return index, dense


def _roi_align_group(
    flat: Tensor,
    batch: Tensor,
    boxes: Tensor,
    grid: tuple[int, int],
    out_hw: tuple[int, int],
    map_hw: tuple[int, int],
) -> Tensor:
    """ROIAlign of ROIs sharing one sample grid.

    Args:
        flat: (B * H * W, C) channels-last feature rows in the compute dtype.
        batch: (n,) int64 image index of each ROI.
        boxes: (n, 4) ``(start_h, start_w, bin_h, bin_w)`` in feature pixels.
        grid: (grid_h, grid_w) samples per bin.
        out_hw: (oh, ow) bins.
        map_hw: (H, W) feature-map size.

    Returns:
        (n, C, oh, ow) in the compute dtype.
    """
    (oh, ow), (H, W) = out_hw, map_hw
    start_h, start_w, bin_h, bin_w = boxes.unbind(1)  # each (n,)
    iy, wy = _axis_taps(start_h, bin_h, grid[0], oh, H)  # (n, oh, Ky)
    ix, wx = _axis_taps(start_w, bin_w, grid[1], ow, W)  # (n, ow, Kx)
    n, ky, kx = batch.shape[0], iy.shape[-1], ix.shape[-1]
    rows = (batch[:, None, None] * H + iy) * W  # (n, oh, Ky): flat offset of each tapped row
    index = rows[:, :, None, :, None] + ix[:, None, :, None, :]  # (n, oh, ow, Ky, Kx)
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]  # (n, oh, ow, Ky, Kx)
    pooled = F.embedding_bag(
        index.reshape(n * oh * ow, ky * kx),  # (n*oh*ow, Ky*Kx): one bag per output bin
        flat,
        per_sample_weights=weight.reshape(n * oh * ow, ky * kx),
        mode="sum",
    )  # (n*oh*ow, C)
    return pooled.view(n, oh, ow, -1).permute(0, 3, 1, 2)  # (n, oh, ow, C) -> (n, C, oh, ow)


def _grid_sizes(extent: Tensor, out_size: int, sampling_ratio: int) -> Tensor:
    """Samples per bin along one axis: ``sampling_ratio`` if > 0, else ceil(extent / out_size); (R,) int64."""
    if sampling_ratio > 0:
        return torch.full(extent.shape, sampling_ratio, dtype=torch.long, device=extent.device)
    return torch.ceil(extent / out_size).long()


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """detectron2's ROIAlign (``aligned=True``: ROIAlignV2, the half-pixel-corrected version).

    For each ROI, the (shifted) box is split into ``oh x ow`` bins; each bin averages ``grid_h x grid_w`` bilinear
    samples (``sampling_ratio`` per axis, or ``ceil(roi_size / bins)`` when it is <= 0). Samples further than one
    pixel outside the map contribute 0; the others are clamped to the map. ROIs with a non-positive grid (e.g.
    zero-size ROIs with ``aligned=True``) give 0.

    ROIs are grouped by sample grid; each group is evaluated in chunks as a weighted gather over small per-bin
    pixel windows (:func:`torch.nn.functional.embedding_bag`), so memory stays bounded for any number of ROIs.

    Args:
        features: (B, C, H, W) feature map.
        rois: (R, 5) rows ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        output_size: ``oh`` (square) or ``(oh, ow)``.
        spatial_scale: feature pixels per input pixel (e.g. 1/4 for a stride-4 map).
        sampling_ratio: samples per bin along each axis; <= 0 for adaptive.
        aligned: shift the ROI by -0.5 pixel (True) or clamp its size to >= 1 pixel (False, legacy).

    Returns:
        (R, C, oh, ow) pooled features in ``features.dtype`` (computed in float32 for float16/bfloat16 inputs).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}")
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output_size must be positive, got {output_size}")
    if (tv := _compiled(features)) is not None:
        wide = _wide(features)
        pooled = tv.roi_align(wide, rois.to(wide.dtype), (oh, ow), spatial_scale, sampling_ratio, aligned)
        return pooled.to(features.dtype)
    B, C, H, W = features.shape
    R = rois.shape[0]
    dtype = torch.float32 if features.dtype in _LOW_PRECISION else features.dtype
    out = torch.zeros(R, C, oh, ow, dtype=dtype, device=features.device)
    if R == 0 or C == 0:
        return out.to(features.dtype)

    batch = rois[:, 0].long()  # (R,)
    if bool(((batch < 0) | (batch >= B)).any()):
        raise ValueError(f"roi batch indices must lie in [0, {B}), got {batch.min().item()}..{batch.max().item()}")
    offset = 0.5 if aligned else 0.0
    coords = rois[:, 1:].to(dtype) * spatial_scale - offset  # (R, 4): x1, y1, x2, y2 in feature pixels
    roi_w = coords[:, 2] - coords[:, 0]  # (R,)
    roi_h = coords[:, 3] - coords[:, 1]  # (R,)
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    geometry = torch.stack([coords[:, 1], coords[:, 0], roi_h / oh, roi_w / ow], dim=1)  # (R, 4)
    grids = torch.stack([_grid_sizes(roi_h, oh, sampling_ratio), _grid_sizes(roi_w, ow, sampling_ratio)], dim=1)

    # channels-last rows for the gather. Make it contiguous explicitly: for B == 1, permute + reshape is a (free)
    # transposed view, and gathering rows from it is several times slower.
    flat = features.permute(0, 2, 3, 1).contiguous().to(dtype)  # (B, C, H, W) -> (B, H, W, C)
    flat = flat.view(B * H * W, C)  # (B, H, W, C) -> (B*H*W, C)
    keys, inverse = torch.unique(grids, dim=0, return_inverse=True)  # (G, 2), (R,)
    for g, (grid_h, grid_w) in enumerate(keys.tolist()):
        if grid_h <= 0 or grid_w <= 0:
            continue  # no samples: the bins stay 0
        members = torch.nonzero(inverse == g).squeeze(1)  # (n,)
        step = max(1, _ROI_ALIGN_CHUNK // (oh * ow * 4 * grid_h * grid_w))  # ROIs per chunk: <= 2 * grid taps/axis
        for chunk in members.split(step):
            out[chunk] = _roi_align_group(flat, batch[chunk], geometry[chunk], (grid_h, grid_w), (oh, ow), (H, W))
    return out.to(features.dtype)
