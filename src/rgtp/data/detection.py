"""In-memory video detection sets: sequences of frames with exact boxes and classes per frame.

The benchmark sets (generated shapes, the pedestrian footage) are small enough to live in memory, so they are plain
arrays rather than files: a :class:`DetSequence` is a (T, H, W, 3) uint8 video with one (M, 4) box array and one
(M,) label array per frame, and a :class:`DetectionSet` is a named, ordered list of sequences with class names.
:func:`build_detection_set` makes a set by name (:data:`DETECTION_SETS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgtp.config import ConfigError

__all__ = ["DETECTION_SETS", "DetSequence", "DetectionSet", "build_detection_set"]


@dataclass(frozen=True)
class DetSequence:
    """One video with per-frame annotations.

    Attributes:
        name: unique within its set.
        frames: (T, H, W, 3) uint8 RGB.
        boxes: T arrays of shape (M_t, 4), float32 xyxy in pixels (x2, y2 exclusive edges).
        labels: T arrays of shape (M_t,), int64 class indices into the set's ``classes``.
    """

    name: str
    frames: np.ndarray
    boxes: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"{self.name}: frames must be (T, H, W, 3) uint8, got {f.shape} {f.dtype}")
        if not (len(self.boxes) == len(self.labels) == f.shape[0]):
            raise ValueError(
                f"{self.name}: {f.shape[0]} frames but {len(self.boxes)} box and {len(self.labels)} label arrays"
            )
        for t, (b, lab) in enumerate(zip(self.boxes, self.labels, strict=True)):
            if b.ndim != 2 or b.shape[1] != 4 or lab.shape != (b.shape[0],):
                raise ValueError(f"{self.name} frame {t}: boxes {b.shape} and labels {lab.shape} do not match")

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def slice(self, start: int, stop: int, name: str | None = None) -> DetSequence:
        """Frames [start, stop) as a new sequence."""
        return DetSequence(
            name or f"{self.name}[{start}:{stop}]",
            self.frames[start:stop],
            self.boxes[start:stop],
            self.labels[start:stop],
        )


@dataclass(frozen=True)
class DetectionSet:
    """A named split: sequences in a fixed order and the class names their labels index."""

    name: str
    split: str
    classes: tuple[str, ...]
    sequences: tuple[DetSequence, ...]

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[DetSequence]:
        return iter(self.sequences)

    def __getitem__(self, index: int) -> DetSequence:
        return self.sequences[index]

    @property
    def num_frames(self) -> int:
        return sum(len(s) for s in self.sequences)

    def describe(self) -> dict[str, object]:
        """What identifies this set (for result headers and resume checks)."""
        return {
            "name": self.name,
            "split": self.split,
            "classes": list(self.classes),
            "sequences": [s.name for s in self.sequences],
            "frames": self.num_frames,
        }


def with_cuts(data: DetectionSet, every: int) -> DetectionSet:
    """The same frames cut every ``every`` frames, as an edited video is: sequence i shows segment k of sequence
    (i + k) mod n, so each sequence jumps to another scene (another background, other objects) at every cut.

    Every sequence must have the same length; the result has the same sequences count, frames and annotations.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    lengths = {len(s) for s in data.sequences}
    if len(lengths) > 1:
        raise ValueError(f"scene cuts need sequences of one length, got {sorted(lengths)}")
    n, length = len(data.sequences), lengths.pop() if lengths else 0
    cut = []
    for i in range(n):
        parts = [data.sequences[(i + k // every) % n].slice(k, min(k + every, length)) for k in range(0, length, every)]
        cut.append(
            DetSequence(
                f"{data.sequences[i].name}_cut{every}",
                np.concatenate([p.frames for p in parts]),
                tuple(b for p in parts for b in p.boxes),
                tuple(lab for p in parts for lab in p.labels),
            )
        )
    return DetectionSet(data.name, data.split, data.classes, tuple(cut))


# ---------------------------------------------------------------------------------------------------------------------
# Sets by name


def _shapes(split: str, **options: Any) -> DetectionSet:
    from rgtp.data.shapes import make_shapes_split

    return make_shapes_split(split, **options)


def _pedestrians(
    split: str, video: str | os.PathLike[str] | None = None, boxes: str | os.PathLike[str] | None = None, **options: Any
) -> DetectionSet:
    if video is None:
        raise ConfigError("the pedestrians set needs the video (--video PATH to vtest.avi, OpenCV's sample clip)")
    if boxes is None:  # the boxes shipped with the repository (a source checkout)
        boxes = Path(__file__).resolve().parents[3] / "benchmarks" / "data" / "vtest_hog_boxes.json"
    for what, path in (("video", video), ("boxes file", boxes)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"pedestrians {what} not found: {path}")
    from rgtp.data.pedestrians import load_pedestrians

    return load_pedestrians(video, boxes, split, **options)


#: Builders ``(split, **options) -> DetectionSet`` by set name (their modules are imported on first use).
DETECTION_SETS: dict[str, Callable[..., DetectionSet]] = {"shapes": _shapes, "pedestrians": _pedestrians}


def build_detection_set(name: str, split: str, **options: Any) -> DetectionSet:
    """The split ``split`` of the set ``name`` (a key of :data:`DETECTION_SETS`) with the builder's options
    (shapes: ``num_sequences``, ``length``, ``seed``; pedestrians: ``video``, ``boxes`` (default: the repository's
    ``benchmarks/data/vtest_hog_boxes.json``), ``size``).

    Raises:
        ConfigError: On an unknown name (listing the known ones).
    """
    if name not in DETECTION_SETS:
        raise ConfigError(f"unknown detection set {name!r}; known sets: {', '.join(DETECTION_SETS)}")
    return DETECTION_SETS[name](split, **options)
