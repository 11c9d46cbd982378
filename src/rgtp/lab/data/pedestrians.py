"""A pedestrian detection set on real footage: OpenCV's ``vtest.avi`` with boxes from OpenCV's HOG people detector.

**The video.** ``vtest.avi`` is OpenCV's sample clip of a university campus filmed by a static camera: people walk
across a road and a lawn, alone and in groups, 768x576 pixels, 10 fps, 795 frames (79.5 s). It is not shipped with
rgtp. Get it from Debian/Ubuntu's ``opencv-doc`` package (no installation needed)::

    apt-get download opencv-doc
    dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x --wildcards '*/examples/data/vtest.avi'

or from OpenCV's GitHub repository, ``samples/data/vtest.avi``. The boxes file records the SHA-256 of the video it
was made from and :func:`load_pedestrians` refuses any other file.

**The boxes** (``benchmarks/data/vtest_hog_boxes.json``, made with :func:`write_pedestrian_boxes` or ``rgtp
pedestrian-boxes``) are the output of a fixed classical detector, not human annotations: OpenCV's HOG descriptor
with its default linear SVM people detector (Dalal & Triggs, 64x128 windows), run on every frame. They are pseudo
ground truth: a benchmark on this set measures how well a model reproduces a fixed detector's output on real
footage, which is what token pruning must preserve, not absolute pedestrian-detection accuracy. The post-processing
(:class:`HogParams`), tuned by eye on vtest.avi:

1. Frames are upscaled ``upscale`` times (bilinear) before HOG, so that the smallest window (128 px tall) covers
   people about ``96 / upscale`` px tall; every window of the image pyramid (``scale`` between levels, stride
   ``win_stride``) with an SVM margin of at least ``hit_threshold`` is a candidate (OpenCV's own grouping is off).
2. Windows taller than ``max_height`` times the frame height are dropped (on vtest they are groups or clutter).
3. Each window is shrunk to the person inside it: ``shrink[0]`` of its width off each side, ``shrink[1]`` of its
   height off the top and the bottom (the 64x128 window has margins around a ~96 px person).
4. Static clutter is dropped: the camera does not move, so the background is the per-pixel median of
   ``background_frames`` frames spread over the video, and a box is kept only if at least ``min_motion`` of its
   pixels differ from it by more than ``motion_delta`` (any colour channel). This removes detections on the
   parked van and the bollards, which HOG fires on in nearly every frame.
5. Greedy non-maximum suppression by decreasing margin: a box is dropped when its IoU with a kept box exceeds
   ``nms_iou`` or when a kept box covers more than ``nms_contain`` of the smaller of the two (windows around a
   group, or around part of a person, at another scale).

Boxes are stored in original pixels with their SVM margin as score; :func:`load_pedestrians` keeps those with score
``>= min_score`` (0.5 by default: stored boxes go down to ``hit_threshold``, 0.3). Greedy NMS commutes with this
threshold, so loading at ``min_score`` gives exactly what building at ``hit_threshold = min_score`` would.

**Splits** are by time (the camera and the scene do not change): ``train`` is the first 75% of the frames, ``test``
the rest, ``all`` everything. Frames are resized once, at load time, to the size the detector's own preprocessing
(:func:`rgtp.models.vitdet.preprocess_frame` for a ``size`` x ``size`` input) would give them, with the same
resampling, so the detector needs no further resize; boxes are scaled by the same factor
(:func:`rgtp.models.vitdet.resize_scale`). For vtest.avi at 256 that is 213x160 (factor 0.2778).

The shipped file (OpenCV 4.14, default :class:`HogParams`) holds 4442 boxes, 4250 of them with score >= 0.5 (5.3
per frame, 2 to 9; boxes 51-194 px tall, median 82 px); building it takes about 5 CPU-minutes. Only the builder
needs OpenCV (``pip install 'rgtp[bench]'``); loading needs PyAV (``rgtp[video]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rgtp.data.detection import DetectionSet, DetSequence

__all__ = [
    "PEDESTRIAN_CLASSES",
    "TRAIN_CHUNK",
    "TRAIN_FRACTION",
    "VAL_FRAMES",
    "HogParams",
    "PedestrianDataError",
    "default_boxes",
    "hog_boxes",
    "load_pedestrians",
    "write_pedestrian_boxes",
]

logger = logging.getLogger(__name__)

#: Class names of the set (labels are all 0).
PEDESTRIAN_CLASSES: tuple[str, ...] = ("person",)

#: The ``trainval`` split is the first ``floor(TRAIN_FRACTION * frames)`` frames; ``test`` is the rest. ``val`` is the
#: last ``VAL_FRAMES`` frames of ``trainval`` (at most a quarter of it; model selection without looking at the test
#: frames), ``train`` the frames before them.
TRAIN_FRACTION = 0.75
VAL_FRAMES = 48

#: Frames per sequence of the ``train`` split by default (``test`` and ``all`` are one sequence by default).
TRAIN_CHUNK = 24

_FORMAT = "rgtp-pedestrian-boxes"
_VERSION = 1
_SPLITS = ("train", "val", "trainval", "test", "all")
_INSTALL_HINT = "building pedestrian boxes needs OpenCV: pip install 'rgtp[bench]' (opencv-python-headless)"
_VIDEO_HINT = (
    "vtest.avi is OpenCV's sample clip: `apt-get download opencv-doc && dpkg-deb --fsys-tarfile opencv-doc_*.deb | "
    "tar -x --wildcards '*/examples/data/vtest.avi'`, or samples/data/vtest.avi in OpenCV's GitHub repository"
)


def default_boxes() -> Path:
    """The HOG boxes of vtest.avi shipped with the repository, ``benchmarks/data/vtest_hog_boxes.json`` (in a source
    checkout: they are not part of the installed package)."""
    return Path(__file__).resolve().parents[4] / "benchmarks" / "data" / "vtest_hog_boxes.json"


class PedestrianDataError(ValueError):
    """A missing or unreadable video or boxes file, or a boxes file made from another video."""


@dataclass(frozen=True)
class HogParams:
    """Settings of the HOG people detector and its post-processing (see the module docstring, steps 1-5).

    The defaults were chosen on vtest.avi (people 60-150 px tall in 768x576 frames).

    Attributes:
        upscale: frames are resized by this factor before HOG (the smallest window is 128 / upscale px tall).
        win_stride: window stride in pixels of the upscaled frame (a multiple of 8, HOG's block stride).
        padding: padding in pixels around the upscaled frame for windows at the border (a multiple of 8).
        scale: size ratio between pyramid levels (> 1).
        hit_threshold: smallest SVM margin of a stored box (HOG's ``hitThreshold``).
        max_height: windows taller than this fraction of the frame height are dropped.
        shrink: (fraction of the width off each side, fraction of the height off the top and the bottom).
        min_motion: smallest fraction of a box's pixels that differ from the background (0 disables the test).
        motion_delta: a pixel differs from the background when a channel differs by more than this (0-255).
        background_frames: frames (spread over the video) whose per-pixel median is the background.
        nms_iou: a box is suppressed when its IoU with a kept, higher-scoring box exceeds this.
        nms_contain: ... or when its intersection with one exceeds this fraction of the smaller box's area.
    """

    upscale: float = 2.0
    win_stride: int = 8
    padding: int = 8
    scale: float = 1.1
    hit_threshold: float = 0.3
    max_height: float = 0.45
    shrink: tuple[float, float] = (0.15, 0.1)
    min_motion: float = 0.1
    motion_delta: int = 30
    background_frames: int = 64
    nms_iou: float = 0.4
    nms_contain: float = 0.7

    def __post_init__(self) -> None:
        object.__setattr__(self, "shrink", tuple(float(s) for s in self.shrink))
        checks = (
            (math.isfinite(self.upscale) and self.upscale > 0, "upscale must be > 0"),
            (self.win_stride > 0 and self.win_stride % 8 == 0, "win_stride must be a positive multiple of 8"),
            (self.padding >= 0 and self.padding % 8 == 0, "padding must be a multiple of 8 (>= 0)"),
            (math.isfinite(self.scale) and self.scale > 1, "scale must be > 1"),
            (math.isfinite(self.hit_threshold), "hit_threshold must be finite"),
            (self.max_height > 0, "max_height must be > 0"),
            (len(self.shrink) == 2 and all(0 <= s < 0.5 for s in self.shrink), "shrink must be two fractions < 0.5"),
            (0 <= self.min_motion <= 1, "min_motion must be in [0, 1]"),
            (0 <= self.motion_delta < 255, "motion_delta must be in [0, 255)"),
            (self.background_frames >= 1, "background_frames must be >= 1"),
            (0 <= self.nms_iou <= 1 and 0 <= self.nms_contain <= 1, "nms_iou and nms_contain must be in [0, 1]"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")


# --------------------------------------------------------------------------------------------------------- building


def _import_cv2() -> Any:
    """Import OpenCV lazily, raising a helpful :class:`ImportError` if it is missing."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return cv2


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_video(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PedestrianDataError(f"video not found: {p} ({_VIDEO_HINT})")
    return p


def _background(path: Path, num_frames: int, samples: int) -> np.ndarray:
    """Per-pixel median of ``samples`` frames spread evenly over the video: (H, W, 3) int16."""
    from rgtp.io.video import read_frames

    step = max(1, num_frames // samples)
    picked = [f for t, f in enumerate(read_frames(path, num_frames)) if t % step == 0][:samples]  # each (H, W, 3) uint8
    return np.median(np.stack(picked), axis=0).astype(np.int16)  # (H, W, 3)


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, contain: float) -> np.ndarray:
    """Greedy NMS with IoU and containment tests: indices of the kept boxes (N, 4), by decreasing score.

    Ties in score are broken by position (y1, x1, y2, x2), so the result does not depend on the input order.
    """
    order = np.lexsort((boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1], -scores))
    b = boxes[order]  # (N, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (N,)
    keep: list[int] = []
    for i in range(len(b)):
        if keep:
            k = np.asarray(keep)
            w = np.clip(np.minimum(b[k, 2], b[i, 2]) - np.maximum(b[k, 0], b[i, 0]), 0, None)  # (K,)
            h = np.clip(np.minimum(b[k, 3], b[i, 3]) - np.maximum(b[k, 1], b[i, 1]), 0, None)  # (K,)
            inter = w * h
            if np.any(inter > iou * (area[k] + area[i] - inter)) or np.any(
                inter > contain * np.minimum(area[k], area[i])
            ):
                continue
        keep.append(i)
    return order[np.asarray(keep, dtype=np.int64)]


def _detect(hog: Any, cv2: Any, frame: np.ndarray, background: np.ndarray, params: HogParams) -> np.ndarray:
    """Boxes of one (H, W, 3) uint8 frame: (M, 5) float64 ``x1 y1 x2 y2 score`` in frame pixels, best first."""
    height, width = frame.shape[:2]
    up = params.upscale
    image = frame if up == 1 else cv2.resize(frame, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
    win_w, win_h = hog.winSize
    if image.shape[0] < win_h or image.shape[1] < win_w:  # no window fits (and OpenCV 4.x may crash on it)
        return np.zeros((0, 5))
    found, weights = hog.detectMultiScale(  # positional: the keyword names changed across OpenCV versions
        image, params.hit_threshold, (params.win_stride,) * 2, (params.padding,) * 2, params.scale, 0.0, False
    )
    xywh = np.asarray(found, dtype=np.float64).reshape(-1, 4) / up  # (N, 4) windows in frame pixels
    scores = np.asarray(weights, dtype=np.float64).reshape(-1)  # (N,) SVM margins
    keep = (scores >= params.hit_threshold) & (xywh[:, 3] <= params.max_height * height)
    xywh, scores = xywh[keep], scores[keep]
    sx, sy = params.shrink
    boxes = np.stack(
        [
            xywh[:, 0] + sx * xywh[:, 2],
            xywh[:, 1] + sy * xywh[:, 3],
            xywh[:, 0] + (1 - sx) * xywh[:, 2],
            xywh[:, 1] + (1 - sy) * xywh[:, 3],
        ],
        axis=1,
    )  # (N, 4)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], scores[keep]
    if params.min_motion > 0 and len(boxes):
        moving = (np.abs(frame.astype(np.int16) - background).max(axis=-1) > params.motion_delta).astype(np.int32)
        integral = np.pad(moving.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # (H + 1, W + 1) summed-area table
        x1, y1, x2, y2 = np.round(boxes).astype(np.int64).T
        x2, y2 = np.maximum(x2, x1 + 1), np.maximum(y2, y1 + 1)
        x2, y2 = np.minimum(x2, width), np.minimum(y2, height)
        count = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]  # (N,)
        fraction = count / np.maximum((x2 - x1) * (y2 - y1), 1)
        keep = fraction >= params.min_motion
        boxes, scores = boxes[keep], scores[keep]
    if not len(boxes):
        return np.zeros((0, 5))
    kept = _suppress(boxes, scores, params.nms_iou, params.nms_contain)
    return np.concatenate([boxes[kept], scores[kept, None]], axis=1)  # (M, 5)


def hog_boxes(
    video_path: str | os.PathLike[str],
    *,
    progress: bool = True,
    max_frames: int | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run OpenCV's HOG people detector on every frame of a video and post-process its windows (module docstring).

    Args:
        video_path: the video (vtest.avi for the shipped benchmark).
        progress: show a progress bar.
        max_frames: only the first frames (quick looks; the result then describes that many frames).
        **params: fields of :class:`HogParams` (``upscale``, ``hit_threshold``, ``nms_iou``...), the rest default.

    Returns:
        A JSON-able dict: ``format``, ``version``, ``video`` (file name), ``sha256`` (of the whole file),
        ``num_frames``, ``height``, ``width``, ``fps``, ``detector`` (name, ``opencv`` version, ``params``),
        ``box_format`` and ``frames``: per frame a list of ``[x1, y1, x2, y2, score]`` in original pixels (x2/y2
        exclusive edges), best first, coordinates rounded to 0.1 px and scores to 1e-3.

    Raises:
        PedestrianDataError: if the video does not exist.
        ImportError: without OpenCV or PyAV.
        ValueError: on an invalid parameter.
    """
    from rgtp.io.video import read_frames, video_info
    from rgtp.progress import progress_bar

    hp = HogParams(**params)
    cv2 = _import_cv2()
    path = _check_video(video_path)
    start = time.perf_counter()
    info = video_info(path)
    total = info.num_frames or sum(1 for _ in read_frames(path))
    if max_frames is not None:
        total = min(total, max_frames)
    background = _background(path, total, hp.background_frames) if hp.min_motion > 0 else np.zeros(0, np.int16)
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    frames: list[list[list[float]]] = []
    bar = progress_bar(total, "HOG people", progress)
    try:
        for frame in read_frames(path, max_frames):
            found = _detect(hog, cv2, frame, background, hp)  # (M, 5)
            frames.append([[*(round(float(v), 1) for v in b[:4]), round(float(b[4]), 3)] for b in found])
            bar.update(1)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    count = sum(len(f) for f in frames)
    logger.info(
        "HOG on %s: %d frames, %d boxes (%.2f per frame) in %.1f s",
        path.name,
        len(frames),
        count,
        count / max(len(frames), 1),
        elapsed,
    )
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "video": path.name,
        "sha256": _sha256(path),
        "num_frames": len(frames),
        "height": info.height,
        "width": info.width,
        "fps": info.fps,
        "detector": {
            "name": "OpenCV HOGDescriptor, default people detector (HOGDescriptor_getDefaultPeopleDetector)",
            "opencv": cv2.__version__,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(hp).items()},
        },
        "box_format": "x1, y1, x2, y2 (original pixels, x2/y2 exclusive), score (SVM margin)",
        "frames": frames,
    }


def _to_json(result: dict[str, Any]) -> str:
    """Compact JSON: the header indented, one line per frame."""
    header = {k: v for k, v in result.items() if k != "frames"}
    lines = json.dumps(header, indent=1)[:-2]  # without the closing "\n}"
    frames = ",\n".join(json.dumps(f, separators=(",", ":")) for f in result["frames"])
    return f'{lines},\n "frames": [\n{frames}\n ]\n}}\n'


def write_pedestrian_boxes(video_path: str | os.PathLike[str], out_path: str | os.PathLike[str], **params: Any) -> Path:
    """Build the boxes of a video with :func:`hog_boxes` (same keyword arguments) and write them to ``out_path``.

    The file is replaced in one step (a temporary file, then a rename); its directory is created if needed.
    """
    result = hog_boxes(video_path, **params)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(_to_json(result))
    tmp.replace(out)
    logger.info("wrote %s", out)
    return out


# ---------------------------------------------------------------------------------------------------------- loading


def _read_boxes_file(path: Path) -> dict[str, Any]:
    """The parsed boxes file, with its structure checked."""
    if not path.is_file():
        raise PedestrianDataError(f"boxes file not found: {path} (build it with `rgtp pedestrian-boxes`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PedestrianDataError(f"boxes file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise PedestrianDataError(f'{path} is not a pedestrian boxes file (no "format": "{_FORMAT}")')
    if data.get("version") != _VERSION:
        raise PedestrianDataError(f"{path}: unsupported boxes file version {data.get('version')!r} (expected 1)")
    for key, kind in (("sha256", str), ("num_frames", int), ("height", int), ("width", int), ("frames", list)):
        if not isinstance(data.get(key), kind):
            raise PedestrianDataError(f"{path}: missing or malformed {key!r}")
    if len(data["frames"]) != data["num_frames"]:
        raise PedestrianDataError(
            f"{path}: num_frames is {data['num_frames']} but {len(data['frames'])} frames of boxes are listed"
        )
    for t, boxes in enumerate(data["frames"]):
        if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) == 5 and all(isinstance(v, int | float) for v in b) for b in boxes
        ):
            raise PedestrianDataError(f"{path}: frame {t}: expected a list of [x1, y1, x2, y2, score] boxes")
    return data


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3) uint8, resampled as the detector's preprocessing does."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (T, h, w, 3)


def _decode_range(path: Path, start: int, stop: int, expected: int, size: tuple[int, int]) -> np.ndarray:
    """Frames [start, stop) resized to ``size`` (h, w), checking that the video has exactly ``expected`` frames."""
    from rgtp.io.video import read_frames

    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    count = 0
    for t, frame in enumerate(read_frames(path)):  # frame: (H, W, 3) uint8
        count += 1
        if start <= t < stop:
            batch.append(frame)
            if len(batch) == 32:
                out.append(_resize_frames(np.stack(batch), *size))
                batch = []
    if batch:
        out.append(_resize_frames(np.stack(batch), *size))
    if count != expected:
        raise PedestrianDataError(f"{path} has {count} frames but the boxes file describes {expected}")
    return np.concatenate(out)  # (stop - start, h, w, 3)


def load_pedestrians(
    video_path: str | os.PathLike[str],
    boxes_path: str | os.PathLike[str],
    split: str,
    size: int = 256,
    min_score: float = 0.5,
    chunk: int | None = None,
) -> DetectionSet:
    """A time split of the video with its HOG boxes, resized for a detector with ``size`` x ``size`` inputs.

    Args:
        video_path: vtest.avi (see the module docstring for where to get it).
        boxes_path: the boxes file made from it (``benchmarks/data/vtest_hog_boxes.json``).
        split: ``trainval`` (the first 75% of the frames), ``test`` (the rest), ``all``; ``val`` is the last 48
            frames of ``trainval`` and ``train`` the frames before them.
        size: the detector's square input side; frames get :func:`rgtp.models.vitdet.resize_shape` of it
            (768x576 -> 213x160 at 256) and boxes :func:`rgtp.models.vitdet.resize_scale`.
        min_score: keep boxes whose score (SVM margin) is at least this.
        chunk: frames per sequence (the last one may be shorter). None: :data:`TRAIN_CHUNK` for ``train``, one
            sequence for ``test`` and ``all``; 0: one sequence for any split. Sequences are named
            ``vtest[start:stop]`` with frame indices of the whole video.

    Returns:
        A :class:`DetectionSet` named ``pedestrians`` with classes ``("person",)``.

    Raises:
        PedestrianDataError: (a ValueError) on a missing video or boxes file, a malformed boxes file, or a boxes
            file made from another video (SHA-256, size or frame count).
        ValueError: on an invalid split, size or chunk.
    """
    from rgtp.models.vitdet import resize_scale, resize_shape

    if split not in _SPLITS:
        raise ValueError(f"unknown pedestrians split {split!r}; choose from {_SPLITS}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if chunk is not None and chunk < 0:
        raise ValueError(f"chunk must be >= 0 or None, got {chunk}")
    video = _check_video(video_path)
    source = Path(boxes_path)
    data = _read_boxes_file(source)
    digest = _sha256(video)
    if digest != data["sha256"]:
        raise PedestrianDataError(
            f"{source} was made from another video (SHA-256 {data['sha256'][:16]}...) than {video} "
            f"({digest[:16]}...); rebuild it with `rgtp pedestrian-boxes {video} --out {source}`"
        )
    n, height, width = data["num_frames"], data["height"], data["width"]
    cut = math.floor(TRAIN_FRACTION * n)
    val = cut - min(VAL_FRAMES, cut // 4)
    start, stop = {"train": (0, val), "val": (val, cut), "trainval": (0, cut), "test": (cut, n), "all": (0, n)}[split]
    if stop <= start:
        raise PedestrianDataError(f"{source}: the {split} split of {n} frames is empty")
    from rgtp.io.video import video_info

    info = video_info(video)
    if (info.height, info.width) != (height, width):
        raise PedestrianDataError(
            f"{video} is {info.width}x{info.height} but the boxes file describes {width}x{height} frames"
        )
    new_h, new_w = resize_shape(height, width, size)
    scale = resize_scale(height, width, size)
    frames = _decode_range(video, start, stop, n, (new_h, new_w))  # (stop - start, new_h, new_w, 3)
    boxes: list[np.ndarray] = []
    for raw in data["frames"][start:stop]:
        b = np.asarray(raw, dtype=np.float64).reshape(-1, 5)  # (M, 5)
        b = b[b[:, 4] >= min_score, :4] * scale  # (M', 4)
        b = np.clip(b, 0, [new_w, new_h, new_w, new_h])
        boxes.append(b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])].astype(np.float32))
    labels = tuple(np.zeros(len(b), dtype=np.int64) for b in boxes)
    whole = DetSequence(video.stem, frames, tuple(boxes), labels)
    step = (TRAIN_CHUNK if split in ("train", "trainval") else 0) if chunk is None else chunk
    step = step or len(whole)
    sequences = tuple(
        whole.slice(i, min(i + step, len(whole)), f"{video.stem}[{start + i}:{start + min(i + step, len(whole))}]")
        for i in range(0, len(whole), step)
    )
    logger.info(
        "pedestrians %s: frames [%d, %d) of %s at %dx%d, %d sequences, %d boxes",
        split,
        start,
        stop,
        video.name,
        new_w,
        new_h,
        len(sequences),
        sum(len(b) for b in boxes),
    )
    return DetectionSet("pedestrians", split, PEDESTRIAN_CLASSES, sequences)
