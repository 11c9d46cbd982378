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

__all__ = [
    "PANEL_COLOUR",
    "add_caption",
    "caption_panel",
    "colormap",
    "draw_boxes",
    "label_color",
    "overlay_tokens",
    "text_size_for",
    "with_panel",
    "wrapped_lines",
]

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
#: The caption panel's background.
PANEL_COLOUR = (24, 24, 24)
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
    patch_size: float,
    alpha: float = 0.45,
    *,
    outline: bool = True,
    grid: bool = False,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Visualise which tokens of a ViT patch grid were kept or pruned.

    The token grid covers the ``(Gh * patch_size, Gw * patch_size)`` region of
    the frame starting at ``origin`` (x, y); ``patch_size`` may be fractional
    (a token's side in the frame's pixels when the frame is not at the model's
    resolution).  Only the part of the grid inside the frame is drawn
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
        patch_size: Token side length in the frame's pixels (> 0; fractional when the frame was resized for the
            model).
        alpha: Opacity of the importance colormap in ``[0, 1]``.
        outline: Outline the kept region.
        grid: Draw patch boundaries.
        origin: Pixel (x, y) of the grid's top-left corner (a view's crop inside the frame).

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
    if not np.isfinite(patch_size) or patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    out = img.copy()
    gh, gw = kept_arr.shape
    x0, y0 = max(0, round(origin[0])), max(0, round(origin[1]))
    h = min(img.shape[0] - y0, round(gh * patch_size))
    w = min(img.shape[1] - x0, round(gw * patch_size))
    if h <= 0 or w <= 0:
        return out

    rows = np.minimum((np.arange(h) / patch_size).astype(int), gh - 1)  # (h,) token row of each pixel row
    cols = np.minimum((np.arange(w) / patch_size).astype(int), gw - 1)  # (w,) token column of each pixel column
    kept_px = kept_arr[rows[:, None], cols[None, :]]  # (h, w)

    region = img[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    if importance is not None and alpha > 0:
        heat = colormap(_normalise_importance(importance)).astype(np.float32)  # (Gh, Gw, 3)
        region = (1.0 - alpha) * region + alpha * heat[rows[:, None], cols[None, :]]
    region = np.where(kept_px[..., None], region, region * _PRUNED_DIM)

    if grid:
        on_grid = np.zeros((h, w), dtype=bool)
        on_grid[np.r_[True, rows[1:] != rows[:-1]], :] = True  # the first pixel row of each token row
        on_grid[:, np.r_[True, cols[1:] != cols[:-1]]] = True
        region[on_grid] = 0.5 * region[on_grid] + 0.5 * _GRID_COLOR

    if outline:
        # Kept pixels with a pruned 4-neighbour (inside the drawn region).
        edge = np.zeros((h, w), dtype=bool)
        edge[1:, :] |= kept_px[1:, :] & ~kept_px[:-1, :]
        edge[:-1, :] |= kept_px[:-1, :] & ~kept_px[1:, :]
        edge[:, 1:] |= kept_px[:, 1:] & ~kept_px[:, :-1]
        edge[:, :-1] |= kept_px[:, :-1] & ~kept_px[:, 1:]
        region[edge] = _OUTLINE_COLOR

    out[y0 : y0 + h, x0 : x0 + w] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
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


def text_size_for(height: int, width: int) -> int:
    """A font size legible at this frame size: about 1/32 of the short side, 10 px at least."""
    return max(10, round(min(height, width) / 32))


def draw_boxes(
    frame: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    scores: np.ndarray | None,
    color_seed: int = 0,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
    """Draw labelled detection boxes with Pillow.

    Each box gets a rectangle and a ``"name 0.87"`` label on a filled background. Labels are placed after every
    rectangle, best-scoring box first, at the first of these places that covers no label placed before: above the
    box, inside its top, below it, inside its bottom (at its left end, then its right end), then the free row
    nearest its top along either end (the least covered corner when the frame is full), always inside the frame.
    The colour is a deterministic function of the label and ``color_seed``. Boxes with non-finite coordinates are
    skipped.

    Args:
        frame: RGB ``uint8`` image of shape ``(H, W, 3)``.
        boxes: Float array of shape ``(K, 4)``, ``(x1, y1, x2, y2)`` in pixels.
        labels: ``K`` class names.
        scores: Float array of shape ``(K,)``, or ``None`` to omit scores.
        color_seed: Changes the label -> colour assignment.
        line_width: Rectangle line width in pixels (default: from the frame size).
        font_size: Label font size in pixels (default: :func:`text_size_for` the frame; ignored on Pillow < 10.1).

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
    size = font_size or text_size_for(img.shape[0], img.shape[1])
    font = _default_font(int(size))
    width = line_width or max(1, round(size / 6))
    order = np.argsort(-score_arr, kind="stable") if score_arr is not None else np.arange(k)
    valid = [i for i in order if np.all(np.isfinite(box_arr[i]))]
    for i in sorted(set(range(k)) - set(valid)):
        logger.debug("skipping non-finite box %d: %s", i, box_arr[i])
    for i in valid:  # every rectangle first: no rectangle is drawn over a label
        x1, y1, x2, y2 = _sorted_box(box_arr[i])
        draw.rectangle((x1, y1, x2, y2), outline=label_color(str(labels[i]), color_seed), width=width)
    placed: list[tuple[float, float, float, float]] = []
    for i in valid:
        color = label_color(str(labels[i]), color_seed)
        text = str(labels[i]) if score_arr is None else f"{labels[i]} {score_arr[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, size // 6)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        tx, ty = _label_place(_sorted_box(box_arr[i]), tw, th, img.shape[1], img.shape[0], placed)
        placed.append((tx, ty, tx + tw, ty + th))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def _sorted_box(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    return x1, y1, x2, y2


def _label_place(
    box: tuple[float, float, float, float],
    tw: float,
    th: float,
    width: int,
    height: int,
    placed: list[tuple[float, float, float, float]],
) -> tuple[float, float]:
    """Top-left corner of a ``tw`` x ``th`` label for ``box``, inside the frame: the first of the box's corners
    (above, inside the top, below, inside the bottom; left end, then right end) that overlaps no label in ``placed``;
    else the free place nearest the box's top in a stack of label rows along its left or right end; else the least
    overlapping corner."""
    x1, y1, x2, y2 = box

    def clamp(cx: float, cy: float) -> tuple[float, float]:
        return min(max(cx, 0.0), max(width - tw, 0.0)), min(max(cy, 0.0), max(height - th, 0.0))

    def overlap(cx: float, cy: float) -> float:
        return sum(
            max(0.0, min(cx + tw, r[2]) - max(cx, r[0])) * max(0.0, min(cy + th, r[3]) - max(cy, r[1])) for r in placed
        )

    corners = [clamp(x, y) for x in (x1, x2 - tw) for y in (y1 - th, y1, y2, y2 - th)]
    for cx, cy in corners:
        if overlap(cx, cy) == 0.0:
            return cx, cy
    rows = max(1, int(height // th))
    stack = sorted(
        (clamp(x, n * th) for x in (x1, x2 - tw) for n in range(rows)), key=lambda p: (abs(p[1] - (y1 - th)), p[0])
    )
    for cx, cy in stack:
        if overlap(cx, cy) == 0.0:
            return cx, cy
    return min(corners, key=lambda p: overlap(*p))


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of one line of text to ``width`` pixels (a word longer than the width stands alone)."""
    Image, ImageDraw, _ = _import_pil()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        trial = word if not current else f"{current} {word}"
        if current and measure.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    return lines


def wrapped_lines(width: int, lines: Sequence[str], *, font_size: int) -> int:
    """How many lines :func:`caption_panel` needs for ``lines`` at this width."""
    font = _default_font(int(font_size))
    pad = max(2, font_size // 4)
    return sum(len(_wrap(line, font, width - 2 * pad)) for line in lines)


def caption_panel(
    width: int, lines: Sequence[str], *, font_size: int, legend: bool = False, reserve: int = 0
) -> np.ndarray:
    """A dark strip ``width`` pixels wide with ``lines`` of text, wrapped to fit, and optionally the legend of the
    token overlay (the importance colour scale, a kept token's outline and a pruned token's shade), placed under the
    frame it describes rather than over it. ``reserve``: room for at least that many text lines (so that every frame
    of a video gets a panel of one height; see :func:`wrapped_lines`). -> (H, width, 3) uint8."""
    Image, ImageDraw, _ = _import_pil()
    font = _default_font(int(font_size))
    pad = max(2, font_size // 4)
    wrapped = [part for line in lines for part in _wrap(line, font, width - 2 * pad)]
    line_h = round(font_size * 1.25)
    legend_h = line_h * len(_legend_rows(width, font_size)) + pad if legend else 0
    height = 2 * pad + line_h * max(len(wrapped), reserve) + legend_h
    pil = Image.new("RGB", (width, height), PANEL_COLOUR)
    draw = ImageDraw.Draw(pil)
    for n, text in enumerate(wrapped):
        draw.text((pad, pad + n * line_h), text, fill=(255, 255, 255), font=font)
    if legend:
        _draw_legend(draw, font, pad, pad + line_h * len(wrapped), line_h, width)
    return np.asarray(pil, dtype=np.uint8).copy()


def _legend_items(draw: Any, font: Any, box: int, bar_w: int) -> list[tuple[str, int, int]]:
    """The legend's parts, each (name, drawn width, gap after it): the importance scale's title, the scale, the kept
    token, the pruned token."""
    title_w = int(draw.textlength("importance", font=font))
    scale_w = int(draw.textlength("low", font=font)) + bar_w + int(draw.textlength("high", font=font)) + 8
    kept_w = box + 4 + int(draw.textlength("kept token", font=font))
    pruned_w = box + 4 + int(draw.textlength("pruned token", font=font))
    return [("importance", title_w, 4), ("scale", scale_w, box), ("kept", kept_w, box), ("pruned", pruned_w, box)]


def _legend_rows(width: int, font_size: int) -> list[list[str]]:
    """The legend's parts on rows that fit ``width`` (one row when it fits)."""
    Image, ImageDraw, _ = _import_pil()
    font = _default_font(int(font_size))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    box = max(6, round(font_size * 1.25) - 4)
    pad = max(2, font_size // 4)
    rows: list[list[str]] = [[]]
    used = pad
    for name, extent, gap in _legend_items(draw, font, box, _bar_width(width)):
        if rows[-1] and used + extent > width - pad:
            rows.append([])
            used = pad
        rows[-1].append(name)
        used += extent + gap
    return rows


def _bar_width(width: int) -> int:
    return max(20, min(120, width // 6))


def _draw_legend(draw: Any, font: Any, x0: int, y: int, line_h: int, width: int) -> None:
    """importance: low [colour bar] high   [outlined] kept token   [dark] pruned token, on as many rows as needed."""
    box = max(6, line_h - 4)
    white = (255, 255, 255)
    for row in _legend_rows(width, round(line_h / 1.25)):
        x = x0
        for name in row:
            if name == "importance":
                draw.text((x, y), "importance", fill=white, font=font)
                x += int(draw.textlength("importance", font=font)) + 4
            elif name == "scale":
                draw.text((x, y), "low", fill=white, font=font)
                x += int(draw.textlength("low", font=font)) + 4
                ramp = colormap(np.linspace(0.0, 1.0, _bar_width(width)))  # (bar_w, 3)
                for i, rgb in enumerate(ramp):
                    draw.line((x + i, y + 2, x + i, y + 2 + box), fill=tuple(int(c) for c in rgb))
                x += len(ramp) + 4
                draw.text((x, y), "high", fill=white, font=font)
                x += int(draw.textlength("high", font=font)) + box
            else:
                fill = (150, 150, 150) if name == "kept" else (int(150 * _PRUNED_DIM),) * 3
                outline = tuple(int(c) for c in _OUTLINE_COLOR) if name == "kept" else None
                draw.rectangle((x, y + 2, x + box, y + 2 + box), fill=fill, outline=outline)
                label = f"{name} token"
                draw.text((x + box + 4, y), label, fill=white, font=font)
                x += box + 4 + int(draw.textlength(label, font=font)) + box
        y += line_h


def with_panel(frame: np.ndarray, panel: np.ndarray) -> np.ndarray:
    """The frame with a caption panel under it: (H, W, 3), (h, W, 3) -> (H + h, W, 3)."""
    return np.concatenate([_check_frame(frame), _check_frame(panel, "panel")], axis=0)


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
