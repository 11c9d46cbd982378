"""Generated video detection benchmark: six shape classes moving over a moving textured background.

Every sequence is drawn from its own random stream, ``SeedSequence([tag, seed, split, 1, index])``, so splits
(``train``, ``val``, ``test``) are disjoint and any sequence is reproducible from the seed. The generative process:

* **Background.** Smooth value noise, a colour gradient and sinusoidal stripes on a canvas larger than the frame
  (:func:`_background`, also that of :func:`rgtp.lab.data.synthetic.moving_shapes_video`). A camera pans over it at
  0.2–1.5 px/frame in a random direction and zooms slowly in or out (at most ±0.4 %/frame); the frame is the
  bilinear sample of its window, so the whole background moves.
* **Objects.** The class is the SHAPE only (:data:`SHAPES_CLASSES`): disc, square, triangle, five-pointed star,
  cross, ring. Colour, second colour and texture (mottled noise, stripes, checker, dots) are drawn independently of
  the class, in the object's own rotating coordinates, so a detector has to learn shape. Each object follows a
  ballistic path (speed 0.3–3.5 px/frame, acceleration at most 0.03 px/frame² per axis), rotates at up to
  0.08 rad/frame and grows or shrinks smoothly (exponentially, at most 2 %/frame) with its circumradius kept in
  [12, 44] px (24–88 px across). A sequence starts with 2–4 objects inside the frame; about one more per 16 frames
  enters across an edge at a random time; any object may leave. Later objects are drawn on top (z-order), so
  objects occlude each other. Classes are dealt from a per-split stream of shuffled blocks of the six classes, so
  every class has the same number of objects over a split, up to one block.
* **Boxes.** After drawing frame t, an object is annotated when at least :data:`MIN_VISIBLE_PIXELS` (25) of its
  pixels are visible (inside the frame and not covered by a later object); its box is the tight bound of exactly
  those pixels, ``(x1, y1, x2, y2)`` with ``x2``/``y2`` exclusive, so ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <=
  H``. Objects keep their z-order within a frame's box list; labels index :data:`SHAPES_CLASSES`. Shapes have hard
  edges (no anti-aliasing), so a pixel belongs to exactly one object or to the background.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from rgtp.data.detection import DetectionSet, DetSequence

__all__ = ["MIN_VISIBLE_PIXELS", "SHAPES_CLASSES", "SHAPES_SPLITS", "make_shapes_split"]

logger = logging.getLogger(__name__)

#: Class names, indexed by the labels; a class is a shape (colour and texture are drawn independently).
SHAPES_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "star", "cross", "ring")

#: An object is annotated in a frame when at least this many of its pixels are visible.
MIN_VISIBLE_PIXELS = 25

#: split -> (split id, default number of sequences, default frames per sequence). The small detector overfits 64
#: training sequences within a few epochs; with 256 (6144 frames) each of three epochs still improves on val.
SHAPES_SPLITS: dict[str, tuple[int, int, int]] = {"train": (1, 256, 24), "val": (2, 6, 48), "test": (3, 10, 48)}

_TAG = 0x5348  # "SH": keeps these streams apart from other generated sets with the same seed
_TEXTURES = ("noise", "stripes", "checker", "dots")
_RADIUS = (12.0, 44.0)  # circumradius bounds, pixels (objects of about 2-5 tokens of 16 px)
_MID_RADIUS = (14.0, 40.0)  # circumradius at mid-sequence, log-uniform
_MAX_GROWTH = 0.02  # |d log r / dt|, per frame
_SPEED = (0.3, 3.0)  # objects present at the start, px/frame
_ENTER_SPEED = (1.0, 3.5)  # entering objects, px/frame
_ACCEL = 0.03  # px/frame^2 per axis
_SPIN = 0.08  # rad/frame
_PAN = (0.2, 1.5)  # camera pan speed, px/frame
_ZOOM = 0.004  # camera zoom rate bound, per frame
_ENTER_EVERY = 16.0  # mean frames between entering objects
_STAR_INNER = 0.45  # inner / outer radius of the star
_RING_INNER = 0.55  # inner / outer radius of the ring

MaskFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------------------------
# Shapes in unit coordinates: (u, v) scaled by the circumradius, every shape inside the unit disc


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral, circumradius 1: inradius 1/2 along three normals."""
    mask = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for k in range(3):
        phi = -np.pi / 2 + 2 * np.pi * k / 3
        mask &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
    return mask


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five points: fold the angle into [0, pi/5] and test against the edge from an outer to an inner vertex."""
    sector = 2 * np.pi / 5
    theta = np.mod(np.arctan2(v, u), sector)
    phi = np.minimum(theta, sector - theta)  # in [0, pi/5]
    rho = np.hypot(u, v)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    bx, by = _STAR_INNER * np.cos(sector / 2), _STAR_INNER * np.sin(sector / 2)  # inner vertex; outer is (1, 0)
    return (bx - 1.0) * py - by * (px - 1.0) >= 0.0


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rr = u * u + v * v
    return (rr <= 1.0) & (rr >= _RING_INNER**2)


_SHAPE_MASKS: tuple[MaskFn, ...] = (_disc, _square, _triangle, _star, _cross, _ring)


# ---------------------------------------------------------------------------------------------------------------------
# Appearance and drawing (shared with rgtp.lab.data.motions and rgtp.lab.data.synthetic)


@dataclass(frozen=True)
class _Look:
    """Colours and texture of one object, in its own unit coordinates (the texture turns and scales with it)."""

    colour: np.ndarray  # (3,) float32 in [0, 255]
    second: np.ndarray  # (3,) float32, the texture's other colour
    texture: int  # index into _TEXTURES
    period: float  # texture period, in circumradii
    theta: float  # stripe direction
    noise: np.ndarray  # (6, 6) float32 in [0, 1]: value noise over [-1, 1]^2 (texture "noise")


def _random_look(rng: np.random.Generator) -> _Look:
    """Colour, second colour and texture, independent of the shape."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    colour = np.array(rgb, dtype=np.float32) * 255.0
    if rng.random() < 0.5:  # a darker shade
        second = colour * np.float32(rng.uniform(0.3, 0.6))
    else:  # another hue
        rgb2 = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
        second = np.array(rgb2, dtype=np.float32) * 255.0
    return _Look(
        colour=colour,
        second=second.astype(np.float32),
        texture=int(rng.integers(len(_TEXTURES))),
        period=float(rng.uniform(0.35, 0.8)),
        theta=float(rng.uniform(0.0, np.pi)),
        noise=rng.uniform(0.0, 1.0, size=(6, 6)).astype(np.float32),
    )


