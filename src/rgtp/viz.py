"""Visualisation helpers: token-pruning overlays, detection boxes and captions.

Everything works on RGB ``uint8`` frames of shape ``(H, W, 3)`` and returns a new
array (inputs are never modified).  :func:`colormap` and :func:`overlay_tokens`
need only numpy; :func:`draw_boxes` and :func:`add_caption` need Pillow
(``pip install 'rgtp[video]'``), imported lazily.
"""

from __future__ import annotations

import colorsys
import functools
import logging
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["add_caption", "colormap", "draw_boxes", "label_color", "overlay_tokens"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "Pillow is required for drawing text and boxes: install rgtp[video] (pip install 'rgtp[video]')"

# Anchor colours of an "inferno"-like perceptual colormap (black -> purple -> red
# -> orange -> pale yellow), sampled at 11 evenly spaced positions in [0, 1].
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4],
        [22, 11, 57],
        [66, 10, 104],
        [106, 23, 110],
        [147, 38, 103],
        [188, 55, 84],
        [221, 81, 58],
        [243, 120, 25],
        [252, 165, 10],
        [246, 215, 70],
        [252, 255, 164],
    ],
    dtype=np.float32,
)

_PRUNED_DIM = 0.35
_OUTLINE_COLOR = np.array([255, 255, 255], dtype=np.float32)
_GRID_COLOR = np.array([0, 0, 0], dtype=np.float32)


