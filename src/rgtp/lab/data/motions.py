"""Generated action-recognition benchmark: the class of a clip is how its actor moves, not what it looks like.

Every clip has two textured objects over a textured background seen by a slowly panning camera: the actor and a
distractor. Everything a single frame shows is drawn from the same distributions for every class: the shapes (an
elongated triangle, an L, a T and a half disc, none with rotational symmetry, so turning is visible), their colours
and textures, their sizes, the background and the camera pan (at most 0.5 px/frame, no zoom, so growth is the
object's own). The distractor drifts slowly (at most 0.4 px/frame), turns slowly (at most 0.03 rad/frame) and is
placed clear of the actor's path (best of up to 30 tries; touching is the collide class). Which of the two is drawn
on top is random. The classes (:data:`MOTION_CLASSES`):

* ``move_right`` / ``move_left`` / ``move_up`` / ``move_down``: the actor crosses 1.4–2.4 px/frame in that
  direction (with a slight sideways drift);
* ``rotate_cw`` / ``rotate_ccw``: the actor turns 0.15–0.3 rad/frame, clockwise or counter-clockwise on screen,
  drifting slowly;
* ``grow`` / ``shrink``: the actor's size changes by a factor 1.5–1.8 over the clip, geometrically;
* ``oscillate``: the actor swings back and forth in place along a random axis (amplitude 5–10 px, period 5–9
  frames);
* ``collide``: the two objects move towards each other at 1.4–2.4 px/frame, touch between frames 5 and 10 and
  bounce apart, slower.

Paths are centred on the middle of the clip (the actor is at a uniformly random place in frame at mid-clip and the
whole path stays inside the frame), and grow and shrink are the same size paths in opposite orders, with a constant
size for the other classes drawn as a random frame of such a path. So a frame at a random time, or the set of frames
without their order, has the same distribution for move_left and move_right (likewise up/down and grow/shrink);
telling the class needs the order of the frames. A frame at a fixed time near the start or the end still leans
towards one class of such a pair (a path has to go somewhere): the best threshold on the actor's first-frame position
or size separates a pair about 80–85 % of the time, against 50–55 % at mid-clip or at a random time.

Clips are 16 frames of 96x96 by default. A clip is a pure function of (label, seed): :func:`motion_clip`. Two
options make an easier set for a training curriculum (``rgtp bench action`` trains on it first): ``distractor=False``
leaves the distractor out (collide is then a move that stops and turns back off an unseen object) and
``background="flat"`` replaces the textured, panning background by one dark colour. Both draw the same random
numbers as the full clip, so an easy clip is the full clip with those parts left out.
:class:`MotionDataset` lists the clips of a split (train 2000, val 200, test 500 by default; disjoint random
streams) and generates each on :meth:`~MotionDataset.load`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgtp.data.action import ActionClip, ActionDataError, ActionDataset
from rgtp.lab.data.shapes import MaskFn, _camera_background, _draw, _random_look

__all__ = ["MOTION_CLASSES", "MOTION_SPLITS", "MotionDataset", "motion_clip"]

logger = logging.getLogger(__name__)

#: Class names, indexed by the labels.
MOTION_CLASSES: tuple[str, ...] = (
    "move_right",
    "move_left",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
    "oscillate",
    "collide",
)

#: split -> (split id, default number of clips).
MOTION_SPLITS: dict[str, tuple[int, int]] = {"train": (1, 2000), "val": (2, 200), "test": (3, 500)}

_TAG = 0x4D4F  # "MO": keeps these streams apart from other generated sets with the same seed
_MID_RADIUS = (7.0, 17.0)  # circumradius at mid-path, log-uniform
_GROWTH = (1.5, 1.8)  # size factor over a grow / shrink clip
_SPEED = (1.4, 2.4)  # move and collide, px/frame
_SIDE_DRIFT = 0.2  # sideways drift of the move classes, px/frame
_DRIFT = 0.4  # slow drift of the distractor and of actors that do not translate, px/frame
_SPIN = 0.03  # slow turning, rad/frame
_ROTATE = (0.15, 0.3)  # rotation classes, rad/frame
_OSC_AMPLITUDE = (5.0, 10.0)  # px
_OSC_PERIOD = (5.0, 9.0)  # frames
_CONTACT = (5.0, 10.0)  # collide: frame of contact
_RESTITUTION = (0.5, 0.8)  # collide: speed kept after the bounce
_TOUCH = 0.7  # collide: centre distance at contact, in sums of circumradii
_PAN = (0.0, 0.5)  # camera pan, px/frame
_MARGIN = 1.0  # px between an object's circumcircle and the frame edge
_FLAT_LEVEL = 0.3  # background="flat": this fraction of the textured background's mean colour
BACKGROUNDS = ("textured", "flat")


# Actor and distractor shapes in unit coordinates, inside the unit disc, none with rotational symmetry.
def _pointer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Elongated isosceles triangle, apex at (1, 0)."""
    return (u >= -0.7) & (np.abs(v) <= 0.55 * (1.0 - u) / 1.7)


