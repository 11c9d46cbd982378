"""The Faster R-CNN head of ViTDet-VID on the simple feature pyramid (method §1.1), plain PyTorch.

Structure, parameter names and test-time behaviour follow detectron2 (``proposal_generator.rpn_head.conv.conv0``,
``roi_heads.box_head.conv1.norm``, ``roi_heads.box_predictor.bbox_pred``...), so the official checkpoint maps onto it
key for key:

* RPN over p2..p6: one anchor size per level, three aspect ratios, two 3x3 convs, per-level top-k of the objectness
  logits, boxes clipped to the image, NMS per level, then the best ``post_nms_topk`` proposals.
* RoI heads on p2..p5: ROIAlignV2 (aligned, adaptive sampling) with detectron2's level assignment, a 4-conv (LN) +
  1-fc box head, class-specific box regression, softmax scores (background last), score threshold, per-class NMS.
* Training (:meth:`FasterRCNN.losses`): detectron2's standard Faster R-CNN losses, re-implemented from its documented
  behaviour (anchor and RoI matching and sampling, objectness BCE, class cross-entropy, L1 box losses); the inference
  path is not touched by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgtp.config import ConfigError, DetectorConfig
from rgtp.models.layers import ConvLN
from rgtp.ops import batched_nms, box_iou, clip_boxes, nonempty, roi_align

__all__ = [
    "RPN",
    "BoxHead",
    "Detections",
    "FRCNNTrainConfig",
    "FasterRCNN",
    "LossTerms",
    "ROIHeads",
    "assign_levels",
    "box_loss",
    "cell_anchors",
    "decode_boxes",
    "encode_boxes",
    "grid_anchors",
    "match_anchors",
    "sample_indices",
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
# Training: settings, matching, sampling


@dataclass(frozen=True)
class FRCNNTrainConfig:
    """Training settings of the head (detectron2's defaults unless noted).

    The RPN's training proposals use the head's test-time top-k values unless given here (detectron2 uses 2000 / 1000
    per image in training against 1000 / 1000 at test; the small detectors see few objects, and proposals near the
    test-time distribution train the RoI heads for what they see at test).
    """

    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)  # anchors below: background; at or above: foreground
    rpn_batch_per_image: int = 256  # sampled anchors per image
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_topk: int | None = None  # per level (None: the head's test value)
    rpn_post_nms_topk: int | None = None  # per image (None: the head's test value)
    roi_iou_threshold: float = 0.5  # proposals at or above: foreground
    roi_batch_per_image: int = 128  # sampled RoIs per image (detectron2: 512)
    roi_positive_fraction: float = 0.25
    append_gt: bool = True  # add the ground-truth boxes to the proposals
    smooth_l1_beta: float = 0.0  # 0: L1 (detectron2's default for both box losses)

    def __post_init__(self) -> None:
        low, high = self.rpn_iou_thresholds
        if not 0.0 <= low <= high <= 1.0 or not 0.0 <= self.roi_iou_threshold <= 1.0:
            raise ConfigError(f"IoU thresholds must lie in [0, 1] (low <= high), got {self.rpn_iou_thresholds}")
        if self.rpn_batch_per_image < 1 or self.roi_batch_per_image < 1:
            raise ConfigError("rpn_batch_per_image and roi_batch_per_image must be >= 1")
        if not (0.0 < self.rpn_positive_fraction <= 1.0 and 0.0 < self.roi_positive_fraction <= 1.0):
            raise ConfigError("positive fractions must lie in (0, 1]")
        if any(k is not None and k < 1 for k in (self.rpn_pre_nms_topk, self.rpn_post_nms_topk)):
            raise ConfigError("training top-k values must be >= 1 or None")
        if self.smooth_l1_beta < 0:
            raise ConfigError(f"smooth_l1_beta must be >= 0, got {self.smooth_l1_beta}")


class LossTerms(NamedTuple):
    """Summed losses of a batch and what each is normalised by (sums over processes give the global batch's loss)."""

    sums: dict[str, Tensor]  # loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg: scalar sums over the batch
    counts: dict[str, float]  # the normaliser of each term

    def normalized(self, counts: dict[str, float] | None = None) -> dict[str, Tensor]:
        """Each sum over its count (``counts``: e.g. the counts of the whole global batch; default: this batch's)."""
        counts = counts or self.counts
        return {k: v / max(counts[k], 1.0) for k, v in self.sums.items()}


def match_anchors(gt: Tensor, anchors: Tensor, thresholds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """detectron2's RPN matcher: label each anchor by its best IoU with the ground truth.

    Args:
        gt: (G, 4) xyxy ground-truth boxes (G may be 0); anchors: (N, 4).
        thresholds: (low, high): best IoU < low -> 0 (background), >= high -> 1 (foreground), between -> -1 (ignored).

    Returns:
        (labels (N,) long, matched ground-truth index (N,) long). Every ground-truth box's best anchors (all ties)
        are foreground as well ("low-quality matches"), unless that box overlaps no anchor at all.
    """
    n = anchors.shape[0]
    matched = torch.zeros(n, dtype=torch.long, device=anchors.device)
    if gt.shape[0] == 0:
        return torch.zeros(n, dtype=torch.long, device=anchors.device), matched
    iou = box_iou(gt.float(), anchors.float())  # (G, N)
    best, matched = iou.max(dim=0)  # (N,)
    low, high = thresholds
    labels = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    labels[best < low] = 0
    labels[best >= high] = 1
    top = iou.max(dim=1, keepdim=True).values  # (G, 1): each box's best IoU
    labels[((iou == top) & (top > 0)).any(dim=0)] = 1
    return labels, matched


def sample_indices(
    positive: Tensor, negative: Tensor, num: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """detectron2's ``subsample_labels``: up to ``num * positive_fraction`` random positives, negatives for the rest.

    Args:
        positive, negative: (N,) boolean masks (disjoint).
        generator: a CPU generator for the random choice (None: the global one).

    Returns:
        (positive indices, negative indices), each in random order.
    """
    pos, neg = torch.nonzero(positive).flatten(), torch.nonzero(negative).flatten()
    num_pos = min(pos.numel(), int(num * positive_fraction))
    num_neg = min(neg.numel(), num - num_pos)
    pos = pos[torch.randperm(pos.numel(), generator=generator)[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator)[:num_neg].to(neg.device)]
    return pos, neg


def box_loss(deltas: Tensor, targets: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (beta > 0) or L1 (beta = 0) loss between (P, 4) predicted and target deltas."""
    if beta > 0:
        return F.smooth_l1_loss(deltas.float(), targets, beta=beta, reduction="sum")
    return F.l1_loss(deltas.float(), targets, reduction="sum")


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

    def predict(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, H * W * A), deltas (B, H * W * A, 4) and anchors (H * W * A, 4)."""
        logits, deltas, anchors = [], [], []
        for i, (feat, stride) in enumerate(zip(features, self.strides, strict=True)):
            level_logits, level_deltas = self.rpn_head(feat)  # (B, HWA), (B, HWA, 4)
            logits.append(level_logits)
            deltas.append(level_deltas)
            anchors.append(grid_anchors(getattr(self, f"cell_anchors_{i}"), feat.shape[-2:], stride))  # (HWA, 4)
        return logits, deltas, anchors

    def propose(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        image_size: tuple[int, int],
        pre_nms_topk: int,
        post_nms_topk: int,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image: (proposal boxes (P, 4) xyxy, objectness logits (P,)), best first, P <= ``post_nms_topk``."""
        boxes, scores, levels = [], [], []
        for i, (level_logits, level_deltas, level_anchors) in enumerate(zip(logits, deltas, anchors, strict=True)):
            k = min(pre_nms_topk, level_logits.shape[1])
            top, idx = level_logits.float().topk(k, dim=1)  # (B, k)
            picked = torch.gather(level_deltas, 1, idx[..., None].expand(-1, -1, 4))  # (B, k, 4)
            boxes.append(decode_boxes(picked, level_anchors[idx]))  # (B, k, 4)
            scores.append(top)
            levels.append(torch.full_like(idx, i))
        all_boxes, all_logits, all_levels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels, 1)
        out = []
        for b in range(all_boxes.shape[0]):
            bx, sc, lv = all_boxes[b], all_logits[b], all_levels[b]
            ok = torch.isfinite(bx).all(dim=1) & torch.isfinite(sc)
            bx, sc, lv = bx[ok], sc[ok], lv[ok]
            bx = clip_boxes(bx, image_size)
            ok = nonempty(bx)
            bx, sc, lv = bx[ok], sc[ok], lv[ok]
            keep = batched_nms(bx, sc, lv, self.cfg.rpn_nms)[:post_nms_topk]
            out.append((bx[keep], sc[keep]))
        return out

    def forward(self, features: list[Tensor], image_size: tuple[int, int]) -> list[tuple[Tensor, Tensor]]:
        """Per image: (proposal boxes (P, 4) xyxy, objectness logits (P,)), best first, P <= post_nms_topk."""
        cfg = self.cfg
        return self.propose(*self.predict(features), image_size, cfg.pre_nms_topk, cfg.post_nms_topk)

    def losses(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        gt_boxes: list[Tensor],
        generators: list[torch.Generator | None],
        train: FRCNNTrainConfig,
    ) -> tuple[Tensor, Tensor]:
        """Summed objectness (binary cross-entropy) and box (smooth L1 on encoded deltas) losses over the sampled
        anchors of every image, not yet normalised (see :meth:`FasterRCNN.loss_terms`)."""
        all_anchors = torch.cat(anchors)  # (N, 4)
        all_logits, all_deltas = torch.cat(logits, 1), torch.cat(deltas, 1)  # (B, N), (B, N, 4)
        cls_sum = loc_sum = all_logits.new_zeros((), dtype=torch.float32)
        for b, (gt, gen) in enumerate(zip(gt_boxes, generators, strict=True)):
            labels, matched = match_anchors(gt, all_anchors, train.rpn_iou_thresholds)
            pos, neg = sample_indices(
                labels == 1, labels == 0, train.rpn_batch_per_image, train.rpn_positive_fraction, gen
            )
            picked = torch.cat([pos, neg])
            target = (labels[picked] == 1).float()
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(
                all_logits[b, picked].float(), target, reduction="sum"
            )
            gt_matched = gt[matched[pos]] if len(gt) else all_anchors[pos]  # no positive without ground truth
            targets = encode_boxes(gt_matched, all_anchors[pos])  # (P, 4)
            loc_sum = loc_sum + box_loss(all_deltas[b, pos], targets, train.smooth_l1_beta)
        return cls_sum, loc_sum


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

    def losses(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        targets: list[tuple[Tensor, Tensor]],
        generators: list[torch.Generator | None],
        train: FRCNNTrainConfig,
    ) -> tuple[Tensor, Tensor, int]:
        """Summed classification (cross-entropy, background last) and class-specific box losses over the sampled
        RoIs of every image, and the number of sampled RoIs (their normaliser)."""
        k = self.cfg.num_classes
        boxes, classes, gt_boxes = [], [], []
        for props, (gt, labels), gen in zip(proposals, targets, generators, strict=True):
            if train.append_gt:
                props = torch.cat([props, gt.to(props.dtype)])  # (P + G, 4)
            if len(gt):
                best, matched = box_iou(gt.float(), props.float()).max(dim=0)  # (P,)
                fg = best >= train.roi_iou_threshold
                cls = torch.where(fg, labels[matched], torch.full_like(matched, k))  # (P,), k = background
                matched_boxes = gt[matched]  # (P, 4)
            else:
                fg = torch.zeros(len(props), dtype=torch.bool, device=props.device)
                cls = torch.full((len(props),), k, dtype=torch.long, device=props.device)
                matched_boxes = props
            pos, neg = sample_indices(fg, ~fg, train.roi_batch_per_image, train.roi_positive_fraction, gen)
            picked = torch.cat([pos, neg])
            boxes.append(props[picked])
            classes.append(cls[picked])
            gt_boxes.append(matched_boxes[picked])
        logits, deltas = self.box_predictor(self.box_head(self.pool(features, boxes)))  # (R, K + 1), (R, 4K)
        cls = torch.cat(classes)  # (R,)
        cls_sum = F.cross_entropy(logits.float(), cls, reduction="sum")
        fg_idx = torch.nonzero(cls < k).flatten()  # (F,)
        pred = deltas.view(-1, k, 4)[fg_idx, cls[fg_idx]]  # (R, 4K) -> (R, K, 4) -> (F, 4)
        target = encode_boxes(torch.cat(gt_boxes)[fg_idx], torch.cat(boxes)[fg_idx], self.cfg.box_weights)  # (F, 4)
        return cls_sum, box_loss(pred, target, train.smooth_l1_beta), len(cls)

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

    def loss_terms(
        self,
        features: dict[str, Tensor],
        targets: Sequence[tuple[Tensor, Tensor]],
        image_size: tuple[int, int],
        train: FRCNNTrainConfig | None = None,
        seeds: Sequence[int] | None = None,
    ) -> LossTerms:
        """detectron2's Faster R-CNN training losses, as sums with their normalisers.

        * RPN: anchors matched to the ground truth (:func:`match_anchors`), ``rpn_batch_per_image`` sampled per image
          (at most half positive), binary cross-entropy on the objectness logits and an L1 (smooth L1) loss on the
          encoded deltas of the positives; both normalised by ``rpn_batch_per_image * images`` (detectron2 divides by
          this nominal count, not by the number actually sampled).
        * RoI heads: proposals from the detached RPN outputs (training top-k of :class:`FRCNNTrainConfig`) plus the
          ground-truth boxes, matched at IoU 0.5, ``roi_batch_per_image`` sampled per image (at most a quarter
          foreground); cross-entropy over the classes + background (last) and a class-specific L1 (smooth L1) loss
          with ``box_weights`` on the foreground; both normalised by the number of sampled RoIs.

        Args:
            features: the pyramid {"p2".."p6"} of a batch of B images (with gradients).
            targets: per image, (boxes (G, 4) xyxy in input pixels, labels (G,) long in [0, num_classes)).
            image_size: (height, width) the proposals are clipped to.
            seeds: per image, the seed of its anchor and RoI sampling (None: the global random state); per-image
                seeds make a sample's losses independent of the batch it lands in (and of the number of processes).
        """
        train = train or FRCNNTrainConfig()
        cfg = self.cfg
        levels = [features[f"p{k}"] for k in range(2, 7)]
        device = levels[0].device
        if len(targets) != levels[0].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {levels[0].shape[0]} images")
        gens: list[torch.Generator | None] = (
            [None] * len(targets) if seeds is None else [torch.Generator().manual_seed(int(s)) for s in seeds]
        )
        gt = [(b.to(device, torch.float32).reshape(-1, 4), lab.to(device, torch.long)) for b, lab in targets]
        rpn = self.proposal_generator
        logits, deltas, anchors = rpn.predict(levels)
        rpn_cls, rpn_loc = rpn.losses(logits, deltas, anchors, [b for b, _ in gt], gens, train)
        with torch.no_grad():
            proposals = rpn.propose(
                [x.detach() for x in logits],
                [x.detach() for x in deltas],
                anchors,
                image_size,
                train.rpn_pre_nms_topk or cfg.pre_nms_topk,
                train.rpn_post_nms_topk or cfg.post_nms_topk,
            )
        roi_cls, roi_box, rois = self.roi_heads.losses(levels[:4], [p for p, _ in proposals], gt, gens, train)
        anchors_sampled = float(train.rpn_batch_per_image * len(targets))
        return LossTerms(
            {"loss_rpn_cls": rpn_cls, "loss_rpn_loc": rpn_loc, "loss_cls": roi_cls, "loss_box_reg": roi_box},
            {"loss_rpn_cls": anchors_sampled, "loss_rpn_loc": anchors_sampled, "loss_cls": rois, "loss_box_reg": rois},
        )

    def losses(
        self,
        features: dict[str, Tensor],
        targets: Sequence[tuple[Tensor, Tensor]],
        image_size: tuple[int, int],
        train: FRCNNTrainConfig | None = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """The four normalised training losses of a batch (see :meth:`loss_terms`); inference is unchanged."""
        return self.loss_terms(features, targets, image_size, train, seeds).normalized()
