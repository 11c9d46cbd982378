"""COCO-style mAP (rgtp.metrics): hand-computed cases, COCO conventions, input validation, backend agreement."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason='needs pycocotools: pip install "rgtp[eval]"')

from rgtp.metrics import DetectionMetrics, coco_map

HAS_FASTER = importlib.util.find_spec("faster_coco_eval") is not None
BACKENDS = [
    "pycocotools",
    pytest.param("faster_coco_eval", marks=pytest.mark.skipif(not HAS_FASTER, reason="faster_coco_eval not installed")),
]


def gt(boxes, labels):
    return np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def det(boxes, scores, labels):
    return (
        np.asarray(boxes, dtype=float).reshape(-1, 4),
        np.asarray(scores, dtype=float),
        np.asarray(labels, dtype=np.int64),
    )


NO_DET = det([], [], [])
A = [0, 0, 10, 10]
B = [20, 20, 40, 40]
FAR = [100, 100, 110, 110]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_ap(backend):
    # One class, one GT per image. Detections by score: 0.9 TP (image 0), 0.8 FP (image 0, no overlap),
    # 0.7 TP (image 1).
    #   cumulative: recall 1/2, 1/2, 2/2; precision 1, 1/2, 2/3
    #   COCO makes precision monotone from the right: 1, 2/3, 2/3
    #   101 recall thresholds r = 0, 0.01, ..., 1; each takes the first point with recall >= r:
    #   r in 0..0.50 (51 thresholds) -> precision 1; r in 0.51..1.00 (50 thresholds) -> precision 2/3
    #   AP = (51 * 1 + 50 * 2/3) / 101 = 0.83498...
    expected = (51 * 1.0 + 50 * 2.0 / 3.0) / 101
    ground_truth = [gt([A], [0]), gt([B], [0])]
    predictions = [det([A, FAR], [0.9, 0.8], [0, 0]), det([B], [0.7], [0])]
    m = coco_map(ground_truth, predictions, ["car"], backend=backend)
    assert m.backend == backend
    assert m.map50 == pytest.approx(expected, abs=1e-9)
    assert m.per_class_ap50 == {"car": pytest.approx(expected, abs=1e-9)}
    # the TPs are exact, so every IoU threshold gives the same AP
    assert m.map == pytest.approx(expected, abs=1e-9)
    assert (m.num_images, m.num_gt, m.num_detections) == (2, 2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections(backend):
    ground_truth = [gt([A, B], [0, 1]), gt([], []), gt([B], [1])]
    predictions = [det([B, A], [0.5, 0.6], [1, 0]), NO_DET, det([B], [0.1], [1])]
    m = coco_map(ground_truth, predictions, ["a", "b"], backend=backend)
    assert m.map50 == pytest.approx(1.0)
    assert m.map == pytest.approx(1.0)
    assert m.per_class_ap50 == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_class_only_in_predictions_is_ignored():
    ground_truth = [gt([A], [0]), gt([B], [0])]
    predictions = [det([A, FAR], [0.9, 0.95], [0, 1]), det([B], [0.8], [0])]
    m = coco_map(ground_truth, predictions, ["a", "ghost", "unused"])
    assert m.per_class_ap50["ghost"] is None  # detections but no ground truth
    assert m.per_class_ap50["unused"] is None  # neither
    assert m.per_class_ap50["a"] == pytest.approx(1.0)
    assert m.map50 == pytest.approx(1.0)  # the mean is over "a" only
    assert m.per_class_num_gt == {"a": 2, "ghost": 0, "unused": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_detections(backend):
    ground_truth = [gt([A], [0]), gt([B], [1])]
    m = coco_map(ground_truth, [NO_DET, NO_DET], ["a", "b"], backend=backend)
    assert m.map50 == 0.0
    assert m.map == 0.0
    assert m.per_class_ap50 == {"a": 0.0, "b": 0.0}
    assert m.num_detections == 0


def test_class_with_gt_but_no_detections_counts_as_zero():
    ground_truth = [gt([A, B], [0, 1])]
    m = coco_map(ground_truth, [det([A], [0.9], [0])], ["a", "b"])
    assert m.per_class_ap50 == {"a": pytest.approx(1.0), "b": 0.0}
    assert m.map50 == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("height", "ap"), [(4.9, 0.0), (5.1, 1.0), (5.0, 1.0)])
def test_iou_threshold_flips_tp_fp(backend, height, ap):
    # GT 10x10; the detection [0, 0, 10, h] lies inside it, so IoU = 10 h / 100 = h / 10.
    # 0.49 -> FP (AP 0); 0.51 -> TP (AP 1); exactly 0.5 -> TP, because COCO matches at IoU >= 0.5
    # (torchmetrics 0.11's own implementation required IoU > 0.5 here).
    m = coco_map([gt([A], [0])], [det([[0, 0, 10, height]], [0.9], [0])], ["a"], backend=backend)
    assert m.map50 == pytest.approx(ap)


def test_two_classes_are_averaged():
    # class "a": perfect -> AP 1.
    # class "b": one GT, detections 0.9 FP then 0.8 TP: recall 0, 1; precision 0, 1/2 -> monotone 1/2, 1/2
    #   -> every recall threshold gets 1/2 -> AP 0.5.  Mean = (1 + 0.5) / 2 = 0.75.
    ground_truth = [gt([A, B], [0, 1])]
    predictions = [det([A, FAR, B], [0.7, 0.9, 0.8], [0, 1, 1])]
    m = coco_map(ground_truth, predictions, ["a", "b"])
    assert m.per_class_ap50 == {"a": pytest.approx(1.0), "b": pytest.approx(0.5)}
    assert m.map50 == pytest.approx(0.75)


@pytest.mark.parametrize(("num_fp", "ap"), [(99, 0.01), (100, 0.0)])
def test_at_most_100_detections_per_image_and_class(num_fp, ap):
    # num_fp higher-scored false positives, then the TP. With 99 the TP is 100th: recall 1 at precision 1/100 -> AP
    # 0.01. With 100 it is 101st and dropped (maxDets 100) -> AP 0.
    fp_boxes = [[100 + 2 * i, 100, 101 + 2 * i, 101] for i in range(num_fp)]
    scores = [*np.linspace(0.99, 0.5, num_fp).tolist(), 0.1]
    m = coco_map([gt([A], [0])], [det([*fp_boxes, A], scores, [0] * (num_fp + 1))], ["a"])
    assert m.map50 == pytest.approx(ap)


def test_accepts_flat_empty_arrays_and_float_whole_labels():
    ground_truth = [(np.zeros(0), np.zeros(0)), gt([A], [0])]
    predictions = [(np.zeros(0), np.zeros(0), np.zeros(0)), (np.array([A], float), np.array([0.9]), np.array([0.0]))]
    assert coco_map(ground_truth, predictions, ["a"]).map50 == pytest.approx(1.0)


def test_result_helpers_and_quiet_stdout(capsys):
    m = coco_map([gt([A], [0])], [det([A], [0.9], [0])], ["a", "b"])
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured and logged instead
    assert isinstance(m, DetectionMetrics)
    d = m.to_dict()
    json.dumps(d)
    assert d["map50"] == pytest.approx(1.0) and d["per_class_ap50"]["b"] is None
    table = m.table()
    assert table.splitlines()[0] == "| class | AP50 | #gt |"
    assert "| a | 100.00 | 1 |" in table and "| b | n/a | 0 |" in table


@pytest.mark.parametrize(
    ("ground_truth", "predictions", "names", "match"),
    [
        ([gt([A], [0])], [], ["a"], "1 images but predictions have 0"),
        ([], [], ["a"], "no images"),
        ([gt([A], [0])], [NO_DET], [], "class_names is empty"),
        ([gt([A], [0])], [NO_DET], ["a", "a"], "unique"),
        ([(np.zeros((1, 3)), np.array([0]))], [NO_DET], ["a"], r"ground-truth boxes of image 0 must have shape"),
        ([gt([A], [0]), gt([A, B], [0])], [NO_DET, NO_DET], ["a"], r"ground-truth labels of image 1 must have shape"),
        ([gt([A], [0]), gt([A], [2])], [NO_DET, NO_DET], ["a", "b"], r"label 2 of image 1 is out of range"),
        ([gt([A], [-1])], [NO_DET], ["a"], r"label -1 of image 0 is out of range"),
        ([gt([A], [0])], [det([A], [0.9], [5])], ["a"], r"predicted label 5 of image 0 is out of range"),
        ([gt([A], [0])], [det([A], [0.9, 0.8], [0])], ["a"], r"predicted scores of image 0 must have shape \(1,\)"),
        ([gt([A], [0])], [det([A], [np.nan], [0])], ["a"], "scores of image 0 contain NaN"),
        ([gt([[10, 0, 0, 10]], [0])], [NO_DET], ["a"], r"box 0 of image 0 has x2 < x1"),
        ([gt([[0, 0, np.inf, 10]], [0])], [NO_DET], ["a"], "boxes of image 0 contain NaN or infinite"),
        ([(np.array([A], float), np.array([0.5]))], [NO_DET], ["a"], "labels of image 0 must be whole numbers"),
        ([gt([A], [0])], [(np.zeros((0, 4)), np.zeros(0))], ["a"], r"predictions of image 0 must be a tuple"),
        ([gt([], [])], [NO_DET], ["a"], "no boxes"),
    ],
)
def test_bad_inputs_raise(ground_truth, predictions, names, match):
    with pytest.raises(ValueError, match=match):
        coco_map(ground_truth, predictions, names)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'detectron'"):
        coco_map([gt([A], [0])], [NO_DET], ["a"], backend="detectron")


def test_missing_backend_names_pip_command(monkeypatch):
    for module in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval", "faster_coco_eval"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for backend in ("pycocotools", "auto"):
        with pytest.raises(ImportError, match=r'pip install "rgtp\[eval\]"'):
            coco_map([gt([A], [0])], [NO_DET], ["a"], backend=backend)
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        coco_map([gt([A], [0])], [NO_DET], ["a"], backend="faster_coco_eval")


# ------------------------------------------------------------------------------------- randomised cross-checks


def _random_case(seed: int, num_images: int = 25, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    ground_truth, predictions = [], []
    for _ in range(num_images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (m, 2))
        wh = rng.uniform(5, 60, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, num_classes - 1, m)  # the last class never has ground truth
        ground_truth.append((boxes, labels))
        keep = rng.random(m) < 0.8  # missed objects
        jitter = rng.normal(0, 4, (m, 4)) * wh.repeat(2, 1) / 20
        found = np.clip(boxes + jitter, 0, None)[keep]
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        k = int(rng.integers(0, 4))  # false positives, any class
        fxy = rng.uniform(0, 200, (k, 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(5, 60, (k, 2))], 1)
        pboxes = np.concatenate([found, fp])
        plabels = np.concatenate([labels[keep], rng.integers(0, num_classes, k)])
        scores = rng.random(len(pboxes))
        predictions.append((pboxes, scores, plabels))
    return ground_truth, predictions, [f"c{k}" for k in range(num_classes)]


def _reference_ap50(ground_truth, predictions, num_classes):
    """Straightforward COCO AP@0.5 (greedy matching by score, IoU >= 0.5, 101-point interpolation) for a cross-check."""

    def iou(a, b):
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
        return inter / (area(a)[:, None] + area(b)[None, :] - inter)

    aps = {}
    for c in range(num_classes):
        hits, all_scores, n_gt = [], [], 0
        for (gb, gl), (pb, ps, pl) in zip(ground_truth, predictions, strict=True):
            g, order = gb[gl == c], np.argsort(-ps[pl == c], kind="mergesort")[:100]
            p, s = pb[pl == c][order], ps[pl == c][order]
            n_gt += len(g)
            used = np.zeros(len(g), bool)
            ious = iou(p, g) if len(p) and len(g) else np.zeros((len(p), len(g)))
            for i in range(len(p)):
                cand = np.where(used, -1.0, ious[i])
                j = int(np.argmax(cand)) if len(g) else -1
                tp = j >= 0 and cand[j] >= 0.5
                if tp:
                    used[j] = True
                hits.append(tp)
                all_scores.append(s[i])
        if n_gt == 0:
            aps[c] = None
            continue
        order = np.argsort(-np.asarray(all_scores), kind="mergesort")
        tp = np.cumsum(np.asarray(hits, float)[order])
        recall = tp / n_gt
        precision = tp / np.arange(1, len(tp) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        aps[c] = float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))
    return aps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_implementation(seed):
    ground_truth, predictions, names = _random_case(seed)
    m = coco_map(ground_truth, predictions, names, backend="pycocotools")
    ref = _reference_ap50(ground_truth, predictions, len(names))
    assert m.per_class_ap50[names[-1]] is None
    for k, name in enumerate(names):
        assert m.per_class_ap50[name] == pytest.approx(ref[k], abs=1e-9)
    assert m.map50 == pytest.approx(np.mean([v for v in ref.values() if v is not None]), abs=1e-9)
    assert 0.0 < m.map < m.map50 < 1.0


@pytest.mark.skipif(not HAS_FASTER, reason="faster_coco_eval not installed")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_agree(seed):
    ground_truth, predictions, names = _random_case(seed)
    a = coco_map(ground_truth, predictions, names, backend="pycocotools")
    b = coco_map(ground_truth, predictions, names, backend="faster_coco_eval")
    assert b.backend == "faster_coco_eval"
    assert b.map50 == pytest.approx(a.map50, abs=1e-9)
    assert b.map == pytest.approx(a.map, abs=1e-9)
    for name in names:
        if a.per_class_ap50[name] is None:
            assert b.per_class_ap50[name] is None
        else:
            assert b.per_class_ap50[name] == pytest.approx(a.per_class_ap50[name], abs=1e-9)