def _ell(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((u >= -0.6) & (u <= -0.15) & (np.abs(v) <= 0.75)) | ((u >= -0.6) & (u <= 0.6) & (v >= 0.3) & (v <= 0.75))


def _tee(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) <= 0.7) & (v >= -0.7) & (v <= -0.3)) | ((np.abs(u) <= 0.2) & (v >= -0.7) & (v <= 0.7))


def _half_disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 0.9) & (v >= -0.1)


_MASKS: tuple[MaskFn, ...] = (_pointer, _ell, _tee, _half_disc)


@dataclass(frozen=True)
class _Track:
    """One object's state per frame."""

    centres: np.ndarray  # (T, 2) float64, (x, y) pixels
    radii: np.ndarray  # (T,) circumradius, pixels
    angles: np.ndarray  # (T,) radians, clockwise on screen


def _uniform_place(rng: np.random.Generator, offsets: np.ndarray, radius: float, size: int) -> np.ndarray | None:
    """A uniformly random anchor such that anchor + offsets (T, 2) keeps a circle of ``radius`` in frame, or None."""
    lo = radius + _MARGIN - offsets.min(axis=0)
    hi = size - radius - _MARGIN - offsets.max(axis=0)
    if np.any(lo > hi):
        return None
    return rng.uniform(lo, hi)


def _radius_path(rng: np.random.Generator, num_frames: int, label: int) -> np.ndarray:
    """Sizes (T,): a geometric path through a log-uniform mid size for grow / shrink; for the other classes a
    constant, one random frame of such a path (so a random frame's size has the same law for every class)."""
    r_mid = math.exp(rng.uniform(math.log(_MID_RADIUS[0]), math.log(_MID_RADIUS[1])))
    factor = rng.uniform(*_GROWTH)
    s = (np.arange(num_frames) - (num_frames - 1) / 2) / max(num_frames - 1, 1)  # in [-1/2, 1/2]
    if MOTION_CLASSES[label] in ("grow", "shrink"):
        sign = 1.0 if MOTION_CLASSES[label] == "grow" else -1.0
        return r_mid * factor ** (sign * s)
    return np.full(num_frames, r_mid * factor ** s[rng.integers(num_frames)])


