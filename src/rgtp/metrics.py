"""COCO-style detection mAP, as the paper reports it for ImageNet VID (method §12.1).

The paper's number is ``map_50`` from torchmetrics 0.11 ``MeanAveragePrecision()``: COCO 101-point interpolated AP at
IoU 0.5, at most 100 detections per image and class, area range "all", averaged over the classes that have ground
truth. Here the official COCO evaluator computes it (``pycocotools``, or ``faster_coco_eval``, a C++ reimplementation
that gives the same numbers), fed from in-memory arrays; nothing is written to disk.

Inputs are per image, in the same order for ground truth and predictions, with boxes in absolute ``xyxy``
coordinates and 0-based class indices::

    gt = [(boxes_i, labels_i), ...]                   # (M, 4) float, (M,) int
    preds = [(boxes_i, scores_i, labels_i), ...]      # (K, 4) float, (K,) float, (K,) int
    metrics = coco_map(gt, preds, class_names)
    metrics.map50, metrics.per_class_ap50["airplane"], print(metrics.table())

The evaluator needs an optional dependency: ``pip install "rgtp[eval]"`` (pycocotools).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "DetectionMetrics", "check_backend", "coco_map"]

logger = logging.getLogger(__name__)

BACKENDS = ("faster_coco_eval", "pycocotools")  # "auto" tries them in this order (the first is ~10x faster)
_INSTALL_HINT = {
    "pycocotools": 'pip install "rgtp[eval]"  (or: pip install pycocotools)',
    "faster_coco_eval": "pip install faster-coco-eval",
}


@dataclass
class DetectionMetrics:
    """Result of :func:`coco_map`. AP values are fractions in [0, 1]."""

    map50: float
    """Mean over the classes that have ground truth of the COCO 101-point AP at IoU 0.5 (torchmetrics ``map_50``)."""
    map: float
    """COCO AP averaged over IoU 0.50:0.05:0.95 (torchmetrics ``map``), for reference."""
    per_class_ap50: dict[str, float | None]
    """AP at IoU 0.5 per class name; ``None`` for a class without ground truth (left out of the mean)."""
    num_images: int
    num_gt: int
    num_detections: int
    backend: str
    """``"pycocotools"`` or ``"faster_coco_eval"``."""
    per_class_num_gt: dict[str, int] = field(default_factory=dict)
    """Number of ground-truth boxes per class name."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return asdict(self)

    def table(self) -> str:
        """A small Markdown table: one row per class (AP50 in percent, "n/a" without ground truth), then the mean."""
        lines = ["| class | AP50 | #gt |", "|---|---:|---:|"]
        for name, ap in self.per_class_ap50.items():
            shown = "n/a" if ap is None else f"{100.0 * ap:.2f}"
            lines.append(f"| {name} | {shown} | {self.per_class_num_gt.get(name, 0)} |")
        lines.append(f"| **mean** | **{100.0 * self.map50:.2f}** | {self.num_gt} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- inputs


def _as_boxes(value: Any, what: str, index: int) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} boxes of image {index} must have shape (N, 4) in xyxy format, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what} boxes of image {index} contain NaN or infinite values")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad.size:
        raise ValueError(
            f"{what} box {int(bad[0])} of image {index} has x2 < x1 or y2 < y1 ({boxes[bad[0]].tolist()}); "
            "boxes must be xyxy"
        )
    return boxes


def _as_vector(value: Any, length: int, what: str, index: int) -> np.ndarray:
    vec = np.asarray(value)
    if vec.size == 0 and length == 0:
        return vec.reshape(0)
    if vec.ndim != 1 or vec.shape[0] != length:
        raise ValueError(f"{what} of image {index} must have shape ({length},) to match the boxes, got {vec.shape}")
    return vec


def _as_labels(value: Any, length: int, num_classes: int, what: str, index: int) -> np.ndarray:
    labels = _as_vector(value, length, f"{what} labels", index)
    if labels.dtype == np.bool_ or not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    ):
        raise ValueError(f"{what} labels of image {index} must be integers, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating) and (
        not np.isfinite(labels).all() or (labels != np.round(labels)).any()
    ):
        raise ValueError(f"{what} labels of image {index} must be whole numbers, got {labels.tolist()}")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"{what} label {int(labels[bad[0]])} of image {index} is out of range: "
            f"expected 0..{num_classes - 1} ({num_classes} classes)"
        )
    return labels