def _bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``grid`` (h, w) or (h, w, C) at fractional pixel-centre coordinates ``ys``, ``xs`` (broadcastable;
    clamped to the grid): -> broadcast shape (+ (C,))."""
    h, w = grid.shape[:2]
    ys = np.clip(ys, 0.0, h - 1.0)
    xs = np.clip(xs, 0.0, w - 1.0)
    y0 = np.minimum(ys.astype(np.intp), h - 2)
    x0 = np.minimum(xs.astype(np.intp), w - 2)
    fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
    if grid.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bot = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _texture(look: _Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight of the second colour per pixel, in [0, 1], from unit coordinates."""
    p = look.period
    if look.texture == 0:  # mottled: smooth noise, mostly the main colour
        g = look.noise.shape[0] - 1
        return 0.6 * _bilinear(look.noise, (v + 1.0) * (g / 2), (u + 1.0) * (g / 2))
    if look.texture == 1:  # stripes
        along = u * np.cos(look.theta) + v * np.sin(look.theta)
        return (np.sin(2 * np.pi * along / p) >= 0).astype(np.float32)
    if look.texture == 2:  # checker
        return ((np.floor(u / p) + np.floor(v / p)) % 2 == 0).astype(np.float32)
    du, dv = u / p - np.round(u / p), v / p - np.round(v / p)  # dots on a square lattice
    return (du * du + dv * dv <= 0.09).astype(np.float32)


def _draw(
    frame: np.ndarray,
    ids: np.ndarray,
    index: int,
    mask_fn: MaskFn,
    look: _Look,
    centre: tuple[float, float],
    radius: float,
    angle: float,
) -> int:
    """Paint one object into ``frame`` (H, W, 3) float32 and its ``index`` into ``ids`` (H, W); returns its pixel
    count inside the frame. ``angle`` turns the shape clockwise on screen (y points down)."""
    height, width = ids.shape
    cx, cy = centre
    xa, xb = max(0, math.floor(cx - radius)), min(width, math.ceil(cx + radius) + 1)
    ya, yb = max(0, math.floor(cy - radius)), min(height, math.ceil(cy + radius) + 1)
    if xa >= xb or ya >= yb:
        return 0
    dx = ((np.arange(xa, xb, dtype=np.float32) + 0.5 - cx) / radius)[None, :]  # (1, w)
    dy = ((np.arange(ya, yb, dtype=np.float32) + 0.5 - cy) / radius)[:, None]  # (h, 1)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = c * dx + s * dy, c * dy - s * dx  # (h, w) unit coordinates of the un-rotated shape
    mask = mask_fn(u, v)
    count = int(mask.sum())
    if count == 0:
        return 0
    f = _texture(look, u[mask], v[mask])[:, None]  # (n, 1)
    frame[ya:yb, xa:xb][mask] = look.colour * (1 - f) + look.second * f
    ids[ya:yb, xa:xb][mask] = index
    return count


