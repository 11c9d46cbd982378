"""ImageNet VID readers: sequences of frames with ground-truth boxes, for frame-by-frame detector evaluation.

Two on-disk layouts are understood (method §12.1 for the evaluation protocol):

``"ilsvrc"`` -- the official ILSVRC2015 VID release::

    <root>/Data/VID/<split>/[<subfolder>/]<video>/<NNNNNN>.JPEG
    <root>/Annotations/VID/<split>/[<subfolder>/]<video>/<NNNNNN>.xml

  Video folders are discovered under the annotation split folder (train has one more folder level,
  ``ILSVRC2015_VID_train_000k``); an image folder without an annotation folder is not looked at (``test`` has no
  annotations).  Within a video every XML needs its JPEG and vice versa.  Objects are mapped to the 30 VID
  classes by WordNet id; boxes are ``(xmin, ymin, xmax, ymax)`` exactly as written (no +1).  A sequence is named by
  its video folder (``ILSVRC2015_val_00000000``).

``"coco"`` -- the COCO-style JSONs of the Eventful Transformers release (``det_train``, ``vid_train``, ``vid_val``,
  ``vid_minival``): ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``,
  ``bbox`` as xywh, ``category_id`` in 1..30) and ``categories``.  Boxes become xyxy and labels ``category_id - 1``.
  The JSON is looked for, in this order, at

  * ``<root>/<split>.json`` (e.g. ``data/vid/vid_val.json``),
  * ``<root>/annotations/<split>.json`` (``vid_data.tar`` extracted as is, ``root`` = its ``vid_data`` folder),
  * ``<root>/<split>/labels.json`` (the folder the Eventful code builds from ``vid_data.tar``),

  where ``split`` may be given as ``"val"`` for ``"vid_val"`` (likewise ``train``/``minival``).  Only the *stem* of
  ``file_name`` identifies a frame: it ends in ``<video_id>_<frame>`` (e.g. ``ILSVRC2015_val_00000000_000000``).
  The frames are grouped by everything before the last ``_`` (the sequence name, ``ILSVRC2015_val_00000000``, the
  same name as in the ILSVRC layout) and the frame number is the last ``_`` token.  The image file is found with
  the first of these patterns that matches the first selected frame (and must then exist for every selected frame):

  * ``<root>/<split>/frames/<video_id>/<frame>.jpg`` -- the Eventful unpacked layout, where ``video_id`` is the
    second-to-last ``_`` token of the stem (``00000000``) and ``<frame>`` keeps its zero padding;
  * ``<root>/<split>/<file_name>`` -- the flat ``vid_data.tar`` layout (``vid_data/vid_val/*.JPEG``);
  * ``<root>/frames/<video_id>/<frame>.jpg`` and ``<root>/frames/<file_name>``;
  * ``<root>/<file_name>``.

  Extra ``images``/``annotations`` fields (``video_id``, ``frame_id``, ``iscrowd``, ...) are ignored, as in the
  Eventful code, which also uses every annotation (crowd or not) and never reads ``width``/``height`` (here they
  are kept and checked against the decoded image).  ``det_train`` holds still images: their "videos" are whatever
  the stem rule yields.  ``vid_minival`` has no frames of its own in the release; its images are looked for under
  ``vid_val`` as well.
  ``frames_dir=`` overrides the search (``<frames_dir>/<file_name>`` or ``<frames_dir>/<video_id>/<frame>.jpg``).

In both layouts frames are grouped by video and sorted by frame number.  A video whose frame numbers have a gap is
split into several sequences, **all** of which get a ``#k`` suffix counted from 0 (``<video>#0``, ``<video>#1``, ...),
so that a plain name always means a whole, gap-free video.  Sequences are ordered by (video name, part number).
Missing, unreadable or inconsistent files and annotations raise :class:`VIDDataError` naming the path; nothing is
skipped silently.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

__all__ = [
    "VID_CLASSES",
    "VID_WNIDS",
    "VIDDataError",
    "VIDDataset",
    "VIDFrame",
    "VIDSequence",
    "load_frame",
    "split_at_gaps",
]

logger = logging.getLogger(__name__)

#: The 30 ImageNet VID classes in the standard order (index = label).
VID_CLASSES: tuple[str, ...] = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog", "domestic_cat",
    "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard", "monkey", "motorcycle", "rabbit",
    "red_panda", "sheep", "snake", "squirrel", "tiger", "train", "turtle", "watercraft", "whale", "zebra",
)  # fmt: skip

#: WordNet ids of :data:`VID_CLASSES`, same order.
VID_WNIDS: tuple[str, ...] = (
    "n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116", "n02958343", "n02402425",
    "n02084071", "n02121808", "n02503517", "n02118333", "n02510455", "n02342885", "n02374451", "n02129165",
    "n01674464", "n02484322", "n03790512", "n02324045", "n02509815", "n02411705", "n01726692", "n02355227",
    "n02129604", "n04468005", "n01662784", "n04530566", "n02062744", "n02391049",
)  # fmt: skip

_WNID_TO_LABEL: dict[str, int] = {wnid: i for i, wnid in enumerate(VID_WNIDS)}
_IMAGE_SUFFIXES = (".jpeg", ".jpg")
_AUTO_PROGRESS_MIN = 5000  # files; below this no tqdm bar is shown when progress=None
_INSTALL_HINT = "Reading VID frames needs Pillow: pip install 'rgtp[video]' (or pip install pillow)"

Layout = Literal["auto", "ilsvrc", "coco"]


class VIDDataError(ValueError):
    """A missing, unreadable or corrupt dataset file, or a bad annotation.  The message names the path."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


