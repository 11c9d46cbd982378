"""Kinetics-400 reader (method §12.2): CVDF annotation CSVs and one trimmed video per clip, decoded with PyAV.

Layout (the CVDF release, ``k400_downloader.sh`` / ``k400_extractor.sh``)::

    <root>/annotations/{train,val,test}.csv     label,youtube_id,time_start,time_end,split
    <root>/<split>/<youtube_id>_<start:06d>_<end:06d>.mp4            flat, as extracted
    <root>/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4    or arranged in one folder per class

Both video layouts (and a mix) are found by indexing ``<videos_dir>/*`` and ``<videos_dir>/*/*`` once.  A clip
is named ``<youtube_id>_<time_start:06d>_<time_end:06d>`` and its class is the position of its label in the sorted
list of the 400 class names (:data:`KINETICS400_CLASSES`, the order of the reference code).  Clips are sorted by
id, as in the reference before its seeded shuffle.  The reference pre-decodes every video with FFmpeg at 25 fps
with the short side scaled to 224 (JPEG q2) and silently skips videos that fail; here decoding happens on
:meth:`Kinetics400.load` with the same rate and size (PyAV, timestamp-based resampling, Pillow bilinear resize)
and a missing or undecodable video raises :class:`~rgtp.data.action.ActionDataError`.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from rgtp.data.action import ActionClip, ActionDataError, ActionDataset

__all__ = ["KINETICS400_CLASSES", "VIDEO_SUFFIXES", "Kinetics400", "load_video_clip", "read_csv_rows"]

logger = logging.getLogger(__name__)

_CLASS_NAMES = (  # "|"-separated, sorted
    "abseiling|air drumming|answering questions|applauding|applying cream|archery|arm wrestling|"
    "arranging flowers|assembling computer|auctioning|baby waking up|baking cookies|balloon blowing|bandaging|"
    "barbequing|bartending|beatboxing|bee keeping|belly dancing|bench pressing|bending back|bending metal|"
    "biking through snow|blasting sand|blowing glass|blowing leaves|blowing nose|blowing out candles|bobsledding|"
    "bookbinding|bouncing on trampoline|bowling|braiding hair|breading or breadcrumbing|breakdancing|"
    "brush painting|brushing hair|brushing teeth|building cabinet|building shed|bungee jumping|busking|"
    "canoeing or kayaking|capoeira|carrying baby|cartwheeling|carving pumpkin|catching fish|"
    "catching or throwing baseball|catching or throwing frisbee|catching or throwing softball|celebrating|"
    "changing oil|changing wheel|checking tires|cheerleading|chopping wood|clapping|clay pottery making|"
    "clean and jerk|cleaning floor|cleaning gutters|cleaning pool|cleaning shoes|cleaning toilet|"
    "cleaning windows|climbing a rope|climbing ladder|climbing tree|contact juggling|cooking chicken|cooking egg|"
    "cooking on campfire|cooking sausages|counting money|country line dancing|cracking neck|crawling baby|"
    "crossing river|crying|curling hair|cutting nails|cutting pineapple|cutting watermelon|dancing ballet|"
    "dancing charleston|dancing gangnam style|dancing macarena|deadlifting|decorating the christmas tree|digging|"
    "dining|disc golfing|diving cliff|dodgeball|doing aerobics|doing laundry|doing nails|drawing|"
    "dribbling basketball|drinking|drinking beer|drinking shots|driving car|driving tractor|drop kicking|"
    "drumming fingers|dunking basketball|dying hair|eating burger|eating cake|eating carrots|eating chips|"
    "eating doughnuts|eating hotdog|eating ice cream|eating spaghetti|eating watermelon|egg hunting|"
    "exercising arm|exercising with an exercise ball|extinguishing fire|faceplanting|feeding birds|feeding fish|"
    "feeding goats|filling eyebrows|finger snapping|fixing hair|flipping pancake|flying kite|folding clothes|"
    "folding napkins|folding paper|front raises|frying vegetables|garbage collecting|gargling|getting a haircut|"
    "getting a tattoo|giving or receiving award|golf chipping|golf driving|golf putting|grinding meat|"
    "grooming dog|grooming horse|gymnastics tumbling|hammer throw|headbanging|headbutting|high jump|high kick|"
    "hitting baseball|hockey stop|holding snake|hopscotch|hoverboarding|hugging|hula hooping|hurdling|"
    "hurling (sport)|ice climbing|ice fishing|ice skating|ironing|javelin throw|jetskiing|jogging|juggling balls|"
    "juggling fire|juggling soccer ball|jumping into pool|jumpstyle dancing|kicking field goal|"
    "kicking soccer ball|kissing|kitesurfing|knitting|krumping|laughing|laying bricks|long jump|lunge|"
    "making a cake|making a sandwich|making bed|making jewelry|making pizza|making snowman|making sushi|"
    "making tea|marching|massaging back|massaging feet|massaging legs|massaging person's head|milking cow|"
    "mopping floor|motorcycling|moving furniture|mowing lawn|news anchoring|opening bottle|opening present|"
    "paragliding|parasailing|parkour|passing American football (in game)|passing American football (not in game)|"
    "peeling apples|peeling potatoes|petting animal (not cat)|petting cat|picking fruit|planting trees|"
    "plastering|playing accordion|playing badminton|playing bagpipes|playing basketball|playing bass guitar|"
    "playing cards|playing cello|playing chess|playing clarinet|playing controller|playing cricket|"
    "playing cymbals|playing didgeridoo|playing drums|playing flute|playing guitar|playing harmonica|"
    "playing harp|playing ice hockey|playing keyboard|playing kickball|playing monopoly|playing organ|"
    "playing paintball|playing piano|playing poker|playing recorder|playing saxophone|"
    "playing squash or racquetball|playing tennis|playing trombone|playing trumpet|playing ukulele|"
    "playing violin|playing volleyball|playing xylophone|pole vault|presenting weather forecast|pull ups|"
    "pumping fist|pumping gas|punching bag|punching person (boxing)|push up|pushing car|pushing cart|"
    "pushing wheelchair|reading book|reading newspaper|recording music|riding a bike|riding camel|"
    "riding elephant|riding mechanical bull|riding mountain bike|riding mule|riding or walking with horse|"
    "riding scooter|riding unicycle|ripping paper|robot dancing|rock climbing|rock scissors paper|roller skating|"
    "running on treadmill|sailing|salsa dancing|sanding floor|scrambling eggs|scuba diving|setting table|"
    "shaking hands|shaking head|sharpening knives|sharpening pencil|shaving head|shaving legs|shearing sheep|"
    "shining shoes|shooting basketball|shooting goal (soccer)|shot put|shoveling snow|shredding paper|"
    "shuffling cards|side kick|sign language interpreting|singing|situp|skateboarding|ski jumping|"
    "skiing (not slalom or crosscountry)|skiing crosscountry|skiing slalom|skipping rope|skydiving|slacklining|"
    "slapping|sled dog racing|smoking|smoking hookah|snatch weight lifting|sneezing|sniffing|snorkeling|"
    "snowboarding|snowkiting|snowmobiling|somersaulting|spinning poi|spray painting|spraying|springboard diving|"
    "squat|sticking tongue out|stomping grapes|stretching arm|stretching leg|strumming guitar|surfing crowd|"
    "surfing water|sweeping floor|swimming backstroke|swimming breast stroke|swimming butterfly stroke|"
    "swing dancing|swinging legs|swinging on something|sword fighting|tai chi|taking a shower|tango dancing|"
    "tap dancing|tapping guitar|tapping pen|tasting beer|tasting food|testifying|texting|throwing axe|"
    "throwing ball|throwing discus|tickling|tobogganing|tossing coin|tossing salad|training dog|trapezing|"
    "trimming or shaving beard|trimming trees|triple jump|tying bow tie|tying knot (not on a tie)|tying tie|"
    "unboxing|unloading truck|using computer|using remote controller (not gaming)|using segway|vault|"
    "waiting in line|walking the dog|washing dishes|washing feet|washing hair|washing hands|water skiing|"
    "water sliding|watering plants|waxing back|waxing chest|waxing eyebrows|waxing legs|weaving basket|welding|"
    "whistling|windsurfing|wrapping present|wrestling|writing|yawning|yoga|zumba"
)
#: The 400 Kinetics class names in class-index order (sorted; the same list as the reference's ``CLASSES``).
KINETICS400_CLASSES: tuple[str, ...] = tuple(_CLASS_NAMES.split("|"))

#: Suffixes indexed as videos.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")

_SPLIT_ALIASES = {"validation": "val"}


def _normalise(label: str) -> str:
    """A class name for lookup: lower case, ``_`` as space, surrounding quotes and spaces removed."""
    return " ".join(label.strip().strip("\"'").replace("_", " ").lower().split())


_CLASS_INDEX = {_normalise(name): i for i, name in enumerate(KINETICS400_CLASSES)}


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with a header, as ``(line number, {column: value})``.

    Raises:
        ActionDataError: If the file is missing or unreadable, or a required column is absent (naming the file).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # tolerate a byte-order mark
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                raise ActionDataError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(columns)})")
            reader.fieldnames = columns
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except OSError as exc:
        raise ActionDataError(f"cannot read annotation file {path}: {exc}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ActionDataError(f"{path}: not a valid CSV file: {exc}") from exc


def load_video_clip(clip: ActionClip, fps: float | None, short_side: int | None) -> np.ndarray:
    """Decode ``clip.path`` over ``[clip.start, clip.stop)``: -> (T, H, W, 3) uint8, or :class:`ActionDataError`."""
    from rgtp.io.video import VideoDecodeError, read_clip

    try:
        return read_clip(clip.path, clip.start, clip.stop, fps=fps, short_side=short_side)
    except FileNotFoundError as exc:
        where = clip.extra.get("searched", str(clip.path))
        raise ActionDataError(f"clip {clip.id}: video file not found (searched {where})") from exc
    except (VideoDecodeError, IsADirectoryError) as exc:
        raise ActionDataError(f"clip {clip.id}: {exc}") from exc
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:  # e.g. a size change mid-stream, PyAV errors
        raise ActionDataError(f"clip {clip.id}: cannot decode {clip.path}: {type(exc).__name__}: {exc}") from exc


def _index_videos(folder: Path) -> dict[str, Path]:
    """``{file stem: path}`` of the videos in ``folder`` and in its sub-folders (one level)."""
    index: dict[str, Path] = {}

    def add(entry: os.DirEntry[str]) -> None:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in VIDEO_SUFFIXES and stem not in index:
            index[stem] = Path(entry.path)

    if not folder.is_dir():
        return index
    with os.scandir(folder) as entries:
        subdirs = []
        for entry in entries:
            if entry.is_dir():
                subdirs.append(entry.path)
            elif entry.is_file():
                add(entry)
    for sub in sorted(subdirs):
        with os.scandir(sub) as entries:
            for entry in entries:
                if entry.is_file():
                    add(entry)
    return index


class Kinetics400(ActionDataset):
    """Kinetics-400 clips of one split (see the module docstring for the layout).

    Args:
        root: Dataset folder (holds ``annotations/`` and one video folder per split).
        split: ``train``, ``val`` (alias ``validation``) or ``test``.
        annotations: The split's CSV (default: ``<root>/annotations/<split>.csv``, else ``<root>/<split>.csv``).
        videos_dir: Folder of the split's videos, flat or one sub-folder per class (default ``<root>/<split>``).
        fps: Decode at this frame rate by timestamp resampling (None: native frames). The paper uses 25.
        short_side: Resize frames so that the short side has this size (None: native size). The paper uses 224.

    Raises:
        ActionDataError: If the CSV is missing or has a bad row (naming the file and line).
    """

    name = "kinetics400"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        *,
        annotations: str | os.PathLike[str] | None = None,
        videos_dir: str | os.PathLike[str] | None = None,
        fps: float | None = 25.0,
        short_side: int | None = 224,
    ) -> None:
        self.root = Path(root)
        self.split = _SPLIT_ALIASES.get(split, split)
        self.fps = fps
        self.short_side = short_side
        csv_path = Path(annotations) if annotations is not None else self._find_annotations()
        self.videos_dir = Path(videos_dir) if videos_dir is not None else self.root / self.split
        videos = _index_videos(self.videos_dir)
        clips: dict[str, ActionClip] = {}
        for line, row in read_csv_rows(csv_path, ("label", "youtube_id", "time_start", "time_end")):
            clip = self._clip(csv_path, line, row, videos)
            if clip.id in clips:
                logger.warning("%s line %d: duplicate clip %s ignored", csv_path, line, clip.id)
                continue
            clips[clip.id] = clip
        super().__init__(sorted(clips.values(), key=lambda c: c.id), list(KINETICS400_CLASSES))
        logger.info(
            "Kinetics-400 %s: %d clips from %s, %d videos indexed in %s",
            self.split,
            len(self.clips),
            csv_path,
            len(videos),
            self.videos_dir,
        )

    def _find_annotations(self) -> Path:
        candidates = [self.root / "annotations" / f"{self.split}.csv", self.root / f"{self.split}.csv"]
        for path in candidates:
            if path.is_file():
                return path
        raise ActionDataError(f"no Kinetics-400 annotation CSV for split {self.split!r}: tried {candidates}")

    def _clip(self, csv_path: Path, line: int, row: dict[str, str], videos: dict[str, Path]) -> ActionClip:
        try:
            start, end = int(row["time_start"]), int(row["time_end"])
        except ValueError as exc:
            raise ActionDataError(f"{csv_path} line {line}: bad time_start/time_end: {exc}") from exc
        if not row["youtube_id"]:
            raise ActionDataError(f"{csv_path} line {line}: empty youtube_id")
        label = -1  # the test CSV may carry no labels
        if row["label"]:
            label = _CLASS_INDEX.get(_normalise(row["label"]), -2)
            if label == -2:
                raise ActionDataError(f"{csv_path} line {line}: unknown Kinetics-400 class {row['label']!r}")
        clip_id = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        path = videos.get(clip_id, self.videos_dir / f"{clip_id}.mp4")
        extra = {"youtube_id": row["youtube_id"], "time_start": str(start), "time_end": str(end)}
        if clip_id not in videos:  # what a "not found" error names: every place the index looked
            extra["searched"] = f"{self.videos_dir}/{clip_id}.* and {self.videos_dir}/*/{clip_id}.*"
        return ActionClip(id=clip_id, label=label, path=path, extra=extra)

    def missing(self) -> list[str]:
        """Ids of the clips whose video file does not exist (nothing is decoded)."""
        return [clip.id for clip in self.clips if not clip.path.is_file()]

    def searched(self) -> list[str]:
        """Where the split's videos are looked for."""
        suffixes = ",".join(s.lstrip(".") for s in VIDEO_SUFFIXES)
        return [f"{self.videos_dir}/*.{{{suffixes}}}", f"{self.videos_dir}/<class>/*.{{{suffixes}}}"]

    def load(self, clip: ActionClip) -> np.ndarray:
        """The clip's frames at ``fps`` and ``short_side``: -> (T, H, W, 3) uint8 RGB.

        Raises:
            ActionDataError: If the video is missing, cannot be decoded or has no frame (naming the file).
        """
        return load_video_clip(clip, self.fps, self.short_side)