def _upsample_bilinear(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize ``coarse`` of shape ``(h, w, C)`` to ``(height, width, C)``."""
    h, w = coarse.shape[:2]
    ys = np.linspace(0.0, h - 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, w - 1.0, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.intp), h - 2)
    x0 = np.minimum(xs.astype(np.intp), w - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bot = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured background canvas of shape ``(height, width, 3)``, float32 in [0, 255]."""
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    # Two octaves of smooth value noise with a random colour tint each.
    for cell, amp in ((64, 70.0), (16, 22.0)):
        gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
        coarse = rng.uniform(-1.0, 1.0, size=(gh, gw, 1)).astype(np.float32)
        tint = rng.uniform(0.6, 1.0, size=(1, 1, 3)).astype(np.float32)
        canvas += amp * _upsample_bilinear(coarse * tint, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(70.0, 130.0, size=3).astype(np.float32)
    gradient = 40.0 * (xx / max(width - 1, 1) - 0.5)[..., None] * rng.uniform(-1.0, 1.0, size=3)
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(18.0, 40.0)
    stripes = 14.0 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    canvas += base + gradient.astype(np.float32) + stripes[..., None]
    return canvas


def _camera_background(
    rng: np.random.Generator, num_frames: int, height: int, width: int, pan: tuple[float, float], zoom: float
) -> np.ndarray:
    """A textured canvas seen through a panning (``pan`` speed range, px/frame, random direction) and zooming
    (rate in [-zoom, zoom] per frame) camera: -> (T, H, W, 3) float32."""
    speed, direction = rng.uniform(*pan), rng.uniform(0.0, 2 * np.pi)
    rate = rng.uniform(-zoom, zoom) if zoom > 0 else 0.0
    t = np.arange(num_frames, dtype=np.float64)
    scale = np.exp(rate * (t - (num_frames - 1) / 2))  # canvas pixels per frame pixel
    cx, cy = speed * math.cos(direction) * t, speed * math.sin(direction) * t  # window centre
    x_lo, x_hi = cx - scale * width / 2, cx + scale * width / 2
    y_lo, y_hi = cy - scale * height / 2, cy + scale * height / 2
    ox, oy = math.floor(x_lo.min()) - 2, math.floor(y_lo.min()) - 2
    canvas = _background(rng, math.ceil(y_hi.max()) - oy + 3, math.ceil(x_hi.max()) - ox + 3)
    out = np.empty((num_frames, height, width, 3), dtype=np.float32)
    px, py = np.arange(width) + 0.5 - width / 2, np.arange(height) + 0.5 - height / 2
    for i in range(num_frames):
        xs = cx[i] - ox + px * scale[i] - 0.5  # canvas pixel-centre coordinates
        ys = cy[i] - oy + py * scale[i] - 0.5
        if rate == 0.0:  # a pure pan: one sub-pixel shift of a window, no gathers
            x0, y0 = math.floor(xs[0]), math.floor(ys[0])
            fx, fy = np.float32(xs[0] - x0), np.float32(ys[0] - y0)
            win = canvas[y0 : y0 + height + 1, x0 : x0 + width + 1]  # (H + 1, W + 1, 3)
            rows = win[:-1] * (1 - fy) + win[1:] * fy  # (H, W + 1, 3)
            out[i] = rows[:, :-1] * (1 - fx) + rows[:, 1:] * fx
        else:
            out[i] = _resample_axis(_resample_axis(canvas, ys, 0), xs, 1)
    return out


def _resample_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos`` (clamped)."""
    n = a.shape[axis]
    pos = np.clip(pos, 0.0, n - 1.0)
    i0 = np.minimum(pos.astype(np.intp), n - 2)
    f = (pos - i0).astype(np.float32).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis=axis) * (1 - f) + np.take(a, i0 + 1, axis=axis) * f


def _visible_box(ids: np.ndarray, index: int) -> tuple[np.ndarray, int]:
    """Tight (x1, y1, x2, y2) bound of the pixels equal to ``index`` (exclusive ends) and their count."""
    visible = ids == index
    count = int(visible.sum())
    if count == 0:
        return np.zeros(4, dtype=np.float32), 0
    cols, rows = np.flatnonzero(visible.any(axis=0)), np.flatnonzero(visible.any(axis=1))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32), count


# ---------------------------------------------------------------------------------------------------------------------
# Sequences


@dataclass(frozen=True)
class _Object:
    """One object's class, look and path; quantities at frame t follow from the reference time ``t0``."""

    kind: int  # index into SHAPES_CLASSES
    look: _Look
    t0: float  # reference frame of the path (0, or the frame an entering object crosses the edge)
    pos: tuple[float, float]  # centre at t0
    vel: tuple[float, float]  # px/frame
    acc: tuple[float, float]  # px/frame^2
    r_mid: float  # circumradius at mid-sequence
    growth: float  # d log r / dt
    angle0: float
    spin: float  # rad/frame

    def centre(self, t: int) -> tuple[float, float]:
        d = t - self.t0
        return (
            self.pos[0] + self.vel[0] * d + 0.5 * self.acc[0] * d * d,
            self.pos[1] + self.vel[1] * d + 0.5 * self.acc[1] * d * d,
        )

    def radius(self, t: int, mid: float) -> float:
        return self.r_mid * math.exp(self.growth * (t - mid))


def _size(rng: np.random.Generator, mid: float) -> tuple[float, float]:
    """Mid-sequence circumradius (log-uniform) and a growth rate that keeps it in _RADIUS over the sequence."""
    r_mid = math.exp(rng.uniform(math.log(_MID_RADIUS[0]), math.log(_MID_RADIUS[1])))
    bound = _MAX_GROWTH
    if mid > 0:
        bound = min(bound, math.log(_RADIUS[1] / r_mid) / mid, math.log(r_mid / _RADIUS[0]) / mid)
    return r_mid, float(rng.uniform(-bound, bound))


def _make_objects(
    rng: np.random.Generator, classes: Iterator[int], length: int, height: int, width: int
) -> list[_Object]:
    """Objects present at the start (inside the frame), then objects entering across an edge, in z-order."""
    mid = (length - 1) / 2
    n_start = int(rng.integers(2, 5))
    n_enter = int(rng.poisson(length / _ENTER_EVERY))
    objects = []
    for k in range(n_start + n_enter):
        look = _random_look(rng)
        r_mid, growth = _size(rng, mid)
        if k < n_start:
            t0 = 0.0
            pos = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
            speed, heading = rng.uniform(*_SPEED), rng.uniform(0.0, 2 * np.pi)
        else:  # enters across an edge at t0, centre one radius outside, heading to the inner part of the frame
            t0 = float(rng.uniform(0.0, 0.75 * max(length - 1, 1)))
            r = r_mid * math.exp(growth * (t0 - mid))
            along = rng.uniform()
            edge = rng.choice(4, p=np.array([height, height, width, width]) / (2 * (height + width)))
            pos = (
                (-r, along * height),
                (width + r, along * height),
                (along * width, -r),
                (along * width, height + r),
            )[int(edge)]
            target = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height)
            speed, heading = rng.uniform(*_ENTER_SPEED), math.atan2(target[1] - pos[1], target[0] - pos[0])
        objects.append(
            _Object(
                kind=int(next(classes)),
                look=look,
                t0=t0,
                pos=(float(pos[0]), float(pos[1])),
                vel=(speed * math.cos(heading), speed * math.sin(heading)),
                acc=(float(rng.uniform(-_ACCEL, _ACCEL)), float(rng.uniform(-_ACCEL, _ACCEL))),
                r_mid=r_mid,
                growth=growth,
                angle0=float(rng.uniform(0.0, 2 * np.pi)),
                spin=float(rng.uniform(-_SPIN, _SPIN)),
            )
        )
    return objects


@dataclass(frozen=True)
class _Rendered:
    """A generated sequence with what the tests check: instance ids and unoccluded in-frame areas."""

    sequence: DetSequence
    ids: np.ndarray  # (T, H, W) int16: index of the object owning each pixel, -1 for background
    areas: np.ndarray  # (T, K) int64: pixels of each object inside the frame before occlusion
    kinds: np.ndarray  # (K,) int64: class of each object


def _render(
    name: str,
    rng: np.random.Generator,
    classes: Iterator[int],
    length: int,
    size: tuple[int, int],
    pan: tuple[float, float] = _PAN,
) -> _Rendered:
    """Draw one sequence: background, objects in z-order, then the boxes of the visible pixels."""
    height, width = size
    mid = (length - 1) / 2
    canvas = _camera_background(rng, length, height, width, pan, _ZOOM)
    objects = _make_objects(rng, classes, length, height, width)
    ids = np.full((length, height, width), -1, dtype=np.int16)
    areas = np.zeros((length, len(objects)), dtype=np.int64)
    boxes, labels = [], []
    for t in range(length):
        for k, obj in enumerate(objects):
            angle = obj.angle0 + obj.spin * t
            areas[t, k] = _draw(
                canvas[t], ids[t], k, _SHAPE_MASKS[obj.kind], obj.look, obj.centre(t), obj.radius(t, mid), angle
            )
        frame_boxes, frame_labels = [], []
        for k in np.flatnonzero(areas[t] >= MIN_VISIBLE_PIXELS):
            box, count = _visible_box(ids[t], int(k))
            if count >= MIN_VISIBLE_PIXELS:
                frame_boxes.append(box)
                frame_labels.append(objects[k].kind)
        boxes.append(np.stack(frame_boxes) if frame_boxes else np.zeros((0, 4), dtype=np.float32))
        labels.append(np.array(frame_labels, dtype=np.int64))
    frames = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    kinds = np.array([o.kind for o in objects], dtype=np.int64)
    return _Rendered(DetSequence(name, frames, tuple(boxes), tuple(labels)), ids, areas, kinds)


def _class_stream(rng: np.random.Generator) -> Iterator[int]:
    """Endless classes in shuffled blocks of all six: balanced over a split up to one block."""
    while True:
        yield from (int(c) for c in rng.permutation(len(SHAPES_CLASSES)))


def _split_id(split: str) -> int:
    if split not in SHAPES_SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; known: {', '.join(SHAPES_SPLITS)}")
    return SHAPES_SPLITS[split][0]


def _render_split(
    split: str,
    num_sequences: int | None,
    length: int | None,
    seed: int,
    size: tuple[int, int],
    pan: tuple[float, float] = _PAN,
) -> Iterator[_Rendered]:
    """The split's sequences in order (see :func:`make_shapes_split`)."""
    sid, default_n, default_len = SHAPES_SPLITS[split][0], SHAPES_SPLITS[split][1], SHAPES_SPLITS[split][2]
    n = default_n if num_sequences is None else num_sequences
    length = default_len if length is None else length
    if n < 0 or length < 1 or size[0] < 16 or size[1] < 16:
        raise ValueError(f"need num_sequences >= 0, length >= 1, size >= 16x16; got {n}, {length}, {size}")
    classes = _class_stream(np.random.default_rng(np.random.SeedSequence([_TAG, seed, sid, 2])))
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([_TAG, seed, sid, 1, i]))
        yield _render(f"shapes_{split}_{i:04d}", rng, classes, length, size, pan)


