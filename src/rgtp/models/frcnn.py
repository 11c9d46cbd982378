"""The Faster R-CNN head of ViTDet-VID on the simple feature pyramid (spec §1.1), inference only, plain PyTorch.

Structure, parameter names and test-time behaviour follow detectron2 (``proposal_generator.rpn_head.conv.conv0``,
``roi_heads.box_head.conv1.norm``, ``roi_heads.box_predictor.bbox_pred``...), so the official checkpoint maps onto it
key for key:

* RPN over p2..p6: one anchor size per level, three aspect ratios, two 3x3 convs, per-level top-k of the objectness
  logits, boxes clipped to the image, NMS per level, then the best ``post_nms_topk`` proposals.
* RoI heads on p2..p5: ROIAlignV2 (aligned, adaptive sampling) with detectron2's level assignment, a 4-conv (LN) +
  1-fc box head, class-specific box regression, softmax scores (background last), score threshold, per-class NMS.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgtp.config import DetectorConfig
from rgtp.models.layers import ConvLN
from rgtp.ops import batched_nms, clip_boxes, nonempty, roi_align

__all__ = [
    "RPN",
    "BoxHead",
    "Detections",
    "FasterRCNN",
    "ROIHeads",
    "assign_levels",
    "cell_anchors",
    "decode_boxes",
    "encode_boxes",
    "grid_anchors",
]

SCALE_CLAMP = math.log(1000.0 / 16)  # detectron2's limit on predicted log-scale changes
CANONICAL_SIZE, CANONICAL_LEVEL = 224, 4  # a 224-pixel box is pooled from p4 (detectron2 / FPN paper)


class Detections(NamedTuple):
    """Detections of one image, in input-pixel coordinates."""

    boxes: Tensor  # (M, 4) xyxy
    scores: Tensor  # (M,)
    labels: Tensor  # (M,) long, in [0, num_classes)


# ---------------------------------------------------------------------------------------------------------------------
# Boxes and anchors


def decode_boxes(
    deltas: Tensor, boxes: Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0), clamp: float = SCALE_CLAMP
) -> Tensor:
    """Apply (dx, dy, dw, dh) deltas to xyxy boxes (detectron2's ``Box2BoxTransform``), in float32.

    Args:
        deltas: (..., 4) regression outputs.
        boxes: (..., 4) reference boxes, broadcastable against ``deltas``.
    """
    deltas, boxes = deltas.float(), boxes.float()
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    cx, cy = boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw, dh = (deltas[..., 2] / ww).clamp(max=clamp), (deltas[..., 3] / wh).clamp(max=clamp)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = dw.exp() * widths, dh.exp() * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)


def encode_boxes(targets: Tensor, boxes: Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """The deltas that :func:`decode_boxes` maps ``boxes`` to ``targets`` with (both (..., 4) xyxy)."""
    targets, boxes = targets.float(), boxes.float()
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    tw, th = targets[..., 2] - targets[..., 0], targets[..., 3] - targets[..., 1]
    wx, wy, ww, wh = weights
    dx = wx * ((targets[..., 0] + 0.5 * tw) - (boxes[..., 0] + 0.5 * w)) / w
    dy = wy * ((targets[..., 1] + 0.5 * th) - (boxes[..., 1] + 0.5 * h)) / h
    return torch.stack([dx, dy, ww * torch.log(tw / w), wh * torch.log(th / h)], dim=-1)


def cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> Tensor:
    """Anchors of one size centred on (0, 0), one per aspect ratio (height / width): (A, 4) xyxy."""
    rows = []
    for ratio in aspect_ratios:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(cells: Tensor, size: tuple[int, int], stride: int) -> Tensor:
    """Cell anchors shifted to every location of an (H, W) map: (H * W * A, 4), location-major like the RPN outputs."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32, device=cells.device) * stride
    xs = torch.arange(w, dtype=torch.float32, device=cells.device) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (shifts + cells.view(1, -1, 4)).reshape(-1, 4)  # (H * W * A, 4)


def assign_levels(boxes: Tensor, num_levels: int) -> Tensor:
    """Pyramid level of each (R, 4) box, 0 = p2 (detectron2's rule: a 224-pixel box goes to p4)."""
    sizes = torch.sqrt(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0))
    level = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_SIZE + 1e-8))
    return (level.clamp(2, 1 + num_levels) - 2).long()