_EMPTY_BOXES = _readonly(np.zeros((0, 4), dtype=np.float32))
_EMPTY_LABELS = _readonly(np.zeros((0,), dtype=np.int64))


@dataclass(frozen=True, eq=False)
class VIDFrame:
    """One annotated frame.  ``boxes``/``labels`` are coerced to float32/int64 and made read-only.

    Equality is identity (the fields hold numpy arrays).
    """

    path: Path  # image file
    index: int  # frame number in the video
    width: int  # original image size, from the annotation
    height: int
    boxes: np.ndarray  # (M, 4) float32 xyxy, original pixels
    labels: np.ndarray  # (M,) int64 in [0, 30)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        labels = np.asarray(self.labels, dtype=np.int64)
        if boxes.size == 0 and labels.size == 0:
            boxes, labels = _EMPTY_BOXES, _EMPTY_LABELS
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
            raise ValueError(f"{self.path}: boxes must be (M, 4) and labels (M,); got {boxes.shape} and {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(VID_CLASSES)):
            raise ValueError(f"{self.path}: labels must lie in [0, {len(VID_CLASSES)}); got {labels.tolist()}")
        if boxes.flags.writeable:  # never freeze the caller's array in place
            boxes = _readonly(boxes.copy())
        if labels.flags.writeable:
            labels = _readonly(labels.copy())
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        for name in ("index", "width", "height"):
            if type(getattr(self, name)) is not int:
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)

    @property
    def num_objects(self) -> int:
        """Number of ground-truth boxes."""
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class VIDSequence:
    """A run of consecutive frames of one video (a whole video unless it had a gap; then ``name`` ends in ``#k``)."""

    name: str
    frames: tuple[VIDFrame, ...]

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[VIDFrame]:
        return iter(self.frames)

    def __getitem__(self, i: int) -> VIDFrame:
        return self.frames[i]

    @property
    def video(self) -> str:
        """The video this sequence comes from (``name`` without a ``#k`` part suffix)."""
        return _video_of(self.name)

    @property
    def indices(self) -> list[int]:
        """Frame numbers of the frames, in order."""
        return [f.index for f in self.frames]


def _video_of(name: str) -> str:
    base, sep, part = name.rpartition("#")
    return base if sep and part.isdigit() else name


def split_at_gaps(indices: Sequence[int]) -> list[list[int]]:
    """Group positions ``0..len(indices)-1`` into runs of consecutive frame numbers.

    ``split_at_gaps([0, 1, 2, 5, 6]) == [[0, 1, 2], [3, 4]]``.  ``indices`` must be strictly increasing
    (:class:`ValueError` otherwise); an empty input gives ``[]``.
    """
    runs: list[list[int]] = []
    prev = 0
    for pos, raw in enumerate(indices):
        idx = int(raw)
        if pos and idx <= prev:
            raise ValueError(f"frame numbers must be strictly increasing; got {prev} then {idx} at position {pos}")
        if not pos or idx != prev + 1:
            runs.append([])
        runs[-1].append(pos)
        prev = idx
    return runs


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return Image


