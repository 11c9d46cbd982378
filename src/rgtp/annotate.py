"""Annotated frames of ``rgtp run``: the source frame at its own resolution, what the method kept, what the model
found, and a caption panel under the frame that hides nothing.

Grid models (ViTDet): the token grid is scaled onto the frame (a token covers ``patch / scale`` source pixels, the
model's input being the frame resized by ``scale`` and padded), kept tokens are outlined, pruned ones shaded, the
importance heatmap blended in; detections are mapped back to source pixels with class names, labels placed so that
none hides another. Class-token video models (ViViT): every source frame of a segment, with the crop of the view
shown (the centre crop of the first temporal view) outlined and, on the frames that view samples, its tokens; the
panel carries the segment's top predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from rgtp.data.views import spatial_offsets, temporal_starts
from rgtp.runtime.contract import ClassStep, GridStep
from rgtp.viz import caption_panel, draw_boxes, overlay_tokens, text_size_for, with_panel

__all__ = ["ViewGeometry", "kept_grid", "render_grid_frame", "render_vivit_frames", "rescale", "side_by_side"]

MIN_SCORE = 0.3  # detections drawn (all are written to the JSON lines)


def kept_grid(keep_idx: Tensor | None, gh: int, gw: int, item: int = 0) -> np.ndarray:
    """(gh, gw) bool: the tokens a step processed for batch item ``item`` (all when ``keep_idx`` is None)."""
    kept = np.ones(gh * gw, dtype=bool)
    if keep_idx is not None:
        kept[:] = False
        kept[keep_idx[item].cpu().numpy()] = True
    return kept.reshape(gh, gw)


def _heat(out: GridStep | ClassStep, grid: tuple[int, int], item: int = 0) -> np.ndarray | None:
    """The scores that chose the kept tokens, else the step's importance, as a (gh, gw) map (None: neither)."""
    src = out.scores if out.scores is not None else out.importance
    return None if src is None else src[item].float().view(*grid).cpu().numpy()