# ---------------------------------------------------------------------------------------------------------------------
# Region proposal network


class RPNHead(nn.Module):
    """Shared 3x3 conv(s) with ReLU, then per-anchor objectness logits and box deltas (detectron2 StandardRPNHead)."""

    def __init__(self, channels: int, num_anchors: int, num_convs: int) -> None:
        super().__init__()
        if num_convs == 1:
            self.conv: nn.Module = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = nn.Sequential()
            for k in range(num_convs):
                self.conv.add_module(f"conv{k}", nn.Conv2d(channels, channels, 3, padding=1))
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> logits (B, H * W * A) and deltas (B, H * W * A, 4), location-major."""
        convs = self.conv if isinstance(self.conv, nn.Sequential) else [self.conv]
        for conv in convs:
            x = F.relu(conv(x))
        logits = self.objectness_logits(x)  # (B, A, H, W)
        deltas = self.anchor_deltas(x)  # (B, A * 4, H, W)
        b, a, h, w = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(b, h * w * a)  # (B, H * W * A)
        deltas = deltas.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4)  # (B, H * W * A, 4)
        return logits, deltas


class RPN(nn.Module):
    """Region proposals over p2..p6 (test-time behaviour of detectron2's ``RPN``)."""

    def __init__(self, cfg: DetectorConfig, channels: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = strides
        self.rpn_head = RPNHead(channels, len(cfg.aspect_ratios), cfg.rpn_convs)
        for i, size in enumerate(cfg.anchor_sizes):
            self.register_buffer(f"cell_anchors_{i}", cell_anchors(size, cfg.aspect_ratios), persistent=False)

    def forward(self, features: list[Tensor], image_size: tuple[int, int]) -> list[tuple[Tensor, Tensor]]:
        """Per image: (proposal boxes (P, 4) xyxy, objectness logits (P,)), best first, P <= post_nms_topk."""
        cfg = self.cfg
        boxes, logits, levels = [], [], []
        for i, (feat, stride) in enumerate(zip(features, self.strides, strict=True)):
            level_logits, level_deltas = self.rpn_head(feat)  # (B, HWA), (B, HWA, 4)
            anchors = grid_anchors(getattr(self, f"cell_anchors_{i}"), feat.shape[-2:], stride)  # (HWA, 4)
            k = min(cfg.pre_nms_topk, level_logits.shape[1])
            top, idx = level_logits.float().topk(k, dim=1)  # (B, k)
            deltas = torch.gather(level_deltas, 1, idx[..., None].expand(-1, -1, 4))  # (B, k, 4)
            boxes.append(decode_boxes(deltas, anchors[idx]))  # (B, k, 4)
            logits.append(top)
            levels.append(torch.full_like(idx, i))
        all_boxes, all_logits, all_levels = torch.cat(boxes, 1), torch.cat(logits, 1), torch.cat(levels, 1)
        out = []
        for b in range(all_boxes.shape[0]):
            bx, sc, lv = all_boxes[b], all_logits[b], all_levels[b]
            ok = torch.isfinite(bx).all(dim=1) & torch.isfinite(sc)
            bx, sc, lv = bx[ok], sc[ok], lv[ok]
            bx = clip_boxes(bx, image_size)
            ok = nonempty(bx)
            bx, sc, lv = bx[ok], sc[ok], lv[ok]
            keep = batched_nms(bx, sc, lv, cfg.rpn_nms)[: cfg.post_nms_topk]
            out.append((bx[keep], sc[keep]))
        return out


# ---------------------------------------------------------------------------------------------------------------------
# RoI heads


class BoxHead(nn.Module):
    """``num_convs`` 3x3 convs (no bias, channel LN, ReLU), then fully connected + ReLU (FastRCNNConvFCHead)."""

    def __init__(self, channels: int, resolution: int, num_convs: int, conv_dim: int, fc_dim: int) -> None:
        super().__init__()
        self.num_convs = num_convs
        for k in range(num_convs):
            self.add_module(f"conv{k + 1}", ConvLN(channels if k == 0 else conv_dim, conv_dim, 3))
        flat = (conv_dim if num_convs else channels) * resolution * resolution
        self.fc1 = nn.Linear(flat, fc_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_uniform_(self.fc1.weight, a=1)
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, r, r) pooled features -> (R, fc_dim)."""
        for k in range(self.num_convs):
            x = F.relu(getattr(self, f"conv{k + 1}")(x))
        return F.relu(self.fc1(x.flatten(1)))  # (R, C * r * r) -> (R, fc_dim)


class BoxPredictor(nn.Module):
    """Class scores (background last) and class-specific box deltas (FastRCNNOutputLayers)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class ROIHeads(nn.Module):
    """Pool each proposal from its pyramid level, classify it and refine its box per class; then filter and NMS."""

    def __init__(self, cfg: DetectorConfig, channels: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.scales = tuple(1.0 / s for s in strides)
        res = cfg.pooler_resolution
        self.box_head = BoxHead(channels, res, cfg.box_convs, cfg.box_conv_dim, cfg.box_fc_dim)
        self.box_predictor = BoxPredictor(cfg.box_fc_dim, cfg.num_classes)

    def pool(self, features: list[Tensor], proposals: list[Tensor]) -> Tensor:
        """ROIAlignV2 of every proposal on its level: (R, C, r, r), R = total proposals, in image order."""
        res = self.cfg.pooler_resolution
        boxes = torch.cat(proposals)  # (R, 4)
        image = torch.cat([torch.full((len(p), 1), float(i), device=boxes.device) for i, p in enumerate(proposals)])
        rois = torch.cat([image, boxes.to(image.dtype)], dim=1)  # (R, 5) [image, x1, y1, x2, y2]
        levels = assign_levels(boxes, len(features))
        out = features[0].new_zeros(len(rois), features[0].shape[1], res, res)
        for level, (feat, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.nonzero(levels == level).flatten()
            if idx.numel():
                out[idx] = roi_align(feat, rois[idx], res, scale, sampling_ratio=0, aligned=True)
        return out

    def forward(self, features: list[Tensor], proposals: list[Tensor], image_size: tuple[int, int]) -> list[Detections]:
        cfg = self.cfg
        x = self.box_head(self.pool(features, proposals))  # (R, fc_dim)
        logits, deltas = self.box_predictor(x)  # (R, K + 1), (R, 4K)
        out = []
        for logit, delta, boxes in zip(
            logits.split([len(p) for p in proposals]), deltas.split([len(p) for p in proposals]), proposals, strict=True
        ):
            scores = F.softmax(logit.float(), dim=-1)  # (P, K + 1)
            k = cfg.num_classes
            pred = decode_boxes(delta.view(-1, k, 4), boxes[:, None, :], cfg.box_weights)  # (P, K, 4)
            out.append(self._filter(pred, scores, image_size))
        return out

    def _filter(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> Detections:
        """Clip, threshold, per-class NMS and keep the best detections of one image (detectron2's fast_rcnn_inference).

        Args:
            boxes: (P, K, 4) class-specific boxes; scores: (P, K + 1) softmax scores, background last.
        """
        cfg = self.cfg
        ok = torch.isfinite(boxes).flatten(1).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = clip_boxes(boxes[ok], image_size), scores[ok, :-1]  # drop the background column
        mask = scores > cfg.score_thresh  # (P, K)
        rows, labels = mask.nonzero(as_tuple=True)
        boxes, scores = boxes[rows, labels], scores[rows, labels]
        keep = batched_nms(boxes, scores, labels, cfg.nms_thresh)[: cfg.max_detections]
        return Detections(boxes[keep], scores[keep], labels[keep])


class FasterRCNN(nn.Module):
    """RPN + RoI heads on pyramid features {"p2".."p6"}; ``forward`` returns the detections of every image."""

    def __init__(self, cfg: DetectorConfig, channels: int, patch_size: int) -> None:
        super().__init__()
        if patch_size % 4:
            raise ValueError(f"the pyramid needs a patch size divisible by 4, got {patch_size}")
        self.cfg = cfg
        strides = (patch_size // 4, patch_size // 2, patch_size, patch_size * 2, patch_size * 4)  # p2..p6
        self.proposal_generator = RPN(cfg, channels, strides)
        self.roi_heads = ROIHeads(cfg, channels, strides[:4])

    def forward(self, features: dict[str, Tensor], image_size: tuple[int, int]) -> list[Detections]:
        """Detections per image, boxes clipped to ``image_size`` (height, width)."""
        levels = [features[f"p{k}"] for k in range(2, 7)]
        proposals = self.proposal_generator(levels, image_size)
        return self.roi_heads(levels[:4], [p for p, _ in proposals], image_size)