def _drift(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Slow straight drift, offsets (T, 2) centred on mid-clip."""
    speed, heading = rng.uniform(0.0, _DRIFT), rng.uniform(0.0, 2 * np.pi)
    t = np.arange(num_frames) - (num_frames - 1) / 2
    return np.stack([t * speed * math.cos(heading), t * speed * math.sin(heading)], axis=1)


def _actor_offsets(rng: np.random.Generator, num_frames: int, name: str) -> np.ndarray:
    """The actor's path relative to its mid-clip place, (T, 2)."""
    t = np.arange(num_frames) - (num_frames - 1) / 2
    if name.startswith("move_"):
        direction = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}[name[5:]]
        along = rng.uniform(*_SPEED) * np.array(direction, dtype=np.float64)
        side = rng.uniform(-_SIDE_DRIFT, _SIDE_DRIFT) * np.array(direction[::-1], dtype=np.float64)
        return t[:, None] * (along + side)
    if name == "oscillate":
        heading = rng.uniform(0.0, np.pi)
        swing = rng.uniform(*_OSC_AMPLITUDE) * np.sin(
            2 * np.pi * t / rng.uniform(*_OSC_PERIOD) + rng.uniform(0, 2 * np.pi)
        )
        return swing[:, None] * np.array([math.cos(heading), math.sin(heading)])
    return _drift(rng, num_frames)


def _spin(rng: np.random.Generator, num_frames: int, name: str) -> np.ndarray:
    """Angles (T,): fast turning for the rotation classes (clockwise = increasing), slow otherwise."""
    if name in ("rotate_cw", "rotate_ccw"):
        rate = rng.uniform(*_ROTATE) * (1.0 if name == "rotate_cw" else -1.0)
    else:
        rate = rng.uniform(-_SPIN, _SPIN)
    return rng.uniform(0.0, 2 * np.pi) + rate * np.arange(num_frames)