def make_shapes_split(
    split: str,
    num_sequences: int | None = None,
    length: int | None = None,
    seed: int = 0,
    size: tuple[int, int] = (160, 256),
    pan: float | None = None,
) -> DetectionSet:
    """Generate a split of the shapes detection set (see the module docstring for the process and the box rule).

    Args:
        split: "train" (default 256 sequences of 24 frames), "val" (6 x 48) or "test" (10 x 48); disjoint streams.
        num_sequences: Sequences to generate (None: the split's default). The first n sequences do not depend on
            how many follow.
        length: Frames per sequence (None: the split's default).
        seed: Equal seeds give identical sets.
        size: (height, width) of the frames.
        pan: The camera's pan speed in px/frame (direction and the slow zoom still random); None: drawn in
            0.2-1.5 per sequence (the default set).

    Returns:
        A :class:`DetectionSet` named "shapes" with classes :data:`SHAPES_CLASSES`; sequences named
        ``shapes_<split>_<i:04d>``.
    """
    _split_id(split)
    if pan is not None and pan < 0:
        raise ValueError(f"pan must be >= 0 px/frame, got {pan}")
    speeds = _PAN if pan is None else (pan, pan)
    sequences = tuple(r.sequence for r in _render_split(split, num_sequences, length, seed, size, speeds))
    result = DetectionSet("shapes", split, SHAPES_CLASSES, sequences)
    boxes = sum(len(b) for s in sequences for b in s.boxes)
    logger.info(
        "generated shapes %s: %d sequences, %d frames, %d boxes", split, len(sequences), result.num_frames, boxes
    )
    return result
