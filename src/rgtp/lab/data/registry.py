"""The lab's sets by name, and the scene-cut edit of the benchmark.

* Detection sets: :data:`DETECTION_SETS` and :func:`build_detection_set` (``rgtp train vitdet --data NAME``): the
  generated shapes and the vtest.avi pedestrians.
* Action sets: :data:`GENERATED_ACTION_SETS`, the generated motions and the easy motions of the curriculum's first
  stages. Importing this module adds them to the core's table, :data:`rgtp.data.registry.ACTION_DATASETS`, so that
  :func:`rgtp.data.registry.build_action_dataset` (``rgtp train vivit --dataset motions``, ``rgtp cache-spatial``)
  builds them as it builds the dataset readers.
* :func:`with_cuts`: a detection set cut into scenes, as an edited video is (``rgtp bench cuts``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from rgtp.config import ConfigError
from rgtp.data.action import ActionDataset
from rgtp.data.detection import DetectionSet, DetSequence
from rgtp.data.registry import ACTION_DATASETS
from rgtp.lab.data.motions import MotionDataset

__all__ = ["DETECTION_SETS", "GENERATED_ACTION_SETS", "build_detection_set", "with_cuts"]


# ---------------------------------------------------------------------------------------------------------------------
# Detection sets by name


def _shapes(split: str, **options: Any) -> DetectionSet:
    from rgtp.lab.data.shapes import make_shapes_split

    return make_shapes_split(split, **options)


def _pedestrians(
    split: str, video: str | os.PathLike[str] | None = None, boxes: str | os.PathLike[str] | None = None, **options: Any
) -> DetectionSet:
    from rgtp.lab.data.pedestrians import default_boxes, load_pedestrians

    if video is None:
        raise ConfigError("the pedestrians set needs the video (--video PATH to vtest.avi, OpenCV's sample clip)")
    boxes = default_boxes() if boxes is None else boxes  # the boxes shipped with the repository (a source checkout)
    for what, path in (("video", video), ("boxes file", boxes)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pedestrians {what} not found: {path}")
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


# ---------------------------------------------------------------------------------------------------------------------
# Action sets by name, added to the core's table


#: Builders ``(root, split, **options) -> ActionDataset`` of the generated action sets (the root is only recorded).
GENERATED_ACTION_SETS: dict[str, Callable[..., ActionDataset]] = {
    "motions": MotionDataset,
    # the first stages of the motions curriculum: the same clips without the distractor, on a flat background
    "motions-easy": functools.partial(MotionDataset, distractor=False, background="flat"),
}
ACTION_DATASETS.update(GENERATED_ACTION_SETS)


# ---------------------------------------------------------------------------------------------------------------------
# Scene cuts


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