def _collide(
    rng: np.random.Generator, num_frames: int, size: int, radii: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """Centres (T, 2) of two objects that approach along a random axis, touch and bounce apart."""
    t = np.arange(num_frames, dtype=np.float64)
    for attempt in range(50):
        slow = 0.5 ** (attempt // 10)  # shorter paths if the frame is too small for the drawn ones
        heading = rng.uniform(0.0, 2 * np.pi)
        axis = np.array([math.cos(heading), math.sin(heading)])
        contact = rng.uniform(*_CONTACT)
        keep = rng.uniform(*_RESTITUTION)
        gap = np.where(t < contact, contact - t, keep * (t - contact))  # (T,) frames of travel from contact
        reach = _TOUCH * (radii[0] + radii[1]) / 2
        d1 = -(reach + gap * rng.uniform(*_SPEED) * slow)[:, None] * axis  # (T, 2) offsets from the contact point
        d2 = (reach + gap * rng.uniform(*_SPEED) * slow)[:, None] * axis
        lo = np.maximum(radii[0] - d1.min(axis=0), radii[1] - d2.min(axis=0)) + _MARGIN
        hi = np.minimum(size - radii[0] - d1.max(axis=0), size - radii[1] - d2.max(axis=0)) - _MARGIN
        if np.all(lo <= hi):
            point = rng.uniform(lo, hi)
            return point + d1, point + d2
    raise ValueError(f"a {size}x{size} frame is too small for colliding objects")


def _min_gap(a: np.ndarray, ra: np.ndarray, b: np.ndarray, rb: np.ndarray) -> float:
    """Smallest centre distance minus the sum of the circumradii over the clip."""
    return float((np.hypot(*(a - b).T) - ra - rb).min())


def _tracks(label: int, rng: np.random.Generator, num_frames: int, size: int) -> tuple[_Track, _Track]:
    """(actor, distractor) tracks for class ``label``."""
    name = MOTION_CLASSES[label]
    r_actor = _radius_path(rng, num_frames, label)
    r_other = _radius_path(rng, num_frames, MOTION_CLASSES.index("move_right"))  # a constant size, same law
    if name == "collide":
        c_actor, c_other = _collide(rng, num_frames, size, (float(r_actor[0]), float(r_other[0])))
    else:
        offsets = _actor_offsets(rng, num_frames, name)
        anchor = _uniform_place(rng, offsets, float(r_actor.max()), size)
        if anchor is None:
            raise ValueError(f"a {size}x{size} frame is too small for {name}")
        c_actor = anchor + offsets
        best, c_other = -math.inf, c_actor
        for _ in range(30):  # keep the distractor clear of the actor: touching is the collide class
            d = _drift(rng, num_frames)
            place = _uniform_place(rng, d, float(r_other[0]), size)
            if place is None:
                continue
            gap = _min_gap(c_actor, r_actor, place + d, r_other)
            if gap > best:
                best, c_other = gap, place + d
            if gap >= 3.0:
                break
    return (
        _Track(c_actor, r_actor, _spin(rng, num_frames, name)),
        _Track(c_other, r_other, _spin(rng, num_frames, "distractor")),
    )


def _motion_clip(
    label: int,
    seed: int | Sequence[int],
    num_frames: int,
    size: int,
    distractor: bool = True,
    background: str = "textured",
) -> tuple[np.ndarray, _Track, _Track]:
    """The clip and its (actor, distractor) tracks (the distractor's track is drawn even when it is not shown)."""
    if not 0 <= label < len(MOTION_CLASSES):
        raise ValueError(f"label must be in [0, {len(MOTION_CLASSES)}), got {label}")
    if num_frames < 2 or size < 48:
        raise ValueError(f"need num_frames >= 2 and size >= 48, got {num_frames} and {size}")
    _check_background(background)
    rng = np.random.default_rng(seed)
    frames = _camera_background(rng, num_frames, size, size, _PAN, 0.0)  # (T, S, S, 3) float32
    if background == "flat":
        frames[:] = _FLAT_LEVEL * frames.mean(axis=(0, 1, 2))  # (3,) colour broadcast over (T, S, S, 3)
    looks = [_random_look(rng) for _ in range(2)]
    masks = [_MASKS[int(k)] for k in rng.integers(len(_MASKS), size=2)]
    actor, other = _tracks(label, rng, num_frames, size)
    order = (actor, other) if rng.random() < 0.5 else (other, actor)  # the second is drawn on top
    ids = np.empty((size, size), dtype=np.int16)
    for t in range(num_frames):
        for track in order:
            k = 0 if track is actor else 1
            if k == 1 and not distractor:
                continue
            centre = (float(track.centres[t, 0]), float(track.centres[t, 1]))
            _draw(frames[t], ids, k, masks[k], looks[k], centre, float(track.radii[t]), float(track.angles[t]))
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), actor, other


def _check_background(background: str) -> None:
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown motions background {background!r}; known: {', '.join(BACKGROUNDS)}")


def motion_clip(
    label: int,
    seed: int | Sequence[int],
    num_frames: int = 16,
    size: int = 96,
    distractor: bool = True,
    background: str = "textured",
) -> np.ndarray:
    """One clip of class ``label`` (an index into :data:`MOTION_CLASSES`): (num_frames, size, size, 3) uint8 RGB.

    The same (label, seed, num_frames, size, distractor, background) always gives the same clip; ``seed`` is
    anything :func:`numpy.random.default_rng` takes (an int or a sequence of ints). ``distractor=False`` and
    ``background="flat"`` give the easier clips of the curriculum (see the module docstring).
    """
    return _motion_clip(label, seed, num_frames, size, distractor, background)[0]


def _split_labels(seed: int, split_id: int, num_clips: int) -> list[int]:
    """Clip i's label: position i % 10 of a random permutation of the classes drawn for block i // 10, so every
    block of ten clips has each class once and the first n labels do not depend on how many clips follow."""
    n = len(MOTION_CLASSES)
    labels: list[int] = []
    for block in range((num_clips + n - 1) // n):
        perm = np.random.default_rng(np.random.SeedSequence([_TAG, seed, split_id, 2, block])).permutation(n)
        labels.extend(int(c) for c in perm)
    return labels[:num_clips]


class MotionDataset(ActionDataset):
    """The generated motions set as an :class:`~rgtp.data.action.ActionDataset`; :meth:`load` generates a clip.

    ``root`` is only recorded (nothing is read). Clip i of a split is ``motions_<split>_<i:05d>``, generated by
    :func:`motion_clip` from the stream ``[tag, seed, split id, 1, i]``; labels are balanced per block of ten clips.
    ``distractor`` and ``background`` are :func:`motion_clip`'s. ``classes`` (names) keeps only the clips of those
    classes: the first ``num_clips`` of them in the split's stream, under their ids and labels in the full set (the
    model still has one output per class of :data:`MOTION_CLASSES`). ``cache`` keeps every generated clip in memory
    (0.44 MB per 16-frame 96x96 clip, so 0.9 GB for the training split; training runs many epochs and generating a
    clip costs about as much as a training step spends on it). The cache lives in the process that loads, so it only
    helps with DataLoader workers=0 or persistent workers.
    """

    name = "motions"
    hflip = False  # a horizontal flip turns move_left into move_right and rotate_cw into rotate_ccw

    def __init__(
        self,
        root: str | os.PathLike[str] = "generated",
        split: str = "train",
        num_clips: int | None = None,
        num_frames: int = 16,
        size: int = 96,
        seed: int = 0,
        distractor: bool = True,
        background: str = "textured",
        classes: Sequence[str] | None = None,
        cache: bool = False,
    ) -> None:
        if split not in MOTION_SPLITS:
            raise ValueError(f"unknown motions split {split!r}; known: {', '.join(MOTION_SPLITS)}")
        split_id, default = MOTION_SPLITS[split]
        n = default if num_clips is None else num_clips
        if n < 0:
            raise ValueError(f"num_clips must be >= 0, got {n}")
        _check_background(background)
        unknown = sorted(set(classes or ()) - set(MOTION_CLASSES))
        if unknown or (classes is not None and not classes):
            known = ", ".join(MOTION_CLASSES)
            raise ValueError(f"motions classes must be a non-empty subset of {known}; got {classes}")
        self.root = os.fspath(root)  # recorded as given, not resolved: the clips do not depend on it
        self.split, self.num_frames, self.size, self.seed = split, num_frames, size, seed
        self.distractor, self.background = distractor, background
        self.subset = None if classes is None else sorted(MOTION_CLASSES.index(c) for c in classes)
        self._split_id = split_id
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        wanted = set(self.subset or range(len(MOTION_CLASSES)))
        # a subset of k classes: n clips among the first ceil(n * 10 / k) of the stream (every block has each class)
        stream = _split_labels(seed, split_id, -(-n * len(MOTION_CLASSES) // len(wanted)))
        kept = [(i, label) for i, label in enumerate(stream) if label in wanted][:n]
        path = Path("generated/motions")
        clips = [ActionClip(id=f"motions_{split}_{i:05d}", label=label, path=path) for i, label in kept]
        self._index = {c.id: i for c, (i, _) in zip(clips, kept, strict=True)}
        super().__init__(clips, list(MOTION_CLASSES))
        logger.debug(
            "motions %s: %d clips of %dx%dx%d, seed %d, distractor %s, %s background, classes %s",
            split,
            n,
            num_frames,
            size,
            size,
            seed,
            distractor,
            background,
            self.subset or "all",
        )

    def load(self, clip: ActionClip) -> np.ndarray:
        """Generate the clip: (num_frames, size, size, 3) uint8 RGB."""
        index = self._index.get(clip.id)
        if index is None:
            raise ActionDataError(f"{clip.id} is not a clip of motions {self.split}")
        if self._cache is not None and index in self._cache:
            return self._cache[index].copy()  # a copy: the caller may write to it
        seed = [_TAG, self.seed, self._split_id, 1, index]
        video = motion_clip(clip.label, seed, self.num_frames, self.size, self.distractor, self.background)
        if self._cache is not None:
            self._cache[index] = video.copy()
        return video

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "split": self.split,
            "num_frames": self.num_frames,
            "size": self.size,
            "seed": self.seed,
            "distractor": self.distractor,
            "background": self.background,
            "classes": self.subset,
        }