def render_grid_frame(
    frame: np.ndarray,
    scale: float,
    patch_size: int,
    grid: tuple[int, int],
    out: GridStep | None,
    names: Sequence[str] | None,
    lines: Sequence[str],
    detections: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    reserve: int = 0,
    legend: bool = True,
) -> np.ndarray:
    """One annotated frame of a grid model at the source's resolution, with its caption panel under it.

    Args:
        frame: (H, W, 3) uint8 source frame.
        scale: the model input is the frame resized by ``scale`` (and padded bottom/right).
        patch_size: pixels per token side of the model input.
        grid: the model's token grid.
        out: the step (None: draw no token overlay, e.g. the dense side of a comparison).
        names: class names by label (None: "class <k>").
        lines: caption text, one entry per line (wrapped to the frame's width).
        detections: (boxes (K, 4) in source pixels, scores (K,), labels (K,)), or None.
        reserve: text lines the caption panel has room for at least (one panel height for a whole video).
        legend: draw the overlay's legend in the panel (one video: every frame or none).
    """
    img = frame
    if out is not None and (out.keep_idx is not None or out.scores is not None or out.importance is not None):
        img = overlay_tokens(frame, kept_grid(out.keep_idx, *grid), _heat(out, grid), patch_size / scale)
    if detections is not None:
        boxes, scores, labels = detections
        shown = scores >= MIN_SCORE
        label_names = [names[int(c)] if names else f"class {int(c)}" for c in labels[shown]]
        img = draw_boxes(img, boxes[shown], label_names, scores[shown])
    panel = caption_panel(img.shape[1], lines, font_size=text_size_for(*img.shape[:2]), legend=legend, reserve=reserve)
    return with_panel(img, panel)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two annotated frames next to each other (the shorter padded at the bottom): -> (H, W1 + gap + W2, 3)."""
    h = max(left.shape[0], right.shape[0])

    def pad(img: np.ndarray) -> np.ndarray:
        return np.pad(img, ((0, h - img.shape[0]), (0, 0), (0, 0)))

    return np.concatenate([pad(left), np.zeros((h, gap, 3), np.uint8), pad(right)], axis=1)


def rescale(img: np.ndarray, factor: float) -> np.ndarray:
    """The image resized by ``factor`` (Pillow, Lanczos), at least 2 x 2 pixels; unchanged for factor 1."""
    if factor == 1.0:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(2, round(w * factor)), max(2, round(h * factor)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8).copy()


@dataclass(frozen=True)
class ViewGeometry:
    """Where one view of a segment lies in the source frames (see :func:`rgtp.data.views.make_views`).

    Attributes:
        index: the view's row in the batch of views (spatial-major).
        frames: source frame index (within the segment) of each of the view's frames.
        origin: (x, y) of the crop's top-left corner in source pixels.
        cell: a token's side in source pixels.
        size: the crop's side in source pixels.
    """

    index: int
    frames: tuple[int, ...]
    origin: tuple[float, float]
    cell: float
    size: float

    def enlarged(self, k: int) -> ViewGeometry:
        """The same view on frames drawn ``k`` times larger."""
        x, y = self.origin
        return ViewGeometry(self.index, self.frames, (x * k, y * k), self.cell * k, self.size * k)

    @staticmethod
    def centre(
        hw: tuple[int, int], segment: int, num_frames: int, stride: int, crop: int, patch: int, views: tuple[int, int]
    ) -> ViewGeometry:
        """The centre spatial crop of the first temporal view of a segment of ``segment`` frames of size ``hw``."""
        h, w = hw
        r = max(crop / h, crop / w)  # the short side resized to the crop
        nh, nw = max(crop, round(h * r)), max(crop, round(w * r))
        s = views[0] // 2
        y0, x0 = spatial_offsets(nh, crop, views[0])[s], spatial_offsets(nw, crop, views[0])[s]
        start = temporal_starts(max(segment, num_frames * stride), num_frames * stride, views[1])[0]
        frames = tuple(min(start + k * stride, segment - 1) for k in range(num_frames))  # short segments repeat
        return ViewGeometry(s * views[1], frames, (x0 / r, y0 / r), patch / r, crop / r)


def render_vivit_frames(
    raw: Iterable[np.ndarray],
    geometry: ViewGeometry,
    steps: Sequence[ClassStep] | None,
    tubelet_frames: int,
    grid: tuple[int, int],
    lines: Sequence[str],
    reserve: int = 0,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Every source frame of a segment, annotated: the view's crop outlined; on the frames it samples, its tokens at
    the tubelet step they belong to (``steps`` None: the dense model, no overlay). ``lines``: the caption (the
    segment's predictions), under each frame; ``start``: the segment's first frame in the video."""
    sampled: dict[int, int] = {}  # source frame -> the view's frame index (the first, where padding repeats one)
    for k, f in enumerate(geometry.frames):
        sampled.setdefault(f, k)
    x0, y0 = geometry.origin
    crop_box = np.array([[x0, y0, x0 + geometry.size, y0 + geometry.size]])
    for f, frame in enumerate(raw):
        img = frame
        step_line = "not sampled by the view shown"
        if f in sampled:
            t = sampled[f] // tubelet_frames
            step_line = f"step {t} DENSE: all {grid[0] * grid[1]} tokens"
            if steps is not None:
                step = steps[t]
                img = overlay_tokens(
                    frame,
                    kept_grid(step.keep_idx, *grid, item=geometry.index),
                    _heat(step, grid, geometry.index),
                    geometry.cell,
                    origin=geometry.origin,
                )
                step_line = f"step {t} {step.kind.value.upper()}: kept {step.num_kept}/{grid[0] * grid[1]} tokens"
        img = draw_boxes(img, crop_box, ["view"], None)
        panel = caption_panel(
            img.shape[1],
            [f"frame {start + f}: {step_line}", *lines],
            font_size=text_size_for(*img.shape[:2]),
            legend=steps is not None,
            reserve=reserve,
        )
        yield with_panel(img, panel)
