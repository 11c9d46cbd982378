"""EPIC-KITCHENS-100 reader (method §12.3): narration segments labelled with a verb (main class) and a noun.

Annotations: ``EPIC_100_{train,validation}.csv`` (one row per segment: narration_id, participant_id, video_id,
start/stop_timestamp as ``HH:MM:SS.ff``, start/stop_frame, verb_class, noun_class, ...), looked for in ``<root>``,
``<root>/annotations`` and ``<root>/epic-kitchens-100-annotations``.  Class names come from
``EPIC_100_verb_classes.csv`` / ``EPIC_100_noun_classes.csv`` (columns ``id,key,...``) next to the split CSV, or
are ``verb_<k>`` / ``noun_<k>`` (97 verbs, 300 nouns) without them.  Segments keep the CSV order.

Two media layouts (``layout="auto"`` takes the first one found for a segment of the split):

``"video"``: ``<root>/videos/<video_id>.mp4`` (the reference), or ``<root>/<participant_id>/videos/<video_id>.MP4``
    (the official download script); a segment is decoded from ``start_timestamp`` (inclusive) to
    ``stop_timestamp`` (exclusive) at the native frame rate, like the reference's ``ffmpeg -ss start -to stop``.
``"frames"``: the official per-frame JPEG release, ``<root>/<participant_id>/rgb_frames/<video_id>/
    frame_<10-digit 1-based number>.jpg``; a segment is frames ``start_frame`` .. ``stop_frame`` inclusive.

Frames are resized so that the short side is ``short_side`` (320, the crop size of the EPIC presets).  A missing or
unreadable video, folder or frame raises :class:`~rgtp.data.action.ActionDataError` from :meth:`EpicKitchens.load`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from rgtp.data.action import ActionClip, ActionDataError, ActionDataset
from rgtp.data.kinetics import load_video_clip, read_csv_rows

__all__ = ["NUM_NOUNS", "NUM_VERBS", "EpicKitchens", "parse_timestamp"]

logger = logging.getLogger(__name__)

NUM_VERBS, NUM_NOUNS = 97, 300
_SPLIT_ALIASES = {"val": "validation"}
_COLUMNS = (
    "narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_frame", "stop_frame",
    "verb_class", "noun_class",
)  # fmt: skip
_TIMESTAMP = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)")


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS.ff`` (e.g. ``00:01:02.34``) in seconds; raises :class:`ValueError` on another format."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad timestamp {text!r} (expected HH:MM:SS.ff)")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class EpicKitchens(ActionDataset):
    """EPIC-KITCHENS-100 segments of one split; ``label`` is the verb class, ``noun`` the noun class.

    Args:
        root: Dataset folder (see the module docstring).
        split: ``train`` or ``validation`` (alias ``val``).
        annotations: The split's CSV, or the folder holding ``EPIC_100_<split>.csv`` (default: searched).
        layout: ``"video"``, ``"frames"`` or ``"auto"`` (detected from the files on disk).
        fps: Resample video segments to this frame rate (None: native frames, as the paper). Video layout only.
        short_side: Resize frames so that the short side has this size (None: native size).

    Raises:
        ActionDataError: If a CSV is missing or has a bad row (naming the file and line).
        ValueError: On an unknown layout, or ``fps`` with the frames layout.
    """

    name = "epic-kitchens"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "validation",
        *,
        annotations: str | os.PathLike[str] | None = None,
        layout: Literal["auto", "video", "frames"] = "auto",
        fps: float | None = None,
        short_side: int | None = 320,
    ) -> None:
        if layout not in ("auto", "video", "frames"):
            raise ValueError(f"unknown EPIC-KITCHENS layout {layout!r}; use 'auto', 'video' or 'frames'")
        self.root = Path(root)
        self.split = _SPLIT_ALIASES.get(split, split)
        self.fps = fps
        self.short_side = short_side
        csv_path = self._find_annotations(annotations)
        verbs = _class_names(csv_path.parent / "EPIC_100_verb_classes.csv", "verb", NUM_VERBS)
        nouns = _class_names(csv_path.parent / "EPIC_100_noun_classes.csv", "noun", NUM_NOUNS)
        rows = read_csv_rows(csv_path, _COLUMNS)
        self._videos: dict[str, Path] = {}
        self._searched: dict[str, str] = {}  # video id -> every place looked for it, when it is nowhere
        layout = self._detect_layout(rows) if layout == "auto" else layout
        self.layout = layout
        if fps is not None and layout == "frames":
            raise ValueError("fps resampling needs the video layout; the JPEG frames are read as released")
        clips = [self._clip(csv_path, line, row, len(verbs), len(nouns)) for line, row in rows]
        ids = {clip.id for clip in clips}
        if len(ids) != len(clips):
            raise ActionDataError(f"{csv_path}: duplicate narration_id values")
        super().__init__(clips, verbs, nouns)
        logger.info("EPIC-KITCHENS-100 %s: %d segments from %s (%s layout)", self.split, len(clips), csv_path, layout)

    def _find_annotations(self, annotations: str | os.PathLike[str] | None) -> Path:
        name = f"EPIC_100_{self.split}.csv"
        if annotations is not None:
            path = Path(annotations)
            path = path / name if path.is_dir() else path
            if not path.is_file():
                raise ActionDataError(f"EPIC-KITCHENS annotation file not found: {path}")
            return path
        candidates = [self.root / name, self.root / "annotations" / name]
        candidates.append(self.root / "epic-kitchens-100-annotations" / name)
        for path in candidates:
            if path.is_file():
                return path
        raise ActionDataError(f"no EPIC-KITCHENS annotation CSV for split {self.split!r}: tried {candidates}")

    def _video_path(self, participant: str, video: str) -> Path:
        """The first existing video file of ``video`` (cached), else ``<root>/videos/<video>.mp4``."""
        if video not in self._videos:
            candidates = [self.root / "videos" / f"{video}{s}" for s in (".mp4", ".MP4")]
            candidates += [self.root / participant / "videos" / f"{video}{s}" for s in (".MP4", ".mp4")]
            self._videos[video] = next((p for p in candidates if p.is_file()), candidates[0])
            if not self._videos[video].is_file():
                self._searched[video] = " | ".join(str(p) for p in candidates)
        return self._videos[video]

    def _frames_dir(self, participant: str, video: str) -> Path:
        return self.root / participant / "rgb_frames" / video

    def _detect_layout(self, rows: list[tuple[int, dict[str, str]]]) -> Literal["video", "frames"]:
        seen: set[str] = set()
        for _, row in rows:
            participant, video = row["participant_id"], row["video_id"]
            if video in seen:
                continue
            seen.add(video)
            if self._video_path(participant, video).is_file():
                return "video"
            if self._frames_dir(participant, video).is_dir():
                return "frames"
        logger.warning("EPIC-KITCHENS: no video or frame folder of this split found under %s", self.root)
        return "video"

    def _clip(self, csv_path: Path, line: int, row: dict[str, str], n_verbs: int, n_nouns: int) -> ActionClip:
        where = f"{csv_path} line {line}"
        try:
            start, stop = parse_timestamp(row["start_timestamp"]), parse_timestamp(row["stop_timestamp"])
            first, last = int(row["start_frame"]), int(row["stop_frame"])
            verb, noun = int(row["verb_class"]), int(row["noun_class"])
        except ValueError as exc:
            raise ActionDataError(f"{where}: {exc}") from exc
        if not stop > start or not 0 <= first <= last:
            raise ActionDataError(f"{where}: empty segment {start}-{stop} s, frames {first}-{last}")
        if not (0 <= verb < n_verbs and 0 <= noun < n_nouns):
            raise ActionDataError(f"{where}: verb_class {verb} or noun_class {noun} out of range")
        participant, video = row["participant_id"], row["video_id"]
        extra = {k: row.get(k, "") for k in ("participant_id", "video_id", "narration", "verb", "noun")}
        extra.update(start_frame=str(first), stop_frame=str(last))
        if self.layout == "frames":
            path, frames = self._frames_dir(participant, video), (first, last)
        else:
            path, frames = self._video_path(participant, video), None
            if video in self._searched:
                extra["searched"] = self._searched[video]
        return ActionClip(row["narration_id"], verb, path, noun, start, stop, frames, extra)

    def searched(self) -> list[str]:
        """Where the split's media are looked for."""
        if self.layout == "frames":
            return [f"{self.root}/<participant>/rgb_frames/<video>/frame_*.jpg"]
        return [f"{self.root}/videos/<video>.mp4", f"{self.root}/<participant>/videos/<video>.MP4"]

    def missing(self) -> list[str]:
        """Ids of the segments whose video (or frame folder, first or last frame) does not exist; nothing is decoded."""
        out = []
        for clip in self.clips:
            if clip.frames is None:
                ok = clip.path.is_file()
            else:
                ok = all((clip.path / _frame_name(n)).is_file() for n in clip.frames)
            if not ok:
                out.append(clip.id)
        return out

    def load(self, clip: ActionClip) -> np.ndarray:
        """The segment's frames: -> (T, H, W, 3) uint8 RGB.

        Raises:
            ActionDataError: If the video, frame folder or a frame is missing or unreadable (naming the file).
        """
        if clip.frames is None:
            return load_video_clip(clip, self.fps, self.short_side)
        return self._load_frames(clip)

    def _load_frames(self, clip: ActionClip) -> np.ndarray:
        from PIL import Image

        from rgtp.io.video import resize_short_side

        assert clip.frames is not None
        if not clip.path.is_dir():
            raise ActionDataError(f"clip {clip.id}: frame folder not found: {clip.path}")
        frames = []
        for number in range(clip.frames[0], clip.frames[1] + 1):
            path = clip.path / _frame_name(number)
            try:
                with Image.open(path) as image:
                    frame = np.asarray(image.convert("RGB"))
            except FileNotFoundError as exc:
                raise ActionDataError(f"clip {clip.id}: frame file not found: {path}") from exc
            except (OSError, ValueError) as exc:
                raise ActionDataError(f"clip {clip.id}: cannot read frame {path}: {exc}") from exc
            frames.append(frame if self.short_side is None else resize_short_side(frame, self.short_side))
        if len({f.shape for f in frames}) > 1:
            raise ActionDataError(f"clip {clip.id}: frames of different sizes in {clip.path}")
        return np.stack(frames)  # (T, H, W, 3)


def _frame_name(number: int) -> str:
    return f"frame_{number:010d}.jpg"


def _class_names(path: Path, kind: str, count: int) -> list[str]:
    """Class names by id from an ``EPIC_100_<kind>_classes.csv`` (columns id,key), or ``<kind>_<k>`` without it."""
    if not path.is_file():
        logger.info("%s not found: %s classes are named %s_<k>", path, kind, kind)
        return [f"{kind}_{k}" for k in range(count)]
    names: dict[int, str] = {}
    for line, row in read_csv_rows(path, ("id", "key")):
        try:
            names[int(row["id"])] = row["key"]
        except ValueError as exc:
            raise ActionDataError(f"{path} line {line}: bad id {row['id']!r}") from exc
    if sorted(names) != list(range(len(names))):
        raise ActionDataError(f"{path}: class ids are not 0..{len(names) - 1}")
    return [names[k] for k in range(len(names))]
