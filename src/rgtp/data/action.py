"""What every action-recognition dataset provides (Kinetics-400, EPIC-KITCHENS-100, generated sets).

A dataset is an ordered list of :class:`ActionClip` (what to read and its labels) plus :meth:`ActionDataset.load`,
which decodes one clip to uint8 RGB frames. Readers never drop a clip silently: a clip whose video is missing or
cannot be decoded raises :class:`ActionDataError` from ``load``, and the caller (evaluation, caching) records it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from rgtp.config import Preset, ViViTConfig
from rgtp.data.views import make_views

__all__ = ["ActionClip", "ActionDataError", "ActionDataset", "preset_views"]


class ActionDataError(ValueError):
    """A clip that cannot be read (missing or undecodable video, bad annotation); the message names the file."""


@dataclass(frozen=True)
class ActionClip:
    """One labelled clip: a segment [start, stop) seconds of a video file, or a frame range of a JPEG folder."""

    id: str  # unique within the dataset (Kinetics: <youtube_id>_<start:06d>_<end:06d>; EPIC: narration_id)
    label: int  # main class (Kinetics class, EPIC verb class)
    path: Path  # video file, or folder of frames
    noun: int = -1  # EPIC noun class (-1: none)
    start: float | None = None  # seconds into the video (None: from the beginning)
    stop: float | None = None  # seconds (None: to the end)
    frames: tuple[int, int] | None = None  # JPEG layout: first and last frame number, inclusive
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class ActionDataset:
    """Base class: ``clips`` in a fixed order, class names, and :meth:`load`."""

    name: str = "action"
    hflip: bool = True  # random horizontal flips keep the label (False: the class depends on left/right)

    def __init__(self, clips: list[ActionClip], classes: list[str], nouns: list[str] | None = None) -> None:
        self.clips = clips
        self.classes = classes
        self.nouns = nouns or []

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> ActionClip:
        return self.clips[index]

    def __iter__(self) -> Iterator[ActionClip]:
        return iter(self.clips)

    def load(self, clip: ActionClip) -> np.ndarray:
        """The clip's frames, (T, H, W, 3) uint8 RGB; raises :class:`ActionDataError` naming the file."""
        raise NotImplementedError

    def searched(self) -> list[str]:
        """Where the reader looks for the media of its clips, for errors that say nothing could be read."""
        root = getattr(self, "root", None)
        return [str(root)] if root is not None else []

    def describe(self) -> dict[str, Any]:
        """What determines the frames this reader produces (name, root, decoding options): results and caches of
        runs with different readers must not be mixed on resume."""
        keys = ("root", "layout", "fps", "short_side")
        found = {k: getattr(self, k) for k in keys if hasattr(self, k)}
        return {"name": self.name, **{k: str(v.resolve()) if isinstance(v, Path) else v for k, v in found.items()}}


def preset_views(video: np.ndarray, preset: Preset) -> Tensor:
    """The preset's evaluation views of a decoded video: -> (views, 3, frames, crop, crop), spatial-major."""
    cfg = preset.model
    if not isinstance(cfg, ViViTConfig):
        raise ValueError(f"preset {preset.name} is not a ViViT preset")
    return make_views(video, cfg.num_frames, preset.temporal_stride, cfg.img_size, preset.views)
