"""Tests for rgtp.ops against naive loop implementations of the documented semantics (and torchvision, if usable)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import cache

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from rgtp import ops
from rgtp.ops import batched_nms, box_area, box_iou, clip_boxes, nms, nonempty, roi_align


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------- naive


def naive_iou32(a: list[float], b: list[float]) -> float:
    """IoU with every operation rounded to float32 (as a float32 kernel computes it), returned as a Python float."""
    f = np.float32
    w = max(f(0), min(f(a[2]), f(b[2])) - max(f(a[0]), f(b[0])))
    h = max(f(0), min(f(a[3]), f(b[3])) - max(f(a[1]), f(b[1])))
    inter = w * h
    union = (f(a[2]) - f(a[0])) * (f(a[3]) - f(a[1])) + (f(b[2]) - f(b[0])) * (f(b[3]) - f(b[1])) - inter
    return 0.0 if union == 0 else float(inter / union)


def naive_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Greedy NMS: visit by decreasing score (ties: input order); keep unless IoU > thr with a kept box."""
    bl, sl = boxes.tolist(), scores.tolist()
    order = sorted(range(len(bl)), key=lambda i: -sl[i])  # sorted() is stable
    kept: list[int] = []
    for i in order:
        if all(naive_iou32(bl[i], bl[k]) <= thr for k in kept):
            kept.append(i)
    return kept


def naive_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float) -> list[int]:
    kept: list[int] = []
    for g in sorted(set(idxs.tolist())):
        members = [i for i, v in enumerate(idxs.tolist()) if v == g]
        kept += [members[k] for k in naive_nms(boxes[members], scores[members], thr)]
    sl = scores.tolist()
    return sorted(kept, key=lambda i: (-sl[i], i))


