"""In-memory video detection sets: sequences of frames with exact boxes and classes per frame.

Sets small enough to live in memory (the lab's generated shapes and pedestrian footage, :mod:`rgtp.lab.data`) are
plain arrays rather than files: a :class:`DetSequence` is a (T, H, W, 3) uint8 video with one (M, 4) box array and
one (M,) label array per frame, and a :class:`DetectionSet` is a named, ordered list of sequences with class names.
Detector training (:mod:`rgtp.training.detection`) trains and validates on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["DetSequence", "DetectionSet"]


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
