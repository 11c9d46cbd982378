"""Deterministic synthetic test videos: textured shapes moving over a panning background.

The videos are meant for tests, demos and benchmarks that must run without any
downloaded data.  Generation depends only on numpy; writing to a file uses
:class:`rgtp.io.video.VideoWriter` (PyAV, optional). The shapes are the first three classes of the shapes set
(:data:`MOVING_SHAPES`, a prefix of :data:`rgtp.lab.data.shapes.SHAPES_CLASSES`), over that set's background texture.
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgtp.lab.data.shapes import SHAPES_CLASSES, _background

__all__ = [
    "MOVING_SHAPES",
    "SHAPE_TO_VID",
    "Box",
    "moving_shapes_video",
    "write_synthetic_epic",
    "write_synthetic_kinetics",
    "write_synthetic_vid",
    "write_video",
]

logger = logging.getLogger(__name__)

#: The shapes :func:`moving_shapes_video` draws (disc, square, triangle): the first three classes of the shapes set,
#: so the ``class_id`` of its boxes indexes this and :data:`~rgtp.lab.data.shapes.SHAPES_CLASSES` alike.
MOVING_SHAPES: tuple[str, ...] = SHAPES_CLASSES[:3]

#: ``(x1, y1, x2, y2, class_id)``; pixel-edge coordinates, ``x2``/``y2`` exclusive.
Box = tuple[float, float, float, float, int]

_PAN_SPEED = (0.6, 2.0)  # camera pan speed range, pixels/frame
_OBJ_SPEED = (2.0, 6.0)  # object speed range, pixels/frame per axis


@dataclass(frozen=True)
class _Shape:
    """Parameters of one moving object (internal)."""

    kind: int  # index into MOVING_SHAPES
    radius: float  # circumradius in pixels
    color: np.ndarray  # (3,) float32 in [0, 255]
    checker: bool  # checker texture if True, stripes otherwise
    period: float  # texture period in pixels
    x0: float
    y0: float
    vx: float
    vy: float
    angle0: float
    spin: float  # radians/frame
    bob_amp: float  # bounce amplitude in pixels
    bob_freq: float  # radians/frame
    bob_phase: float


def _make_shapes(rng: np.random.Generator, num_objects: int, height: int, width: int) -> list[_Shape]:
    """Draw the random parameters of ``num_objects`` objects."""
    shapes = []
    hue0 = rng.uniform()
    short = min(height, width)
    for k in range(num_objects):
        hue = (hue0 + k / max(num_objects, 1)) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0)))
        radius = rng.uniform(0.07, 0.14) * short
        speed = rng.uniform(*_OBJ_SPEED, size=2) * rng.choice([-1.0, 1.0], size=2)
        shapes.append(
            _Shape(
                kind=int(rng.integers(len(MOVING_SHAPES))),
                radius=float(radius),
                color=(rgb * 255.0).astype(np.float32),
                checker=bool(rng.integers(2)),
                period=float(rng.uniform(0.25, 0.6) * radius),
                x0=float(rng.uniform(radius, width - radius)),
                y0=float(rng.uniform(radius, height - radius)),
                vx=float(speed[0]),
                vy=float(speed[1]),
                angle0=float(rng.uniform(0.0, 2 * np.pi)),
                spin=float(rng.uniform(-0.08, 0.08)),
                bob_amp=float(rng.uniform(0.02, 0.05) * short),
                bob_freq=float(rng.uniform(0.3, 0.6)),
                bob_phase=float(rng.uniform(0.0, np.pi)),
            )
        )
    return shapes


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold ``x`` into ``[lo, hi]`` as if bouncing off both walls."""
    span = hi - lo
    if span <= 0:
        return lo
    u = (x - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def _shape_mask(shape: _Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape in its rotated local coordinates ``u, v``."""
    r = shape.radius
    if shape.kind == 0:  # disc
        return u * u + v * v <= r * r
    if shape.kind == 1:  # square (circumradius r)
        half = r / np.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # equilateral triangle with circumradius r: inradius r / 2 along three normals
    mask = np.ones(u.shape, dtype=bool)
    for k in range(3):
        phi = np.pi / 2 + 2 * np.pi * k / 3
        mask &= u * np.cos(phi) + v * np.sin(phi) <= r / 2
    return mask


def _texture(shape: _Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-pixel brightness factor in ``{0.45, 1.0}`` (stripes or checkerboard)."""
    if shape.checker:
        on = (np.floor(u / shape.period) + np.floor(v / shape.period)) % 2 == 0
    else:
        on = np.sin(2 * np.pi * u / shape.period) >= 0
    return np.where(on, 1.0, 0.45).astype(np.float32)


def moving_shapes_video(
    num_frames: int = 24,
    height: int = 378,
    width: int = 672,
    num_objects: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, list[list[Box]]]:
    """Generate a deterministic video of textured shapes moving over a panning background.

    Objects (discs, squares and triangles with stripe or checker textures and
    distinct hues) move with constant velocity, bounce off the frame borders
    (their centres stay inside the frame, so they may be partly cut off), bob
    up and down slightly and rotate slowly.  The background (smooth noise,
    gradient and stripes) pans with a constant camera velocity.  Later objects
    occlude earlier ones.

    Args:
        num_frames: Number of frames ``T`` (>= 1).
        height: Frame height ``H`` in pixels (>= 8).
        width: Frame width ``W`` in pixels (>= 8).
        num_objects: Number of objects (>= 0).
        seed: Seed of the :class:`numpy.random.Generator`; equal seeds give
            identical videos.

    Returns:
        ``(video, boxes)`` where ``video`` is a ``uint8`` array of shape
        ``(T, H, W, 3)`` (RGB) and ``boxes[t]`` lists, for each object with at
        least one visible pixel in frame ``t`` (in object order), a tuple
        ``(x1, y1, x2, y2, class_id)`` bounding its visible pixels, with
        ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H`` (``x2``/``y2``
        exclusive) and ``class_id`` indexing :data:`MOVING_SHAPES`.

    Raises:
        ValueError: On invalid sizes or counts.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 8 or width < 8:
        raise ValueError(f"height and width must be >= 8, got {height}x{width}")
    if num_objects < 0:
        raise ValueError(f"num_objects must be >= 0, got {num_objects}")

    rng = np.random.default_rng(seed)
    pan = rng.uniform(*_PAN_SPEED, size=2) * rng.choice([-1.0, 1.0], size=2) * np.array([1.0, 0.4])
    extra = np.ceil(np.abs(pan) * (num_frames - 1)).astype(int) + 1  # (dx, dy) canvas margin
    canvas = _background(rng, height + int(extra[1]), width + int(extra[0]))
    canvas_u8 = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    shapes = _make_shapes(rng, num_objects, height, width)

    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    boxes: list[list[Box]] = []
    ids = np.empty((height, width), dtype=np.int16)
    for t in range(num_frames):
        # Camera motion: crop a moving window out of the larger background canvas.
        ox = round(t * pan[0]) if pan[0] >= 0 else int(extra[0]) - 1 + round(t * pan[0])
        oy = round(t * pan[1]) if pan[1] >= 0 else int(extra[1]) - 1 + round(t * pan[1])
        frame = video[t]
        frame[...] = canvas_u8[oy : oy + height, ox : ox + width]
        ids.fill(-1)
        regions: list[tuple[int, int, int, int]] = []
        for k, shape in enumerate(shapes):
            cx = _reflect(shape.x0 + shape.vx * t, 0.0, width - 1.0)
            cy = _reflect(shape.y0 + shape.vy * t, 0.0, height - 1.0)
            cy -= shape.bob_amp * abs(np.sin(shape.bob_freq * t + shape.bob_phase))
            r = shape.radius
            xa, xb = max(0, int(np.floor(cx - r))), min(width, int(np.ceil(cx + r)) + 1)
            ya, yb = max(0, int(np.floor(cy - r))), min(height, int(np.ceil(cy + r)) + 1)
            regions.append((xa, ya, xb, yb))
            if xa >= xb or ya >= yb:
                continue
            dx = (np.arange(xa, xb, dtype=np.float32) + 0.5 - cx)[None, :]
            dy = (np.arange(ya, yb, dtype=np.float32) + 0.5 - cy)[:, None]
            ang = shape.angle0 + shape.spin * t
            c, s = np.cos(ang), np.sin(ang)
            u = c * dx + s * dy
            v = -s * dx + c * dy
            mask = _shape_mask(shape, u, v)
            colour = shape.color[None, None, :] * _texture(shape, u, v)[..., None]
            patch = frame[ya:yb, xa:xb]
            patch[mask] = np.clip(colour[mask], 0, 255).astype(np.uint8)
            ids[ya:yb, xa:xb][mask] = k
        frame_boxes: list[Box] = []
        for k, (xa, ya, xb, yb) in enumerate(regions):
            if xa >= xb or ya >= yb:
                continue
            visible = ids[ya:yb, xa:xb] == k
            cols = np.flatnonzero(visible.any(axis=0))
            if cols.size == 0:
                continue  # fully occluded
            rows = np.flatnonzero(visible.any(axis=1))
            frame_boxes.append(
                (
                    float(xa + cols[0]),
                    float(ya + rows[0]),
                    float(xa + cols[-1] + 1),
                    float(ya + rows[-1] + 1),
                    shapes[k].kind,
                )
            )
        boxes.append(frame_boxes)
    logger.debug(
        "generated synthetic video: %d frames %dx%d, %d objects, seed %d",
        num_frames,
        width,
        height,
        num_objects,
        seed,
    )
    return video, boxes


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 10) -> None:
    """Write frames to a video file (``.mp4``, ``.mkv`` or ``.avi``).

    Args:
        path: Output path; the suffix selects the container.
        frames: RGB ``uint8`` array of shape ``(T, H, W, 3)`` with ``T >= 1``.
        fps: Frame rate in frames per second.

    Raises:
        ValueError: If ``frames`` has the wrong shape, dtype or is empty.
        ImportError: If PyAV is not installed.
    """
    from rgtp.io.video import VideoWriter

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}")
    if arr.shape[0] == 0:
        raise ValueError("frames is empty: nothing to write")
    with VideoWriter(path, fps) as writer:
        for frame in arr:
            writer.write(frame)
    logger.info("wrote %d frames (%dx%d) to %s", arr.shape[0], arr.shape[2], arr.shape[1], path)


# Shape class -> ImageNet VID class index (arbitrary but fixed: airplane, car, lion).
SHAPE_TO_VID = (0, 6, 15)


def write_synthetic_vid(
    root: str | os.PathLike[str],
    lengths: Sequence[int] = (16,),
    height: int = 720,
    width: int = 1280,
    num_objects: int = 4,
    seed: int = 0,
    skip: Collection[tuple[int, int]] = (),
    split: str = "val",
) -> Path:
    """Write moving-shapes videos as an ImageNet VID split in the ILSVRC2015 layout, with exact boxes.

    Sequence ``v`` (``ILSVRC2015_val_<v:08d>``) has ``lengths[v]`` frames of :func:`moving_shapes_video` (seed
    ``seed + v``) as JPEGs, and one XML per frame whose objects are the shapes, labelled with the VID classes
    :data:`SHAPE_TO_VID`. ``skip`` lists (video, frame) pairs to leave out, to make gaps. Returns ``root``. Useful for
    trying ``rgtp evaluate vitdet-vid`` and for benchmarks; the classes mean nothing to a VID-trained detector.
    """
    from PIL import Image

    from rgtp.data.vid import VID_WNIDS

    root = Path(root)
    for v, n in enumerate(lengths):
        frames, boxes = moving_shapes_video(n, height, width, num_objects, seed + v)
        name = f"ILSVRC2015_{split}_{v:08d}"
        data, ann = root / "Data" / "VID" / split / name, root / "Annotations" / "VID" / split / name
        data.mkdir(parents=True, exist_ok=True)
        ann.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            if (v, t) in skip:
                continue
            Image.fromarray(frame).save(data / f"{t:06d}.JPEG", quality=92)
            objects = "".join(
                f"<object><trackid>{k}</trackid><name>{VID_WNIDS[SHAPE_TO_VID[c]]}</name><bndbox>"
                f"<xmax>{x2}</xmax><xmin>{x1}</xmin><ymax>{y2}</ymax><ymin>{y1}</ymin></bndbox>"
                "<occluded>0</occluded><generated>0</generated></object>"
                for k, (x1, y1, x2, y2, c) in enumerate(boxes[t])
            )
            (ann / f"{t:06d}.xml").write_text(
                f"<annotation><folder>{name}</folder><filename>{t:06d}</filename><size><width>{width}</width>"
                f"<height>{height}</height></size>{objects}</annotation>\n"
            )
    logger.info("wrote a synthetic VID split (%d sequences) under %s", len(lengths), root)
    return root


def write_synthetic_kinetics(
    root: str | os.PathLike[str],
    clips: int = 2,
    frames: int = 250,
    height: int = 256,
    width: int = 340,
    fps: float = 25.0,
    seed: int = 0,
    split: str = "val",
) -> Path:
    """Write moving-shapes clips as a Kinetics-400 split in the CVDF layout: ``annotations/<split>.csv`` and
    ``<split>/<youtube_id>_<start:06d>_<end:06d>.mp4``. Labels cycle through the classes. Returns ``root``.

    For trying ``rgtp evaluate vivit-k400`` and ``rgtp cache-spatial`` and for benchmarks; the labels mean nothing.
    """
    from rgtp.data.kinetics import KINETICS400_CLASSES

    root = Path(root)
    rows = ["label,youtube_id,time_start,time_end,split"]
    seconds = round(frames / fps)
    (root / split).mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        label = KINETICS400_CLASSES[(37 * i) % len(KINETICS400_CLASSES)]
        rows.append(f'"{label}",synth{i:05d},0,{seconds},{split}')
        video, _ = moving_shapes_video(frames, height, width, seed=seed + i)
        write_video(root / split / f"synth{i:05d}_{0:06d}_{seconds:06d}.mp4", video, fps=fps)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    logger.info("wrote a synthetic Kinetics-400 split (%d clips) under %s", clips, root)
    return root


def write_synthetic_epic(
    root: str | os.PathLike[str],
    segments: int = 2,
    frames: int = 48,
    height: int = 320,
    width: int = 568,
    fps: float = 30.0,
    seed: int = 0,
) -> Path:
    """Write moving-shapes videos as an EPIC-KITCHENS-100 validation split: ``EPIC_100_validation.csv`` and
    ``videos/<video_id>.mp4``, one segment of ``frames`` frames per video. Returns ``root``.
    """
    root = Path(root)
    header = (
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"
    )
    rows = [header]
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for i in range(segments):
        vid = f"P01_{100 + i}"
        video, _ = moving_shapes_video(frames + 8, height, width, seed=seed + i)
        write_video(root / "videos" / f"{vid}.mp4", video, fps=fps)
        start, stop = 4 / fps, (4 + frames) / fps
        stamp = [f"00:00:{s:05.2f}" for s in (start, stop)]
        verb, noun = (11 * i) % 97, (29 * i) % 300
        rows.append(
            f"{vid}_0,P01,{vid},{stamp[0]},{stamp[0]},{stamp[1]},5,{4 + frames},take shape,take,{verb},shape,"
            f"{noun},\"['shape']\",[{noun}]"
        )
    (root / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    logger.info("wrote a synthetic EPIC-KITCHENS-100 validation split (%d segments) under %s", segments, root)
    return root