def _unpack(item: Any, arity: int, what: str, index: int) -> tuple[Any, ...]:
    try:
        parts = tuple(item)
    except TypeError:
        parts = ()
    if len(parts) != arity:
        fields = "(boxes, labels)" if arity == 2 else "(boxes, scores, labels)"
        raise ValueError(f"{what} of image {index} must be a tuple {fields}, got {type(item).__name__}")
    return parts


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] -= boxes[:, :2]
    return out


def _build_datasets(
    ground_truth: Sequence[Any], predictions: Sequence[Any], num_classes: int
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Validate the inputs and build the COCO ground-truth dataset dict and the detection annotations."""
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"ground truth has {len(ground_truth)} images but predictions have {len(predictions)}; "
            "they must list the same images in the same order"
        )
    if len(ground_truth) == 0:
        raise ValueError("no images: ground truth and predictions are empty")

    images: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    gt_per_class = np.zeros(num_classes, dtype=np.int64)
    for index, (gt_item, pred_item) in enumerate(zip(ground_truth, predictions, strict=True)):
        image_id = index + 1
        images.append({"id": image_id})

        gt_boxes, gt_labels = _unpack(gt_item, 2, "ground truth", index)
        gt_boxes = _as_boxes(gt_boxes, "ground-truth", index)
        gt_labels = _as_labels(gt_labels, len(gt_boxes), num_classes, "ground-truth", index)
        gt_per_class += np.bincount(gt_labels, minlength=num_classes)
        for box, label in zip(_xywh(gt_boxes).tolist(), gt_labels.tolist(), strict=True):
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )

        dt_boxes, dt_scores, dt_labels = _unpack(pred_item, 3, "predictions", index)
        dt_boxes = _as_boxes(dt_boxes, "predicted", index)
        dt_scores = _as_vector(dt_scores, len(dt_boxes), "predicted scores", index).astype(np.float64)
        if not np.isfinite(dt_scores).all():
            raise ValueError(f"predicted scores of image {index} contain NaN or infinite values")
        dt_labels = _as_labels(dt_labels, len(dt_boxes), num_classes, "predicted", index)
        for box, score, label in zip(_xywh(dt_boxes).tolist(), dt_scores.tolist(), dt_labels.tolist(), strict=True):
            dt_anns.append(
                {
                    "id": len(dt_anns) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": box,
                    "score": score,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )

    categories = [{"id": k, "name": str(k)} for k in range(num_classes)]
    gt_dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    return gt_dataset, dt_anns, gt_per_class


# ---------------------------------------------------------------------------------------------------------- backends


def _import_backend(name: str) -> tuple[type, type]:
    """Return the backend's (COCO, COCOeval) classes, or raise ImportError with the install command."""
    try:
        if name == "pycocotools":
            coco = importlib.import_module("pycocotools.coco")
            cocoeval = importlib.import_module("pycocotools.cocoeval")
            return coco.COCO, cocoeval.COCOeval
        module = importlib.import_module("faster_coco_eval")
        return module.COCO, module.COCOeval_faster
    except ImportError as exc:
        raise ImportError(
            f"COCO mAP evaluation needs the '{name}' package, which is not installed: {_INSTALL_HINT[name]}"
        ) from exc


def check_backend(backend: str = "auto") -> str:
    """The name of the backend :func:`coco_map` would use; ImportError (with the pip command) if none is installed."""
    return _resolve_backend(backend)[0]


def _resolve_backend(backend: str) -> tuple[str, type, type]:
    if backend == "auto":
        for name in BACKENDS:
            try:
                return (name, *_import_backend(name))
            except ImportError:
                continue
        raise ImportError(
            "COCO mAP evaluation needs pycocotools (or faster-coco-eval), and neither is installed: "
            f"{_INSTALL_HINT['pycocotools']}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected 'auto', 'pycocotools' or 'faster_coco_eval'")
    return (backend, *_import_backend(backend))


def _make_coco(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _run_cocoeval(
    backend: str, coco_cls: type, eval_cls: type, gt_dataset: dict[str, Any], dt_anns: list[dict[str, Any]]
) -> Any:
    """Run COCOeval (bbox, default parameters) with its prints captured and sent to the log at DEBUG level."""
    # Detections are built by hand rather than with loadRes, which fails on an empty list in pycocotools.
    dt_dataset = {
        "images": gt_dataset["images"],
        "categories": gt_dataset["categories"],
        "annotations": dt_anns,
    }
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        coco_gt = _make_coco(coco_cls, gt_dataset)
        coco_dt = _make_coco(coco_cls, dt_dataset)
        if backend == "faster_coco_eval":
            evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)
        else:
            evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for line in captured.getvalue().splitlines():
        if line.strip():
            logger.debug("%s: %s", backend, line)
    return evaluator


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


# -------------------------------------------------------------------------------------------------------------- API


def coco_map(
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    backend: str = "auto",
) -> DetectionMetrics:
    """COCO bbox mAP of per-image predictions against per-image ground truth.

    Args:
        ground_truth: one ``(boxes, labels)`` per image: boxes ``(M, 4)`` xyxy in pixels, labels ``(M,)`` class
            indices in ``[0, len(class_names))``. Images without objects have ``M = 0``.
        predictions: one ``(boxes, scores, labels)`` per image, in the same order: ``(K, 4)``, ``(K,)``, ``(K,)``.
        class_names: names of the classes, indexed by label.
        backend: ``"auto"`` (faster_coco_eval if installed, else pycocotools), ``"pycocotools"`` or
            ``"faster_coco_eval"``.

    Returns:
        :class:`DetectionMetrics`. ``map50`` is the paper's metric: the mean over classes that have ground truth of
        the 101-point interpolated AP at IoU 0.5, at most 100 detections per image and class, area "all". A class with
        ground truth but no detections has AP 0; a class with detections but no ground truth is left out (``None``).

    Raises:
        ValueError: inconsistent inputs (image counts, shapes, labels out of range, non-finite values, no ground
            truth at all); the message names the image index.
        ImportError: the backend is not installed (the message gives the pip command).
    """
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names is empty: at least one class is needed")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class_names must be unique, got duplicates {duplicates}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected 'auto', 'pycocotools' or 'faster_coco_eval'")

    gt_dataset, dt_anns, gt_per_class = _build_datasets(ground_truth, predictions, len(names))
    num_gt = int(gt_per_class.sum())
    if num_gt == 0:
        raise ValueError(f"the ground truth of all {len(ground_truth)} images has no boxes, so mAP is undefined")

    backend_name, coco_cls, eval_cls = _resolve_backend(backend)
    evaluator = _run_cocoeval(backend_name, coco_cls, eval_cls, gt_dataset, dt_anns)

    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])  # (iou thresholds, recall thresholds, classes, areas, maxDets)
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    area_all = list(params.areaRngLbl).index("all")
    max100 = list(params.maxDets).index(100)
    cat_ids = [int(k) for k in params.catIds]
    if cat_ids != list(range(len(names))):
        raise RuntimeError(f"unexpected COCO category ids {cat_ids[:5]}...; expected 0..{len(names) - 1}")

    per_class = {name: _mean_valid(precision[iou50, :, k, area_all, max100]) for k, name in enumerate(names)}
    has_gt = [ap for ap in per_class.values() if ap is not None]
    map50 = float(np.mean(has_gt))
    map_all = _mean_valid(precision[:, :, :, area_all, max100])
    map_all = math.nan if map_all is None else map_all

    metrics = DetectionMetrics(
        map50=map50,
        map=map_all,
        per_class_ap50=per_class,
        num_images=len(ground_truth),
        num_gt=num_gt,
        num_detections=len(dt_anns),
        backend=backend_name,
        per_class_num_gt={name: int(n) for name, n in zip(names, gt_per_class.tolist(), strict=True)},
    )
    logger.info(
        "COCO mAP50 %.4f (mAP %.4f) over %d classes with ground truth, %d images, %d gt boxes, %d detections [%s]",
        metrics.map50,
        metrics.map,
        len(has_gt),
        metrics.num_images,
        metrics.num_gt,
        metrics.num_detections,
        backend_name,
    )
    return metrics