def naive_bilinear(fmap: np.ndarray, y: float, x: float) -> np.ndarray:
    """detectron2's bilinear_interpolate on a (C, H, W) map, literally."""
    _, H, W = fmap.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return np.zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = math.floor(y), math.floor(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def naive_roi_align(features, rois, output_size, scale, sampling_ratio=0, aligned=True) -> torch.Tensor:
    """ROIAlign with loops over ROIs, bins and samples (float64, channels vectorised)."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    feats = features.double().numpy()
    out = np.zeros((rois.shape[0], feats.shape[1], oh, ow))
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sw, y2 * scale - offset - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / ow, rh / oh
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(gh * gw, 1)
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(feats.shape[1])
                for iy in range(gh):
                    y = sh + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sw + pw * bw + (ix + 0.5) * bw / gw
                        acc += naive_bilinear(feats[int(b)], y, x)
                out[r, :, ph, pw] = acc / count
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------------- inputs


def random_boxes(n: int, seed: int, size: float = 100.0, clustered: bool = True) -> torch.Tensor:
    """(n, 4) float32 xyxy boxes; clustered around a few centres so that many pairs overlap."""
    g = _gen(seed)
    if clustered:
        centres = torch.rand(max(1, n // 8), 2, generator=g) * size
        c = centres[torch.randint(0, centres.shape[0], (n,), generator=g)] + torch.randn(n, 2, generator=g) * 4
    else:
        c = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


def distinct_scores(n: int, seed: int) -> torch.Tensor:
    return (torch.randperm(n, generator=_gen(seed)).float() + 1) / (n + 1)


def random_rois(r: int, batch: int, hw: tuple[int, int], scale: float, seed: int, spill: float = 0.3) -> torch.Tensor:
    """(r, 5) rois in image coordinates, spilling ``spill`` of the image size outside it on each side."""
    g = _gen(seed)
    ih, iw = hw[0] / scale, hw[1] / scale
    xs = (torch.rand(r, 2, generator=g) * (1 + 2 * spill) - spill) * iw
    ys = (torch.rand(r, 2, generator=g) * (1 + 2 * spill) - spill) * ih
    b = torch.randint(0, batch, (r, 1), generator=g).float()
    x1, x2 = xs.min(1, keepdim=True).values, xs.max(1, keepdim=True).values
    y1, y2 = ys.min(1, keepdim=True).values, ys.max(1, keepdim=True).values
    return torch.cat([b, x1, y1, x2, y2], dim=1)


def _is_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor, thr: float) -> bool:
    """Characterises greedy NMS exactly (for distinct scores): kept boxes never overlap more than thr, and every
    dropped box overlaps more than thr with a kept box of higher score."""
    iou = box_iou(boxes, boxes[keep])  # (N, K)
    if (iou[keep] > thr).triu(diagonal=1).any():
        return False
    dropped = torch.ones(boxes.shape[0], dtype=torch.bool)
    dropped[keep] = False
    higher = scores[keep][None, :] > scores[:, None]  # (N, K)
    return bool(((iou > thr) & higher).any(1)[dropped].all())


# -------------------------------------------------------------------------------------------------------- boxes


def test_box_area_and_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    b = torch.tensor([[2.0, 1.0, 6.0, 5.0], [10.0, 10.0, 11.0, 11.0], [0.0, 0.0, 4.0, 2.0]])
    assert_close(box_area(b), torch.tensor([16.0, 1.0, 8.0]))
    # overlap [2,4]x[1,2] = 2; union 8 + 16 - 2 = 22
    assert_close(box_iou(a, b), torch.tensor([[2.0 / 22.0, 0.0, 1.0]]))
    assert box_area(torch.zeros(2, 3, 4)).shape == (2, 3)


def test_box_iou_zero_union_and_shapes():
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # degenerate: union with itself is 0
    iou = box_iou(z, z)
    assert iou.item() == 0.0 and not torch.isnan(iou).any()
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    with pytest.raises(ValueError, match="box_iou"):
        box_iou(torch.zeros(3), torch.zeros(3, 4))


def test_box_iou_random_against_naive():
    a, b = random_boxes(20, 1), random_boxes(15, 2)
    expected = torch.tensor([[naive_iou32(p, q) for q in b.tolist()] for p in a.tolist()])
    assert_close(box_iou(a, b), expected, rtol=1e-6, atol=1e-7)


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 20.0], [10.0, 5.0, 20.0, 8.0]])
    out = clip_boxes(boxes, (10, 30))  # height 10, width 30
    assert_close(out, torch.tensor([[0.0, 0.0, 30.0, 10.0], [10.0, 5.0, 20.0, 8.0]]))
    assert boxes[0, 0] == -5.0  # input untouched
    batched = clip_boxes(boxes.expand(3, 2, 4), (10, 30))
    assert batched.shape == (3, 2, 4) and torch.equal(batched[1], out)


def test_nonempty():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 3.0, 0.5], [2.0, 2.0, 1.0, 3.0]])
    assert nonempty(boxes).tolist() == [True, False, True, False]
    assert nonempty(boxes, threshold=0.6).tolist() == [True, False, False, False]


# ---------------------------------------------------------------------------------------------------------- nms


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize(("n", "seed"), [(1, 0), (2, 1), (40, 2), (250, 3)])
def test_nms_against_naive(n, seed, thr):
    boxes, scores = random_boxes(n, seed), distinct_scores(n, seed + 100)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.long
    assert keep.tolist() == naive_nms(boxes, scores, thr)


def test_nms_blocks(monkeypatch):
    """Row blocks smaller than N (several greedy blocks, rows dropped before their block is computed)."""
    boxes, scores = random_boxes(300, 7), distinct_scores(300, 8)
    expected = naive_nms(boxes, scores, 0.4)
    monkeypatch.setattr(ops, "_NMS_BLOCK", 16)
    assert nms(boxes, scores, 0.4).tolist() == expected


def test_nms_edge_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    same = box.repeat(4, 1)
    assert nms(same, torch.tensor([0.1, 0.9, 0.5, 0.9]), 0.5).tolist() == [1]  # ties: first in input order
    assert nms(same, torch.tensor([0.1, 0.9, 0.5, 0.9]), 1.0).tolist() == [1, 3, 2, 0]  # IoU 1 is not > 1
    touching = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.5, 0.0, 1.5, 1.0]])
    assert nms(touching, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [0, 1]  # touching: IoU 0, kept
    with pytest.raises(ValueError, match="scores"):
        nms(box, torch.zeros(2), 0.5)


def test_nms_threshold_compared_in_float64():
    """IoU 1/10 rounds up in float32 (0.10000000149 > 0.1): torchvision's CPU kernel suppresses it."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes[:1], boxes[1:]).item() > 0.1
    assert nms(boxes, scores, 0.1).tolist() == [0] == naive_nms(boxes, scores, 0.1)
    assert nms(boxes, scores, 0.7).tolist() == [0, 1]
    assert nms(boxes.double(), scores, 0.1).tolist() == [0, 1]  # exactly 0.1 in float64: not > 0.1


@pytest.mark.parametrize("thr", [0.0, 0.5, 1.0])
def test_batched_nms_against_naive(thr):
    n = 200
    boxes, scores = random_boxes(n, 11), distinct_scores(n, 12)
    idxs = torch.randint(0, 5, (n,), generator=_gen(13))
    idxs[:3] = 7  # a small group; plus a singleton
    idxs[3] = 9
    keep = batched_nms(boxes, scores, idxs, thr)
    assert keep.tolist() == naive_batched_nms(boxes, scores, idxs, thr)


def test_batched_nms_groups_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(6, 1)
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    idxs = torch.tensor([0, 1, 2, 0, 1, 2])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [5, 4, 3]
    assert batched_nms(boxes, scores, torch.zeros(6, dtype=torch.long), 0.5).tolist() == [5]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(boxes, scores, idxs[:3], 0.5)


def test_nms_2000_boxes_is_greedy():
    """A large case (timing sanity: it just has to finish quickly), checked by the greedy characterisation."""
    boxes, scores = random_boxes(2000, 21, size=600.0), distinct_scores(2000, 22)
    keep = nms(boxes, scores, 0.5)
    assert 0 < keep.numel() < 2000
    assert torch.all(scores[keep][:-1] > scores[keep][1:])
    assert _is_greedy_nms(boxes, scores, keep, 0.5)
    idxs = torch.randint(0, 20, (2000,), generator=_gen(23))
    kb = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.all(scores[kb][:-1] > scores[kb][1:])
    for g in range(20):
        members = torch.nonzero(idxs == g).squeeze(1)
        assert sorted(kb[idxs[kb] == g].tolist()) == sorted(members[nms(boxes[members], scores[members], 0.5)].tolist())


def test_nms_bf16_smoke():
    boxes, scores = random_boxes(100, 31), distinct_scores(100, 32)
    keep = nms(boxes.bfloat16(), scores.bfloat16(), 0.5)
    assert keep.dtype == torch.long and keep.numel() > 0 and keep.max() < 100
    kb = batched_nms(boxes.bfloat16(), scores.bfloat16(), torch.arange(100) % 3, 0.5)
    assert kb.dtype == torch.long and len(set(kb.tolist())) == kb.numel()
    assert box_iou(boxes.bfloat16(), boxes.bfloat16()).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------- roi_align


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("scale", [1 / 4, 1 / 16])
def test_roi_align_against_naive(aligned, sampling_ratio, scale):
    feats = torch.randn(2, 3, 13, 17, generator=_gen(1))
    rois = random_rois(12, 2, (13, 17), scale, seed=2)
    out = roi_align(feats, rois, 5, scale, sampling_ratio, aligned)
    assert out.shape == (12, 3, 5, 5) and out.dtype == torch.float32
    assert_close(out, naive_roi_align(feats, rois, 5, scale, sampling_ratio, aligned).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_float64_exact(aligned):
    """In float64 the result matches the loop reference to rounding (non-square output, 7x7 adaptive grids)."""
    feats = torch.randn(3, 4, 19, 23, generator=_gen(3), dtype=torch.float64)
    rois = random_rois(20, 3, (19, 23), 1 / 8, seed=4).double()
    out = roi_align(feats, rois, (7, 4), 1 / 8, 0, aligned)
    assert out.shape == (20, 4, 7, 4) and out.dtype == torch.float64
    assert_close(out, naive_roi_align(feats, rois, (7, 4), 1 / 8, 0, aligned), atol=1e-12, rtol=0)


def test_roi_align_edge_rois():
    """Outside the map, straddling it, zero-size, negative-size, whole-map (grid 7) and tiny rois."""
    H, W, s = 10, 12, 1 / 4
    feats = torch.randn(2, 3, H, W, generator=_gen(5))
    rows = [
        [0, 200.0, 200.0, 260.0, 240.0],  # entirely outside (bottom right)
        [1, -90.0, -90.0, -30.0, -10.0],  # entirely outside (top left)
        [0, -6.0, -5.0, 4.0, 6.0],  # partly outside, samples in the (-1, 0) band
        [1, 40.0, 30.0, 52.0, 44.0],  # partly beyond the last pixel, samples in the (W-1, W] band
        [0, 20.0, 20.0, 20.0, 20.0],  # zero size
        [1, 20.0, 12.0, 20.0, 30.0],  # zero width
        [0, 30.0, 30.0, 10.0, 12.0],  # negative size
        [1, 0.0, 0.0, 4 * W, 4 * H],  # whole map: grid 7 x 6 at 2x2 bins
        [0, 17.0, 9.0, 17.5, 9.25],  # sub-pixel
    ]
    rois = torch.tensor(rows)
    for aligned in (True, False):
        for sr in (0, 2):
            out = roi_align(feats, rois, 2, s, sr, aligned)
            assert_close(out, naive_roi_align(feats, rois, 2, s, sr, aligned).float(), atol=1e-5, rtol=0)
    aligned_out = roi_align(feats, rois, 2, s, 0, True)
    assert torch.all(aligned_out[[0, 1, 4, 5, 6]] == 0)  # outside / empty grids
    assert aligned_out[7].abs().sum() > 0


def test_roi_align_empty_and_validation():
    feats = torch.randn(1, 6, 8, 8)
    out = roi_align(feats, torch.zeros(0, 5), (7, 3), 0.25)
    assert out.shape == (0, 6, 7, 3) and out.dtype == feats.dtype
    with pytest.raises(ValueError, match="rois"):
        roi_align(feats, torch.zeros(3, 4), 7, 0.25)
    with pytest.raises(ValueError, match="batch"):
        roi_align(feats, torch.tensor([[1.0, 0.0, 0.0, 4.0, 4.0]]), 7, 0.25)


def test_roi_align_chunks_and_layouts(monkeypatch):
    """Chunked evaluation, channels-last and non-contiguous inputs give the same result."""
    feats = torch.randn(2, 5, 16, 16, generator=_gen(6))
    rois = random_rois(40, 2, (16, 16), 1 / 4, seed=7)
    expected = roi_align(feats, rois, 7, 1 / 4)
    assert_close(roi_align(feats.to(memory_format=torch.channels_last), rois, 7, 1 / 4), expected)
    assert_close(roi_align(torch.randn(2, 16, 16, 5).permute(0, 3, 1, 2), rois, 7, 1 / 4).shape, expected.shape)
    monkeypatch.setattr(ops, "_ROI_ALIGN_CHUNK", 1)  # one roi per chunk
    assert_close(roi_align(feats, rois, 7, 1 / 4), expected, atol=1e-6, rtol=0)


def test_roi_align_bf16_smoke():
    feats = torch.randn(1, 8, 16, 16, generator=_gen(8))
    rois = random_rois(10, 1, (16, 16), 1 / 4, seed=9)
    out = roi_align(feats.bfloat16(), rois, 7, 1 / 4)
    assert out.dtype == torch.bfloat16 and out.shape == (10, 8, 7, 7)
    ref = roi_align(feats.bfloat16().float(), rois, 7, 1 / 4)
    assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)
    ref16 = roi_align(feats.bfloat16().float(), rois.bfloat16().float(), 7, 1 / 4)  # bf16 rois are coarser boxes
    assert_close(roi_align(feats.bfloat16(), rois.bfloat16(), 7, 1 / 4).float(), ref16, atol=2e-2, rtol=1e-2)


# --------------------------------------------------------------------------------------------------- torchvision


@pytest.fixture(autouse=True)
def _ours(monkeypatch, request):
    """Every test here checks rgtp's own kernels, also where torchvision.ops imports (then rgtp.ops calls it)."""
    if "dispatch" not in request.node.name:
        monkeypatch.setattr(ops, "_compiled", lambda x: None)


@cache
def _torchvision_ops():
    """torchvision.ops if it imports cleanly; probed in a subprocess first because a broken install can crash."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import torchvision.ops"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"torchvision import probe failed: {exc!r}"
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines()
        return None, f"torchvision is not importable here (exit {probe.returncode}: {lines[-1] if lines else '?'})"
    import torchvision.ops

    return torchvision.ops, ""


def test_against_torchvision():
    tvo, reason = _torchvision_ops()
    if tvo is None:
        pytest.skip(reason)
    boxes, scores = random_boxes(300, 41), distinct_scores(300, 42)
    idxs = torch.randint(0, 4, (300,), generator=_gen(43))
    for thr in (0.0, 0.3, 0.7, 1.0):
        assert nms(boxes, scores, thr).tolist() == tvo.nms(boxes, scores, thr).tolist()
        assert batched_nms(boxes, scores, idxs, thr).tolist() == tvo.batched_nms(boxes, scores, idxs, thr).tolist()
    assert_close(box_iou(boxes, boxes[:50]), tvo.box_iou(boxes, boxes[:50]))
    feats = torch.randn(2, 4, 20, 24, generator=_gen(44))
    rois = random_rois(30, 2, (20, 24), 1 / 8, seed=45)
    for aligned in (True, False):
        for sr in (0, 2):
            expected = tvo.roi_align(feats, rois, (7, 7), 1 / 8, sr, aligned)
            assert_close(roi_align(feats, rois, 7, 1 / 8, sr, aligned), expected, atol=1e-5, rtol=0)


def test_dispatch_to_torchvision_where_it_imports():
    """rgtp.ops calls torchvision.ops for float32 inputs where it imports (agreeing with ours), and ours elsewhere."""
    tvo, reason = _torchvision_ops()
    assert (ops._torchvision_ops() is None) == (tvo is None) or os.environ.get("RGTP_TORCHVISION") == "0"
    boxes, scores = random_boxes(200, 51), distinct_scores(200, 52)
    kept = nms(boxes, scores, 0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "_compiled", lambda x: None)
        assert kept.tolist() == nms(boxes, scores, 0.5).tolist()
    if tvo is None:
        pytest.skip(reason)
