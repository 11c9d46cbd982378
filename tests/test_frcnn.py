"""The Faster R-CNN head: box coding, anchors, level assignment, RPN and RoI-head inference against hand-made cases."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import TINY_HEAD, TINY_VITDET, randomize_
from rgtp.models.frcnn import (
    RPN,
    FasterRCNN,
    ROIHeads,
    RPNHead,
    assign_levels,
    cell_anchors,
    decode_boxes,
    encode_boxes,
    grid_anchors,
)
from rgtp.models.vitdet import ViTDet
from rgtp.ops import roi_align


def test_decode_matches_the_formula_and_inverts_encode() -> None:
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])  # w 40, h 20, centre (30, 30)
    deltas = torch.tensor([[1.0, -2.0, math.log(2.0) * 5, 0.0]])
    out = decode_boxes(deltas, box, (10.0, 10.0, 5.0, 5.0))
    # centre moves by (0.1 * 40, -0.2 * 20) = (4, -4); width doubles to 80; height stays 20
    torch.testing.assert_close(out, torch.tensor([[-6.0, 16.0, 74.0, 36.0]]))
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=gen) * 100
    boxes = torch.cat([ref, ref + 1 + torch.rand(50, 2, generator=gen) * 50], 1)
    targets = torch.cat([ref + 3, ref + 5 + torch.rand(50, 2, generator=gen) * 80], 1)
    torch.testing.assert_close(decode_boxes(encode_boxes(targets, boxes), boxes), targets, rtol=1e-5, atol=1e-3)


def test_decode_clamps_huge_scales() -> None:
    out = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(1000.0, rel=1e-4)  # exp(log(1000/16)) * 16


def test_cell_anchors_have_the_size_and_ratio() -> None:
    cells = cell_anchors(64, (0.5, 1.0, 2.0))
    w, h = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 64.0 * 64))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(cells[:, :2] + cells[:, 2:], torch.zeros(3, 2))  # centred on the origin


def test_anchor_order_matches_the_rpn_output_order() -> None:
    """Anchor i of grid_anchors must be the anchor of logit i (location-major, aspect-minor)."""
    head = RPNHead(channels=4, num_anchors=3, num_convs=2)
    x = torch.randn(2, 4, 5, 7)
    logits, deltas = head(x)
    raw_logits = head.objectness_logits(torch.relu(head.conv.conv1(torch.relu(head.conv.conv0(x)))))  # (B, A, H, W)
    raw_deltas = head.anchor_deltas(torch.relu(head.conv.conv1(torch.relu(head.conv.conv0(x)))))  # (B, 4A, H, W)
    anchors = grid_anchors(cell_anchors(32, (0.5, 1.0, 2.0)), (5, 7), 8)
    for i in (0, 1, 2, 3, 50, 104):
        y, rest = divmod(i, 7 * 3)
        xx, a = divmod(rest, 3)
        assert logits[1, i] == raw_logits[1, a, y, xx]
        torch.testing.assert_close(deltas[1, i], raw_deltas[1, 4 * a : 4 * a + 4, y, xx])
        centre = (anchors[i, :2] + anchors[i, 2:]) / 2
        torch.testing.assert_close(centre, torch.tensor([xx * 8.0, y * 8.0]))
        torch.testing.assert_close(anchors[i], cell_anchors(32, (0.5, 1.0, 2.0))[a] + centre.repeat(2))


def test_single_conv_rpn_head_uses_detectron2_names() -> None:
    assert "conv.weight" in RPNHead(4, 3, 1).state_dict()
    assert "conv.conv1.weight" in RPNHead(4, 3, 2).state_dict()


def test_level_assignment_follows_the_canonical_rule() -> None:
    boxes = torch.tensor(
        [
            [0, 0, 224, 224],  # canonical -> p4
            [0, 0, 112, 112],  # -> p3
            [0, 0, 111, 111],  # just below -> p2
            [0, 0, 10, 10],  # tiny -> p2 (clamped)
            [0, 0, 448, 448],  # -> p5
            [0, 0, 2000, 2000],  # huge -> p5 (clamped)
            [5, 5, 5, 5],  # empty -> p2
        ],
        dtype=torch.float32,
    )
    assert assign_levels(boxes, 4).tolist() == [2, 1, 0, 0, 3, 3, 0]


def test_rpn_proposals_are_clipped_ranked_and_limited() -> None:
    cfg = dataclasses.replace(TINY_HEAD, pre_nms_topk=30, post_nms_topk=12)
    torch.manual_seed(0)
    rpn = RPN(cfg, channels=8, strides=(2, 4, 8, 16, 32)).eval()
    feats = [torch.randn(2, 8, 40 // 2**k, 40 // 2**k) for k in range(4)] + [torch.randn(2, 8, 3, 3)]
    with torch.no_grad():
        out = rpn(feats, (80, 80))
    assert len(out) == 2
    for boxes, logits in out:
        assert 0 < len(boxes) <= 12
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 80).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (logits[:-1] >= logits[1:]).all()  # best first


def test_rpn_keeps_the_best_anchor_and_suppresses_its_duplicates() -> None:
    """One level, zero deltas: proposals are anchors; NMS at 0.7 removes anchors overlapping a better one."""
    cfg = dataclasses.replace(
        TINY_HEAD,
        anchor_sizes=(8, 8, 8, 8, 8),
        aspect_ratios=(1.0,),
        pre_nms_topk=1000,
        post_nms_topk=1000,
        rpn_nms=0.7,
    )
    rpn = RPN(cfg, channels=1, strides=(4, 8, 16, 32, 64)).eval()
    with torch.no_grad():
        for p in rpn.parameters():
            p.zero_()
        conv1 = rpn.rpn_head.conv.conv1 if cfg.rpn_convs > 1 else rpn.rpn_head.conv
        rpn.rpn_head.conv.conv0.weight[0, 0, 1, 1] = 1.0  # pass the input through both convs
        conv1.weight[0, 0, 1, 1] = 1.0
        rpn.rpn_head.objectness_logits.weight.fill_(1.0)
    p2 = torch.zeros(1, 1, 4, 4)
    p2[0, 0, 1, 1], p2[0, 0, 1, 2] = 5.0, 4.0  # two neighbouring 8x8 anchors 4 px apart: IoU 1/3, both kept
    feats = [p2] + [torch.zeros(1, 1, 1, 1)] * 4
    with torch.no_grad():
        boxes, logits = rpn(feats, (16, 16))[0]
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 8.0, 8.0]))  # centre (4, 4), clipped... unchanged
    torch.testing.assert_close(boxes[1], torch.tensor([4.0, 0.0, 12.0, 8.0]))
    assert logits[0] == 5.0 and logits[1] == 4.0


def test_roi_pooling_uses_each_boxes_level() -> None:
    torch.manual_seed(0)
    heads = ROIHeads(TINY_HEAD, channels=4, strides=(4, 8, 16, 32)).eval()
    feats = [torch.randn(2, 4, 64 // 2**k, 64 // 2**k) for k in range(4)]
    proposals = [
        torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 250.0, 250.0]]),
        torch.tensor([[5.0, 5.0, 120.0, 140.0]]),
    ]
    pooled = heads.pool(feats, proposals)
    levels = assign_levels(torch.cat(proposals), 4).tolist()
    rows = [(0, proposals[0][0]), (0, proposals[0][1]), (1, proposals[1][0])]
    for i, ((image, box), level) in enumerate(zip(rows, levels, strict=True)):
        roi = torch.cat([torch.tensor([float(image)]), box])[None]
        ref = roi_align(feats[level], roi, 7, 1 / (4 * 2**level), sampling_ratio=0, aligned=True)
        torch.testing.assert_close(pooled[i : i + 1], ref)


def test_roi_filter_thresholds_nms_and_limits() -> None:
    cfg = dataclasses.replace(TINY_HEAD, num_classes=2, score_thresh=0.3, nms_thresh=0.5, max_detections=3)
    heads = ROIHeads(cfg, channels=4, strides=(4, 8, 16, 32))
    boxes = torch.tensor(
        [
            [[0, 0, 10, 10], [0, 0, 10, 10]],
            [[1, 0, 11, 10], [50, 50, 60, 60]],  # class 0 overlaps proposal 0's box (IoU 9/11): suppressed
            [[30, 30, 40, 40], [0, 0, 10, 10]],
            [[70, 70, 80, 80], [20, 20, 25, 25]],
        ],
        dtype=torch.float32,
    )  # (P, K, 4)
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],  # class 0 below threshold; class 1 box is far from other class-1 boxes that survive
            [0.35, 0.4, 0.25],
        ]
    )  # (P, K + 1), background last
    det = heads._filter(boxes, scores, (100, 100))
    # candidates > 0.3: (0,c0) .9, (1,c0) .8 suppressed by (0,c0), (2,c1) .7, (3,c0) .35, (3,c1) .4; top 3
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.4])
    assert det.labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(det.boxes[2], torch.tensor([20.0, 20.0, 25.0, 25.0]))


def test_detector_end_to_end_on_the_tiny_model() -> None:
    torch.manual_seed(0)
    model = randomize_(ViTDet(TINY_VITDET))
    with torch.no_grad():
        model.head.roi_heads.box_predictor.cls_score.bias[2] = 6.0  # type: ignore[union-attr, index]
        images = torch.randn(2, 3, 80, 80)
        dets = model.detect(model(images))
        again = model.detect(model(images))
    assert len(dets) == 2
    for det, det2 in zip(dets, again, strict=True):
        assert 0 < len(det.boxes) <= TINY_HEAD.max_detections
        assert det.boxes.shape == (len(det.scores), 4) and det.labels.dtype == torch.long
        assert (det.labels == 2).all() and (det.scores > TINY_HEAD.score_thresh).all()
        assert (det.boxes >= 0).all() and (det.boxes <= 80).all()
        assert (det.scores[:-1] >= det.scores[1:]).all()
        torch.testing.assert_close(det.boxes, det2.boxes)


def test_untrained_full_size_classifier_detects_nothing() -> None:
    """30 classes: near-uniform softmax scores (1/31) stay under the 0.05 threshold, so no boxes."""
    torch.manual_seed(0)
    head = FasterRCNN(dataclasses.replace(TINY_HEAD, num_classes=30), channels=16, patch_size=8).eval()
    feats = {f"p{k}": torch.randn(1, 16, 160 // 2**k, 160 // 2**k) for k in range(2, 7)}
    with torch.no_grad():
        assert len(head(feats, (80, 80))[0].boxes) == 0


def test_a_model_without_head_says_so() -> None:
    model = ViTDet(dataclasses.replace(TINY_VITDET, head=None))
    assert model.head is None
    with pytest.raises(RuntimeError, match="no detection head"):
        model.detect({})