def load_frame(frame: VIDFrame | str | Path) -> np.ndarray:
    """Decode a frame to a ``(H, W, 3)`` uint8 RGB array with Pillow.

    Raises :class:`VIDDataError` naming the path if the file is missing, unreadable, not an image or truncated, and,
    for a :class:`VIDFrame`, if the decoded size differs from its annotated ``(height, width)``.
    """
    Image = _import_pil()
    path = Path(frame.path if isinstance(frame, VIDFrame) else frame)
    try:
        with Image.open(path) as img:
            img.load()  # full decode: raises OSError on truncated data
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            array = np.array(rgb, dtype=np.uint8)  # (H, W, 3)
    except FileNotFoundError as exc:
        raise VIDDataError(f"{path}: image file not found") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise VIDDataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:  # pragma: no cover - convert("RGB") guarantees this
        raise VIDDataError(f"{path}: decoded to an array of shape {array.shape}, expected (H, W, 3)")
    if isinstance(frame, VIDFrame) and array.shape[:2] != (frame.height, frame.width):
        raise VIDDataError(
            f"{path}: decoded image is {array.shape[1]}x{array.shape[0]} (WxH) but the annotation says "
            f"{frame.width}x{frame.height}"
        )
    return array


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


class _Progress:
    """Progress over a known number of files: ``logging`` every ~10 % plus an optional tqdm bar."""

    def __init__(self, total: int, desc: str, show_bar: bool | None) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self._next_log = max(total // 10, 1)
        self._t0 = time.perf_counter()
        self._bar: Any = None
        if show_bar or (show_bar is None and total >= _AUTO_PROGRESS_MIN):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self.done >= self._next_log and self.done < self.total:
            logger.info("%s: %d/%d files (%.1f s)", self.desc, self.done, self.total, time.perf_counter() - self._t0)
            self._next_log = self.done + max(self.total // 10, 1)

    def close(self) -> float:
        if self._bar is not None:
            self._bar.close()
        return time.perf_counter() - self._t0


class _ListingCache:
    """Caches directory listings so that checking 10^5..10^6 files costs one ``scandir`` per folder."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        parent = str(path.parent)
        names = self._names.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(parent))
            except OSError:
                names = frozenset()
            self._names[parent] = names
        return path.name in names


def _build_sequences(videos: dict[str, list[VIDFrame]]) -> list[VIDSequence]:
    """Sort each video's frames by number, split at gaps, name the parts; ordered by (video, part)."""
    sequences: list[VIDSequence] = []
    for video in sorted(videos):
        frames = sorted(videos[video], key=lambda f: f.index)
        for a, b in itertools.pairwise(frames):
            if a.index == b.index:
                raise VIDDataError(f"{b.path}: frame number {b.index} of video {video!r} also used by {a.path}")
        runs = split_at_gaps([f.index for f in frames])
        for k, run in enumerate(runs):
            name = video if len(runs) == 1 else f"{video}#{k}"
            sequences.append(VIDSequence(name, tuple(frames[p] for p in run)))
    return sequences


def _select(
    sequences: list[VIDSequence],
    names: Iterable[str] | None,
    max_sequences: int | None,
    known: Iterable[str] = (),
) -> list[VIDSequence]:
    """Keep the sequences named in ``names`` (a sequence name, or a video name for all its parts), then the first
    ``max_sequences``.  Unknown names raise :class:`ValueError` with close matches."""
    if names is not None:
        wanted = [names] if isinstance(names, str) else list(names)
        by_seq = {s.name for s in sequences}
        by_video = {s.video for s in sequences}
        unknown = [n for n in wanted if n not in by_seq and n not in by_video]
        if unknown:
            pool = sorted(by_seq | by_video | set(known))
            hints = difflib.get_close_matches(unknown[0], pool, n=3)
            hint = f"; close matches: {', '.join(hints)}" if hints else ""
            raise ValueError(f"unknown VID sequence name(s): {', '.join(unknown)}{hint}")
        keep = set(wanted)
        sequences = [s for s in sequences if s.name in keep or s.video in keep]
    if max_sequences is not None:
        sequences = sequences[:max_sequences]
    return sequences


def _check_max_sequences(max_sequences: int | None) -> None:
    if max_sequences is not None and (isinstance(max_sequences, bool) or int(max_sequences) < 0):
        raise ValueError(f"max_sequences must be a non-negative integer or None; got {max_sequences!r}")


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _positive_int(value: Any) -> int | None:
    number = _finite_number(value)
    if number is None or number != int(number) or number < 1:
        return None
    return int(number)


# ----------------------------------------------------------------------------------------------------------------
# ILSVRC2015 VID (XML) layout
# ----------------------------------------------------------------------------------------------------------------


def _ilsvrc_split_names(split: str) -> list[str]:
    names = [split]
    if split.startswith("vid_") and len(split) > 4:
        names.append(split[4:])
    return names


def _xml_number(parent: ET.Element, tag: str, path: str | Path) -> float:
    text = parent.findtext(tag)
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VIDDataError(f"{path}: <{parent.tag}><{tag}> is missing or not a finite number ({text!r})")
    return value


def _parse_vid_xml(path: str | Path) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Read one VID annotation: ``(width, height, boxes (M, 4) float32 xyxy, labels (M,) int64)``."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise VIDDataError(f"{path}: cannot parse annotation XML ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise VIDDataError(f"{path}: annotation has no <size> element")
    width, height = _xml_number(size, "width", path), _xml_number(size, "height", path)
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise VIDDataError(f"{path}: bad image size {width}x{height}")
    boxes: list[list[float]] = []
    labels: list[int] = []
    for obj in root.findall("object"):
        wnid = (obj.findtext("name") or "").strip()
        label = _WNID_TO_LABEL.get(wnid)
        if label is None:
            raise VIDDataError(f"{path}: object with unknown WordNet id {wnid!r} (not one of the 30 VID classes)")
        box = obj.find("bndbox")
        if box is None:
            raise VIDDataError(f"{path}: object {wnid} has no <bndbox>")
        boxes.append([_xml_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(label)
    if not boxes:
        return int(width), int(height), _EMPTY_BOXES, _EMPTY_LABELS
    return int(width), int(height), _readonly(np.asarray(boxes, np.float32)), _readonly(np.asarray(labels, np.int64))


def _discover_ilsvrc_videos(ann_split: Path) -> list[tuple[str, Path, list[str]]]:
    """``(video name, folder relative to the split, XML file names)`` for every folder holding XMLs, by name."""
    found: dict[str, tuple[Path, list[str]]] = {}

    def on_error(exc: OSError) -> None:
        raise VIDDataError(f"{exc.filename}: cannot list annotation folder ({exc.strerror})") from exc

    for dirpath, dirnames, filenames in os.walk(ann_split, onerror=on_error):
        dirnames.sort()
        xmls = [f for f in filenames if f.lower().endswith(".xml")]
        if not xmls:
            continue
        rel = Path(dirpath).relative_to(ann_split)
        name = rel.name or ann_split.name
        if name in found:
            raise VIDDataError(
                f"{ann_split / rel}: video folder name {name!r} also used by {ann_split / found[name][0]}"
            )
        found[name] = (rel, xmls)
    return [(name, *found[name]) for name in sorted(found)]


def _frame_number(stem: str, path: str | Path) -> int:
    if not stem.isdigit():
        raise VIDDataError(f"{path}: file name {stem!r} is not a frame number")
    return int(stem)


def _read_ilsvrc_video(
    name: str, ann_dir: Path, data_dir: Path, xml_names: list[str], progress: _Progress
) -> list[VIDFrame]:
    """Parse one video folder; every XML needs its JPEG and every JPEG its XML."""
    xml_by_stem = {n[: -len(".xml")]: n for n in xml_names}
    try:
        listing = os.listdir(data_dir)
    except OSError as exc:
        raise VIDDataError(f"{data_dir}: image folder of video {name} is missing or unreadable ({exc})") from exc
    jpg_by_stem = {os.path.splitext(n)[0]: n for n in listing if os.path.splitext(n)[1].lower() in _IMAGE_SUFFIXES}
    no_image = sorted(set(xml_by_stem) - set(jpg_by_stem))
    if no_image:
        raise VIDDataError(
            f"{data_dir / (no_image[0] + '.JPEG')}: image file missing for annotation "
            f"{ann_dir / xml_by_stem[no_image[0]]} ({len(no_image)} missing in this video)"
        )
    no_xml = sorted(set(jpg_by_stem) - set(xml_by_stem))
    if no_xml:
        raise VIDDataError(
            f"{ann_dir / (no_xml[0] + '.xml')}: annotation file missing for image {data_dir / jpg_by_stem[no_xml[0]]}"
            f" ({len(no_xml)} missing in this video)"
        )
    frames = []
    ann_root = str(ann_dir)
    for stem in sorted(xml_by_stem):
        xml_path = os.path.join(ann_root, xml_by_stem[stem])  # str: cheaper than Path in this hot loop
        width, height, boxes, labels = _parse_vid_xml(xml_path)
        frames.append(
            VIDFrame(data_dir / jpg_by_stem[stem], _frame_number(stem, xml_path), width, height, boxes, labels)
        )
    progress.update(len(xml_names))
    return frames


def _read_ilsvrc(
    root: Path,
    split: str,
    names: Iterable[str] | None,
    max_sequences: int | None,
    show_progress: bool | None,
) -> list[VIDSequence]:
    ann_split = root / "Annotations" / "VID" / split
    data_split = root / "Data" / "VID" / split
    if not data_split.is_dir():
        raise VIDDataError(f"{data_split}: image folder of split {split!r} not found (annotations: {ann_split})")
    videos = _discover_ilsvrc_videos(ann_split)
    if not videos:
        raise VIDDataError(f"{ann_split}: no video folders with XML annotations found")
    all_videos = [v[0] for v in videos]
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        wanted = {_video_of(n) for n in names}
        videos = [v for v in videos if v[0] in wanted]
    total = sum(len(v[2]) for v in videos)
    logger.info("ImageNet VID (ILSVRC layout): %d videos, %d annotation files under %s", len(videos), total, ann_split)
    progress = _Progress(total, f"VID {split}", show_progress)
    sequences: list[VIDSequence] = []
    try:
        for name, rel, xml_names in videos:
            frames = _read_ilsvrc_video(name, ann_split / rel, data_split / rel, xml_names, progress)
            sequences.extend(_build_sequences({name: frames}))
            if names is None and max_sequences is not None and len(sequences) >= max_sequences:
                break
    finally:
        elapsed = progress.close()
    logger.info("parsed %d annotation files in %.1f s", progress.done, elapsed)
    return _select(sequences, names, max_sequences, known=all_videos)


# ----------------------------------------------------------------------------------------------------------------
# COCO-style JSON layout (Eventful Transformers release)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CocoImage:
    image_id: Any
    file_name: str
    width: int
    height: int
    video: str  # sequence name: the stem without its last "_<frame>" part
    video_id: str  # second-to-last "_" token of the stem (Eventful's folder name)
    frame: str  # last "_" token of the stem, zero padding kept


def _coco_split_names(split: str) -> list[str]:
    names = [split]
    if not split.startswith(("vid_", "det_")):
        names.append(f"vid_{split}")
    return names


def _coco_json_candidates(root: Path, split: str) -> list[Path]:
    out: list[Path] = []
    for name in _coco_split_names(split):
        out += [root / f"{name}.json", root / "annotations" / f"{name}.json", root / name / "labels.json"]
    return out


def _load_json(path: Path) -> dict[str, Any]:
    logger.info("loading %s", path)
    try:
        with path.open("r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VIDDataError(f"{path}: cannot read annotation JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise VIDDataError(f"{path}: not a COCO-style annotation file (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise VIDDataError(f"{path}: '{key}' must be a list")
    return data


def _coco_classes(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """Class names from ``categories`` (id 1..30), falling back to :data:`VID_CLASSES` for ids not listed."""
    names = list(VID_CLASSES)
    for cat in data.get("categories", []):
        cid = _positive_int(cat.get("id")) if isinstance(cat, dict) else None
        if cid is None or cid > len(VID_CLASSES) or not isinstance(cat.get("name"), str):
            logger.warning("%s: ignoring category %r (expected an id in 1..%d and a name)", path, cat, len(names))
            continue
        names[cid - 1] = cat["name"]
    if names != list(VID_CLASSES):
        logger.info("%s: category names differ from the standard VID names", path)
    return tuple(names)


def _parse_coco_stem(file_name: str) -> tuple[str, str, str] | None:
    """``(video, video_id, frame)`` from a ``file_name`` whose stem ends in ``<video_id>_<frame>``.

    A stem that is only digits (``.../<video>/000123.JPEG``) takes its video from the parent folder.
    """
    p = PurePosixPath(file_name.replace("\\", "/"))
    prefix, sep, frame = p.stem.rpartition("_")
    if sep and prefix and frame.isdigit():
        return prefix, prefix.rpartition("_")[2], frame
    if p.stem.isdigit() and p.parent.name:
        return p.parent.name, p.parent.name, p.stem
    return None


def _coco_images(data: dict[str, Any], path: Path) -> list[_CocoImage]:
    images: list[_CocoImage] = []
    seen: set[Any] = set()
    for pos, img in enumerate(data["images"]):
        where = f"{path}: images[{pos}]"
        if not isinstance(img, dict):
            raise VIDDataError(f"{where} is not an object")
        image_id, file_name = img.get("id"), img.get("file_name")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise VIDDataError(f"{where} has a missing or bad 'id' ({image_id!r})")
        if image_id in seen:
            raise VIDDataError(f"{where}: duplicate image id {image_id!r}")
        seen.add(image_id)
        if not isinstance(file_name, str) or not file_name:
            raise VIDDataError(f"{where} (id {image_id}) has a missing or bad 'file_name' ({file_name!r})")
        width, height = _positive_int(img.get("width")), _positive_int(img.get("height"))
        if width is None or height is None:
            raise VIDDataError(
                f"{where} ({file_name}) has a missing or bad size {img.get('width')!r}x{img.get('height')!r}"
            )
        parsed = _parse_coco_stem(file_name)
        if parsed is None:
            raise VIDDataError(f"{where}: file_name {file_name!r} does not end in '<video_id>_<frame number>'")
        images.append(_CocoImage(image_id, file_name, width, height, *parsed))
    return images


def _coco_annotations(data: dict[str, Any], path: Path, image_ids: set[Any]) -> dict[Any, list[tuple[Any, ...]]]:
    """``image id -> [(x1, y1, x2, y2, label), ...]`` with xywh converted to xyxy and label = category_id - 1."""
    per_image: dict[Any, list[tuple[Any, ...]]] = {}
    for pos, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            raise VIDDataError(f"{path}: annotations[{pos}] is not an object")
        where = f"{path}: annotation {ann.get('id', f'#{pos}')!r}"
        image_id = ann.get("image_id")
        if isinstance(image_id, bool) or image_id not in image_ids:
            raise VIDDataError(f"{where} refers to unknown image_id {image_id!r}")
        cid = _positive_int(ann.get("category_id"))
        if cid is None or cid > len(VID_CLASSES):
            raise VIDDataError(
                f"{where} has category_id {ann.get('category_id')!r}; expected an integer in 1..{len(VID_CLASSES)}"
            )
        bbox = ann.get("bbox")
        xywh = [_finite_number(v) for v in bbox] if isinstance(bbox, list) else []
        if len(xywh) != 4 or any(v is None for v in xywh):
            raise VIDDataError(f"{where} has a bad bbox {bbox!r} (expected 4 finite numbers, xywh)")
        x, y, w, h = xywh
        per_image.setdefault(image_id, []).append((x, y, x + w, y + h, cid - 1))
    return per_image


_Resolver = Callable[[_CocoImage], Path]


def _coco_resolvers(root: Path, json_path: Path, frames_dir: Path | None) -> list[tuple[str, _Resolver]]:
    """Candidate ``image -> file`` mappings, most specific first (see the module docstring)."""

    def by_video(base: Path) -> _Resolver:
        return lambda im: base / im.video_id / f"{im.frame}.jpg"

    def by_file_name(base: Path) -> _Resolver:
        return lambda im: base / im.file_name

    if frames_dir is not None:
        return [
            (f"{frames_dir}/<file_name>", by_file_name(frames_dir)),
            (f"{frames_dir}/<video_id>/<frame>.jpg", by_video(frames_dir)),
        ]
    split = json_path.parent.name if json_path.name == "labels.json" else json_path.stem
    splits = [split] + ([split.replace("minival", "val")] if "minival" in split else [])
    out: list[tuple[str, _Resolver]] = []
    out += [(f"{root / s / 'frames'}/<video_id>/<frame>.jpg", by_video(root / s / "frames")) for s in splits]
    out += [(f"{root / s}/<file_name>", by_file_name(root / s)) for s in splits]
    out += [
        (f"{root / 'frames'}/<video_id>/<frame>.jpg", by_video(root / "frames")),
        (f"{root / 'frames'}/<file_name>", by_file_name(root / "frames")),
        (f"{root}/<file_name>", by_file_name(root)),
    ]
    return out


def _pick_resolver(probe: _CocoImage, resolvers: list[tuple[str, _Resolver]], json_path: Path) -> _Resolver:
    for desc, resolve in resolvers:
        if resolve(probe).is_file():
            logger.info("%s: frames found as %s", json_path, desc)
            return resolve
    tried = "; ".join(str(resolve(probe)) for _, resolve in resolvers)
    raise VIDDataError(
        f"{json_path}: image file of {probe.file_name!r} (id {probe.image_id}) not found; looked for: {tried}"
    )


def _read_coco(
    root: Path,
    json_path: Path,
    names: Iterable[str] | None,
    max_sequences: int | None,
    frames_dir: Path | None,
    show_progress: bool | None,
) -> tuple[list[VIDSequence], tuple[str, ...]]:
    t0 = time.perf_counter()
    data = _load_json(json_path)
    classes = _coco_classes(data, json_path)
    images = _coco_images(data, json_path)
    per_image = _coco_annotations(data, json_path, {im.image_id for im in images})
    del data
    if not images:
        raise VIDDataError(f"{json_path}: no images")
    videos: dict[str, list[VIDFrame]] = {}
    by_frame: dict[tuple[str, int], _CocoImage] = {}
    for im in images:
        objects = per_image.get(im.image_id)
        boxes, labels = _EMPTY_BOXES, _EMPTY_LABELS
        if objects:
            boxes = _readonly(np.asarray([o[:4] for o in objects], np.float32))  # (M, 4) xyxy
            labels = _readonly(np.asarray([o[4] for o in objects], np.int64))  # (M,)
        # The path is a placeholder (file_name) until the frame folder is known.
        frame = VIDFrame(Path(im.file_name), int(im.frame), im.width, im.height, boxes, labels)
        videos.setdefault(im.video, []).append(frame)
        by_frame[im.video, frame.index] = im
    try:
        sequences = _select(_build_sequences(videos), names, max_sequences)
    except VIDDataError as exc:
        raise VIDDataError(f"{json_path}: {exc}") from exc
    if sequences:  # probe with the first selected frame, then resolve every selected frame the same way
        probe = by_frame[sequences[0].video, sequences[0][0].index]
        resolve = _pick_resolver(probe, _coco_resolvers(root, json_path, frames_dir), json_path)
        sequences = [
            VIDSequence(s.name, tuple(replace(f, path=resolve(by_frame[s.video, f.index])) for f in s))
            for s in sequences
        ]
    _check_files_exist(sequences, json_path, show_progress)
    logger.info("%s: %d frames, %d videos, %d sequences kept (%.1f s)", json_path, len(images), len(videos),
                len(sequences), time.perf_counter() - t0)  # fmt: skip
    return sequences, classes


def _check_files_exist(sequences: list[VIDSequence], json_path: Path, show_progress: bool | None) -> None:
    """Every frame file of ``sequences`` must exist (one directory listing per folder)."""
    listing = _ListingCache()
    progress = _Progress(sum(len(s) for s in sequences), f"VID {json_path.stem} (files)", show_progress)
    missing: list[Path] = []
    for seq in sequences:
        missing += [f.path for f in seq if not listing.exists(f.path)]
        progress.update(len(seq))
    progress.close()
    if missing:
        raise VIDDataError(f"{missing[0]}: image file listed in {json_path} not found ({len(missing)} missing)")


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


class VIDDataset:
    """ImageNet VID as a list of :class:`VIDSequence` (frames are decoded on demand with :func:`load_frame`).

    Args:
        root: dataset folder (the ILSVRC2015 folder, or the folder holding the COCO-style JSONs; see the module
            docstring for every accepted arrangement).
        split: ``"val"``/``"train"`` (ILSVRC) or ``"vid_val"``, ``"vid_minival"``, ``"vid_train"``, ``"det_train"``
            (COCO); ``"val"`` also finds ``vid_val.json`` and ``"vid_val"`` also finds ILSVRC ``val``.
        layout: ``"auto"`` picks ``"coco"`` when the split's JSON exists, else ``"ilsvrc"`` when
            ``Annotations/VID/<split>`` exists, else raises :class:`VIDDataError` naming both places.
        sequence_names: keep only these sequences (a video name selects all of its ``#k`` parts).
        max_sequences: keep only the first N sequences (in name order; the ILSVRC reader stops parsing early).
        frames_dir: COCO layout only: folder the frames are looked up in instead of the default search.
        progress: show a tqdm bar (``None``: only for large splits, if tqdm is installed).  Progress is always logged.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        layout: Layout = "auto",
        *,
        sequence_names: Iterable[str] | None = None,
        max_sequences: int | None = None,
        frames_dir: str | Path | None = None,
        progress: bool | None = None,
    ) -> None:
        if layout not in ("auto", "ilsvrc", "coco"):
            raise ValueError(f"layout must be 'auto', 'ilsvrc' or 'coco'; got {layout!r}")
        _check_max_sequences(max_sequences)
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise VIDDataError(f"{self.root}: ImageNet VID root folder not found")
        self.layout, self.annotation_path = self._locate(layout)
        self.classes: tuple[str, ...] = VID_CLASSES
        if self.layout == "coco":
            self.sequences, self.classes = _read_coco(
                self.root,
                self.annotation_path,
                sequence_names,
                max_sequences,
                None if frames_dir is None else Path(frames_dir),
                progress,
            )
        else:
            if frames_dir is not None:
                raise ValueError("frames_dir only applies to the COCO layout")
            self.sequences = _read_ilsvrc(self.root, self.annotation_path.name, sequence_names, max_sequences, progress)
        logger.info("ImageNet VID %s (%s): %d sequences, %d frames", split, self.layout, len(self), self.num_frames)

    def _locate(self, layout: Layout) -> tuple[str, Path]:
        """``(layout, annotation path)``: the COCO JSON file or the ILSVRC annotation split folder."""
        jsons = _coco_json_candidates(self.root, self.split)
        ann_dirs = [self.root / "Annotations" / "VID" / s for s in _ilsvrc_split_names(self.split)]
        if layout in ("auto", "coco"):
            for path in jsons:
                if path.is_file():
                    return "coco", path
        if layout in ("auto", "ilsvrc"):
            for path in ann_dirs:
                if path.is_dir():
                    return "ilsvrc", path
        looked = []
        if layout in ("auto", "coco"):
            looked.append("COCO-style JSON at " + ", ".join(map(str, jsons)))
        if layout in ("auto", "ilsvrc"):
            looked.append("ILSVRC2015 annotation folder at " + ", ".join(map(str, ann_dirs)))
        raise VIDDataError(
            f"{self.root}: ImageNet VID split {self.split!r} not found; looked for " + "; and ".join(looked)
        )

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> VIDSequence:
        return self.sequences[i]

    def __iter__(self) -> Iterator[VIDSequence]:
        return iter(self.sequences)

    @property
    def num_frames(self) -> int:
        """Total number of frames over all sequences."""
        return sum(len(s) for s in self.sequences)

    @property
    def names(self) -> list[str]:
        """Sequence names, in order."""
        return [s.name for s in self.sequences]

    def by_name(self, name: str) -> VIDSequence:
        """The sequence called ``name`` (:class:`KeyError` if absent)."""
        for seq in self.sequences:
            if seq.name == name:
                return seq
        raise KeyError(name)

    def __repr__(self) -> str:
        return (
            f"VIDDataset(root={str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, "
            f"sequences={len(self)}, frames={self.num_frames})"
        )