def _import_pil() -> tuple[Any, Any, Any]:
    """Import Pillow lazily, raising a helpful :class:`ImportError` if it is missing."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=8)
def _default_font(size: int) -> Any:
    """Pillow's default font at ``size`` pixels (bitmap font on old Pillow versions)."""
    _, _, ImageFont = _import_pil()
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _check_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """Validate an RGB ``uint8`` ``(H, W, 3)`` frame and return it as an ndarray."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {arr.dtype}")
    return arr


def colormap(values: np.ndarray) -> np.ndarray:
    """Map scalars in ``[0, 1]`` to RGB with an inferno-like perceptual colormap.

    Values are clipped to ``[0, 1]``; NaNs map to the lowest colour.  Colours
    are linearly interpolated between 11 built-in anchor colours.

    Args:
        values: Float array of any shape ``(...)``.

    Returns:
        ``uint8`` array of shape ``(..., 3)``.
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    v = np.clip(v, 0.0, 1.0) * (len(_INFERNO_ANCHORS) - 1)
    lo = np.minimum(np.floor(v).astype(np.intp), len(_INFERNO_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _INFERNO_ANCHORS[lo] * (1.0 - frac) + _INFERNO_ANCHORS[lo + 1] * frac
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _normalise_importance(importance: np.ndarray) -> np.ndarray:
    """Scale a non-negative map by its maximum (all-zero map if max <= 0)."""
    imp = np.nan_to_num(np.asarray(importance, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    imp = np.maximum(imp, 0.0)
    peak = float(imp.max()) if imp.size else 0.0
    return imp / peak if peak > 0 else np.zeros_like(imp)


def overlay_tokens(
    frame: np.ndarray,
    kept: np.ndarray,
    importance: np.ndarray | None,
    patch_size: int,
    alpha: float = 0.45,
    *,
    outline: bool = True,
    grid: bool = False,
) -> np.ndarray:
    """Visualise which tokens of a ViT patch grid were kept or pruned.

    The token grid covers the top-left ``(Gh * patch_size, Gw * patch_size)``
    region of the frame.  Only the part of the grid inside the frame is drawn
    (the grid may extend past the frame when the model pads it bottom/right);
    pixels outside the grid are left untouched.  Inside the grid:

    * the importance map (normalised by its maximum, nearest-upsampled to
      patches) is alpha-blended with :func:`colormap`;
    * pruned tokens are darkened (multiplied by 0.35);
    * if ``outline``, the border between kept and pruned regions is drawn as a
      1-pixel white line on the kept side;
    * if ``grid``, 1-pixel black lines mark the patch boundaries.

    Args:
        frame: RGB ``uint8`` image of shape ``(H, W, 3)``.
        kept: Boolean mask of shape ``(Gh, Gw)``; ``True`` for processed tokens.
        importance: Optional float map of shape ``(Gh, Gw)`` (e.g. rollout scores).
        patch_size: Patch side length in pixels.
        alpha: Opacity of the importance colormap in ``[0, 1]``.
        outline: Outline the kept region.
        grid: Draw patch boundaries.

    Returns:
        A new RGB ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ValueError: On inconsistent shapes or invalid ``patch_size``/``alpha``.
    """
    img = _check_frame(frame)
    kept_arr = np.asarray(kept)
    if kept_arr.ndim != 2:
        raise ValueError(f"kept must have shape (Gh, Gw), got {kept_arr.shape}")
    kept_arr = kept_arr.astype(bool, copy=False)
    if importance is not None and np.shape(importance) != kept_arr.shape:
        raise ValueError(f"importance shape {np.shape(importance)} does not match kept shape {kept_arr.shape}")
    if int(patch_size) != patch_size or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    patch_size = int(patch_size)

    out = img.copy()
    gh, gw = kept_arr.shape
    h = min(img.shape[0], gh * patch_size)
    w = min(img.shape[1], gw * patch_size)
    if h == 0 or w == 0:
        return out

    rows = np.arange(h) // patch_size  # (h,) token row of each pixel row
    cols = np.arange(w) // patch_size  # (w,) token column of each pixel column
    kept_px = kept_arr[rows[:, None], cols[None, :]]  # (h, w)

    region = img[:h, :w].astype(np.float32)
    if importance is not None and alpha > 0:
        heat = colormap(_normalise_importance(importance)).astype(np.float32)  # (Gh, Gw, 3)
        region = (1.0 - alpha) * region + alpha * heat[rows[:, None], cols[None, :]]
    region = np.where(kept_px[..., None], region, region * _PRUNED_DIM)

    if grid:
        on_grid = np.zeros((h, w), dtype=bool)
        on_grid[np.arange(h) % patch_size == 0, :] = True
        on_grid[:, np.arange(w) % patch_size == 0] = True
        region[on_grid] = 0.5 * region[on_grid] + 0.5 * _GRID_COLOR

    if outline:
        # Kept pixels with a pruned 4-neighbour (inside the drawn region).
        edge = np.zeros((h, w), dtype=bool)
        edge[1:, :] |= kept_px[1:, :] & ~kept_px[:-1, :]
        edge[:-1, :] |= kept_px[:-1, :] & ~kept_px[1:, :]
        edge[:, 1:] |= kept_px[:, 1:] & ~kept_px[:, :-1]
        edge[:, :-1] |= kept_px[:, :-1] & ~kept_px[:, 1:]
        region[edge] = _OUTLINE_COLOR

    out[:h, :w] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


def label_color(label: str, color_seed: int = 0) -> tuple[int, int, int]:
    """Deterministic, saturated RGB colour for a label string.

    Args:
        label: Class name.
        color_seed: Changes the label -> colour assignment.

    Returns:
        ``(r, g, b)`` with components in ``[0, 255]``.
    """
    key = zlib.crc32(f"{color_seed}:{label}".encode())
    hue = (key % 360) / 360.0
    sat = 0.65 + 0.3 * ((key >> 9) % 100) / 100.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``bg``."""
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_boxes(
    frame: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    scores: np.ndarray | None,
    color_seed: int = 0,
    *,
    line_width: int = 2,
    font_size: int = 12,
) -> np.ndarray:
    """Draw labelled detection boxes with Pillow.

    Each box gets a rectangle and a ``"name 0.87"`` label on a filled
    background (above the box if there is room, otherwise inside it).  The
    colour is a deterministic function of the label and ``color_seed``.
    Boxes with non-finite coordinates are skipped.

    Args:
        frame: RGB ``uint8`` image of shape ``(H, W, 3)``.
        boxes: Float array of shape ``(K, 4)``, ``(x1, y1, x2, y2)`` in pixels.
        labels: ``K`` class names.
        scores: Float array of shape ``(K,)``, or ``None`` to omit scores.
        color_seed: Changes the label -> colour assignment.
        line_width: Rectangle line width in pixels.
        font_size: Label font size in pixels (ignored on Pillow < 10.1).

    Returns:
        A new RGB ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ValueError: On inconsistent shapes.
        ImportError: If Pillow is not installed.
    """
    img = _check_frame(frame)
    box_arr = np.asarray(boxes, dtype=np.float64)
    if box_arr.size == 0:
        box_arr = box_arr.reshape(0, 4)
    if box_arr.ndim != 2 or box_arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {box_arr.shape}")
    k = box_arr.shape[0]
    if len(labels) != k:
        raise ValueError(f"got {k} boxes but {len(labels)} labels")
    score_arr = None
    if scores is not None:
        score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if score_arr.shape[0] != k:
            raise ValueError(f"got {k} boxes but {score_arr.shape[0]} scores")
    if k == 0:
        return img.copy()

    Image, ImageDraw, _ = _import_pil()
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = _default_font(int(font_size))
    for i in range(k):
        x1, y1, x2, y2 = box_arr[i]
        if not np.all(np.isfinite(box_arr[i])):
            logger.debug("skipping non-finite box %d: %s", i, box_arr[i])
            continue
        x1, x2 = sorted((float(x1), float(x2)))
        y1, y2 = sorted((float(y1), float(y2)))
        color = label_color(str(labels[i]), color_seed)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=max(1, int(line_width)))
        text = str(labels[i]) if score_arr is None else f"{labels[i]} {score_arr[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = 2
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = max(0.0, x1)
        draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def add_caption(
    frame: np.ndarray,
    text: str,
    *,
    font_size: int = 14,
    background_opacity: float = 0.6,
) -> np.ndarray:
    """Write a caption strip at the top-left of a frame.

    The text (may contain newlines) is drawn in white with Pillow's default
    font over a darkened strip, e.g. ``"t=3 PRUNED kept 512/1764  57.8 GMACs"``.

    Args:
        frame: RGB ``uint8`` image of shape ``(H, W, 3)``.
        text: Caption text.
        font_size: Font size in pixels (ignored on Pillow < 10.1).
        background_opacity: Darkening of the strip behind the text, in ``[0, 1]``.

    Returns:
        A new RGB ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ImportError: If Pillow is not installed.
    """
    img = _check_frame(frame)
    if not text:
        return img.copy()
    if not 0.0 <= background_opacity <= 1.0:
        raise ValueError(f"background_opacity must be in [0, 1], got {background_opacity}")
    Image, ImageDraw, _ = _import_pil()
    font = _default_font(int(font_size))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
    pad = 3
    strip_h = min(img.shape[0], bottom - top + 2 * pad)
    strip_w = min(img.shape[1], right - left + 2 * pad)
    out = img.copy()
    if strip_h > 0 and strip_w > 0:
        strip = out[:strip_h, :strip_w].astype(np.float32) * (1.0 - background_opacity)
        out[:strip_h, :strip_w] = np.rint(strip).astype(np.uint8)
    pil = Image.fromarray(out)
    ImageDraw.Draw(pil).multiline_text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil, dtype=np.uint8).copy()
