"""Run a preset over a video file frame by frame: per-frame JSON lines, an optional annotated video, a summary.

This is the engine behind ``rgtp run`` and ``rgtp demo``. Results are written line by line as frames finish, so an
interrupted run keeps everything up to the last frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rgtp.accounting import Accounting, count_preset
from rgtp.build import build_model, build_runner, load_weights, shipped
from rgtp.config import Preset, ViTDetConfig, ViViTConfig
from rgtp.data.views import MEAN as VIVIT_MEAN
from rgtp.data.views import STD as VIVIT_STD
from rgtp.data.views import make_views
from rgtp.interrupt import StopRequest, graceful_stop
from rgtp.io.video import VideoWriter, read_frames, video_info
from rgtp.models.vitdet import PIXEL_MEAN, PIXEL_STD, preprocess_frame
from rgtp.models.vivit import ViViT, predict_views
from rgtp.progress import progress_bar
from rgtp.runtime.driver import run_clip, stream
from rgtp.timing import stopwatch

__all__ = ["RANDOM", "RunSummary", "run_video"]

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Totals of one run (times in ms per frame or clip; compute in GMACs per frame or TMACs per clip)."""

    preset: str
    video: str
    weights: str  # path, or "random"
    frames: int = 0
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> {count, gmacs, ms_mean}
    mean_gmacs: float = 0.0
    dense_gmacs: float = 0.0
    clips: list[dict[str, Any]] = field(default_factory=list)  # ViViT: per-clip predictions
    outputs: dict[str, str] = field(default_factory=dict)
    interrupted: int | None = None  # the signal that stopped the run early (SIGINT, SIGTERM), if any

    def table(self) -> str:
        """A small Markdown table of the run."""
        unit = "GMACs/frame" if not self.clips else "GMACs/step·view"
        rows = [f"| step kind | count | {unit} | ms (mean) |", "|---|---|---|---|"]
        for kind, v in self.by_kind.items():
            rows.append(f"| {kind} | {int(v['count'])} | {v['gmacs']:.2f} | {v['ms_mean']:.1f} |")
        return "\n".join(rows)


#: ``weights`` value that asks for random weights even where some are shipped.
RANDOM = "random"


def run_video(
    video: str | Path,
    preset: Preset,
    weights: str | Path | None = None,
    jsonl: str | Path | None = None,
    out_video: str | Path | None = None,
    max_frames: int | None = None,
    device: str = "cpu",
    segment_frames: int = 250,
    strict: bool = False,
) -> RunSummary:
    """Run ``preset`` over ``video``; write JSON lines to ``jsonl`` and an annotated video to ``out_video``.

    ``weights``: a checkpoint, None for the weights shipped for the preset's model (random weights if none are), or
    ``"random"``. ViTDet presets process every frame. ViViT presets classify consecutive segments of
    ``segment_frames`` frames (250: a 10 s Kinetics clip at 25 fps), each with the preset's spatial x temporal views
    (spec §12.2). SIGINT / SIGTERM stop the run after the current frame with every output closed and valid
    (``summary.interrupted`` says which signal). A video that ends before the frame count its container announces
    (damaged) is processed up to the damage with a warning, or with ``strict`` fails there.
    """
    video = Path(video)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    info = video_info(video)  # fails early, naming the file, if it is missing or not a video
    model, weights_name = _load_model(preset, weights, device)
    summary = RunSummary(preset.name, str(video), weights_name)
    accounting = count_preset(preset)
    total = info.num_frames if max_frames is None else min(max_frames, info.num_frames or max_frames)
    with ExitStack() as stack:
        sink = stack.enter_context(open(jsonl, "w")) if jsonl else None
        writer = stack.enter_context(VideoWriter(out_video, fps=info.fps or 10.0)) if out_video else None
        frames = read_frames(video, max_frames, strict)
        if isinstance(preset.model, ViTDetConfig):
            records = _run_vitdet(preset, model, frames, accounting, writer, summary.weights)
        else:
            records = _run_vivit(preset, model, frames, accounting, writer, summary, segment_frames)
        bar = stack.enter_context(closing(progress_bar(total, preset.name)))
        stop = stack.enter_context(graceful_stop())  # a signal ends the run after the current frame, outputs closed
        _consume(records, summary, sink, bar, stop)
    if summary.frames == 0 and not summary.clips and summary.interrupted is None:
        _remove(jsonl, out_video)  # nothing to keep: no empty outputs left behind
        raise ValueError(f"{video}: no frame could be decoded (an empty or unreadable video stream)")
    summary.dense_gmacs = _dense_gmacs(preset)
    if jsonl:
        summary.outputs["jsonl"] = str(jsonl)
    if out_video:
        summary.outputs["video"] = str(out_video)
    return summary


def _load_model(preset: Preset, weights: str | Path | None, device: str) -> tuple[torch.nn.Module, str]:
    """The preset's model with the given, the shipped or random weights; (model, what the weights are)."""
    model = build_model(preset, device)
    entry = shipped(preset.name) if weights is None else None
    if entry is not None:
        weights = entry.path
        logger.info(
            "%s: the weights shipped for it, trained on %s; it detects %s", preset.name, entry.trained_on, entry.outputs
        )
    if weights is None or str(weights) == RANDOM:
        logger.warning(
            "%s: RANDOM weights (%s): outputs are not meaningful; token selection, compute and timing are",
            preset.name,
            "asked for" if weights is not None else "none are shipped for this preset; give --weights",
        )
        return model, RANDOM
    load_weights(model, weights)
    return model, str(weights)


def _consume(records: Iterator[dict[str, Any]], summary: RunSummary, sink: Any, bar: Any, stop: StopRequest) -> None:
    """Write each record as it comes; a stop request ends the run after the current frame."""
    for record in records:
        _add(summary, record)
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()
        bar.update(1)
        if stop.signum is not None:
            logger.warning("%s: stopping after %d frames; closing the outputs", stop.name, summary.frames)
            summary.interrupted = stop.signum
            return


def _remove(*paths: str | Path | None) -> None:
    for path in paths:
        if path is not None and Path(path).is_file():
            Path(path).unlink()


def _dense_gmacs(preset: Preset) -> float:
    """GMACs per frame (ViTDet) or per step and view (ViViT) of the dense model."""
    dense = count_preset(replace(preset, rgtp=None))
    if dense.full_frame_gmacs is not None:
        return dense.full_frame_gmacs
    assert dense.clip_tmacs is not None
    views = preset.views[0] * preset.views[1]
    return dense.clip_tmacs * 1e3 / (views * preset.model.num_steps)  # per step and view


def _add(summary: RunSummary, record: dict[str, Any]) -> None:
    if "clip_summary" in record:
        summary.clips.append(record["clip_summary"])
        return
    kind = summary.by_kind.setdefault(record["kind"], {"count": 0, "gmacs": record["gmacs"], "ms_mean": 0.0})
    kind["ms_mean"] = (kind["ms_mean"] * kind["count"] + record["ms"]) / (kind["count"] + 1)
    kind["count"] += 1
    summary.frames += 1
    summary.mean_gmacs += (record["gmacs"] - summary.mean_gmacs) / summary.frames


# ---------------------------------------------------------------------------------------------------------------------
# ViTDet


def _run_vitdet(
    preset: Preset,
    model: torch.nn.Module,
    frames: Iterable[np.ndarray],
    accounting: Accounting,
    writer: VideoWriter | None,
    weights: str,
) -> Iterator[dict[str, Any]]:
    cfg = preset.model
    assert isinstance(cfg, ViTDetConfig)
    runtime = build_runner(preset, model)
    device = next(model.parameters()).device
    inputs: list[tuple[np.ndarray, Tensor, float]] = []  # the frame being stepped: raw, input, scale

    def images() -> Iterator[Tensor]:
        for frame in frames:
            image, scale = preprocess_frame(torch.from_numpy(frame).to(device), cfg.img_size)
            inputs[:] = [(frame, image, scale)]
            yield image[None]

    for tick in stream(runtime, images(), timed=True):
        result, (frame, image, scale) = tick.output, inputs[0]
        gmacs = accounting.step_gmacs(result.kind)
        record: dict[str, Any] = {
            "frame": tick.index,
            "kind": result.kind.value,
            "kept": result.num_kept,
            "tokens": cfg.num_tokens,
            "gmacs": round(gmacs, 4),
            "ms": round((tick.seconds or 0.0) * 1e3, 2),
            "weights": weights,
            "outputs": {
                "features": {k: list(v.shape[1:]) for k, v in result.features.items()},
                "detections": None if result.detections is None else _detections_json(result.detections[0], scale),
            },
        }
        if writer is not None:
            writer.write(_annotate_vitdet(image, scale, frame.shape[:2], result, cfg, gmacs, weights))
        yield record


def _detections_json(det: Any, scale: float) -> list[dict[str, Any]]:
    return [
        {"box": [round(float(v) / scale, 1) for v in box], "score": round(float(s), 4), "label": int(c)}
        for box, s, c in zip(det.boxes, det.scores, det.labels, strict=True)
    ]


def _annotate_vitdet(
    image: Tensor, scale: float, hw: tuple[int, int], result: Any, cfg: ViTDetConfig, gmacs: float, weights: str
) -> np.ndarray:
    from rgtp.viz import add_caption, overlay_tokens

    gh, gw = cfg.grid
    h, w = round(hw[0] * scale), round(hw[1] * scale)
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    pixels = (image * std + mean)[:, :h, :w].clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
    kept = _kept_grid(result.keep_idx, gh, gw)
    heat = result.scores if result.scores is not None else result.importance
    heat_np = None if heat is None else heat[0].float().view(gh, gw).cpu().numpy()
    frame = overlay_tokens(pixels, kept, heat_np, cfg.patch_size)
    if result.detections is not None and len(result.detections[0].boxes):
        frame = _draw_detections(frame, result.detections[0], cfg)
    caption = f"t={result.t} {result.kind.value.upper()} kept {result.num_kept}/{cfg.num_tokens}  {gmacs:.3g} GMACs"
    if weights == "random":
        caption += "  [random weights]"
    return add_caption(frame, caption)


def _draw_detections(frame: np.ndarray, det: Any, cfg: ViTDetConfig, min_score: float = 0.3) -> np.ndarray:
    """Boxes (input-pixel coordinates, as the frame) with class names and scores; weak detections are left out."""
    from rgtp.viz import draw_boxes

    keep = det.scores >= min_score
    labels = det.labels[keep].cpu().tolist()
    known = class_names(cfg)
    names = [known[c] if known else f"class {c}" for c in labels]
    boxes = det.boxes[keep].float().cpu().numpy()
    return draw_boxes(frame, boxes, names, det.scores[keep].float().cpu().numpy())


def class_names(cfg: ViTDetConfig | ViViTConfig) -> tuple[str, ...] | None:
    """Names of a model's classes, recognised by their count (VID, the benchmark sets, Kinetics); None if unknown."""
    from rgtp.data.kinetics import KINETICS400_CLASSES
    from rgtp.data.motions import MOTION_CLASSES
    from rgtp.data.shapes import SHAPES_CLASSES
    from rgtp.data.vid import VID_CLASSES

    if isinstance(cfg, ViTDetConfig):
        count = cfg.head.num_classes if cfg.head is not None else 0
        names = {len(VID_CLASSES): VID_CLASSES, len(SHAPES_CLASSES): SHAPES_CLASSES, 1: ("person",)}
    else:
        count = cfg.num_classes
        names = {len(KINETICS400_CLASSES): tuple(KINETICS400_CLASSES), len(MOTION_CLASSES): MOTION_CLASSES}
    return names.get(count)


def _kept_grid(keep_idx: Tensor | None, gh: int, gw: int) -> np.ndarray:
    kept = np.ones(gh * gw, dtype=bool)
    if keep_idx is not None:
        kept[:] = False
        kept[keep_idx[0].cpu().numpy()] = True
    return kept.reshape(gh, gw)


# ---------------------------------------------------------------------------------------------------------------------
# ViViT


def _segments(frames: Iterable[np.ndarray], length: int) -> Iterator[list[np.ndarray]]:
    """Consecutive segments of ``length`` frames (the last one may be shorter)."""
    segment: list[np.ndarray] = []
    for frame in frames:
        segment.append(frame)
        if len(segment) == length:
            yield segment
            segment = []
    if segment:
        yield segment


def _run_vivit(
    preset: Preset,
    model: torch.nn.Module,
    frames: Iterable[np.ndarray],
    accounting: Accounting,
    writer: VideoWriter | None,
    summary: RunSummary,
    segment_frames: int,
) -> Iterator[dict[str, Any]]:
    assert isinstance(model, ViViT)
    cfg = model.cfg
    runtime = build_runner(preset, model)
    device = next(model.parameters()).device
    views = preset.views[0] * preset.views[1]
    names = class_names(cfg)
    step_gmacs = (accounting.clip_tmacs or 0.0) * 1e3 / (views * cfg.num_steps)  # mean per step and view
    for c, raw in enumerate(_segments(frames, segment_frames)):
        clip = make_views(np.stack(raw), cfg.num_frames, preset.temporal_stride, cfg.img_size, preset.views).to(device)
        with stopwatch(device) as elapsed:
            result = run_clip(runtime, clip)
        logits, steps = result.logits, result.steps
        ms = elapsed[0] * 1e3
        per_step_ms = ms / (cfg.num_steps * views)
        kinds = [s.kind.value for s in steps]
        kept = [s.num_kept for s in steps]
        for t in range(cfg.num_steps):
            yield {
                "clip": c,
                "step": t,
                "frame": c * len(raw) + t * cfg.tubelet[0] * preset.temporal_stride,
                "kind": kinds[t],
                "kept": kept[t],
                "tokens": cfg.num_tokens,
                "gmacs": round(step_gmacs, 4),
                "ms": round(per_step_ms, 2),
                "weights": summary.weights,
            }
        probs = predict_views(logits, views)[0]
        top = probs.topk(min(5, probs.numel()))
        yield {
            "clip_summary": {
                "clip": c,
                "top5": [[int(i), round(float(p), 4)] for p, i in zip(*top, strict=True)],
                "top5_names": [names[int(i)] for i in top.indices] if names else None,
                "tmacs_per_clip_all_views": accounting.clip_tmacs,
                "ms_one_view": round(ms, 1),
            }
        }
        if writer is not None:
            for frame in _annotate_vivit(clip, steps, cfg.tubelet, cfg.grid, summary.weights):
                writer.write(frame)


def _annotate_vivit(
    clip: Tensor, steps: list[Any], tubelet: tuple[int, int, int], grid: tuple[int, int], weights: str
) -> Iterator[np.ndarray]:
    from rgtp.viz import add_caption, overlay_tokens

    pixels = ((clip[0] * VIVIT_STD + VIVIT_MEAN) * 255).clamp(0, 255).byte().permute(1, 2, 3, 0).cpu().numpy()
    for i, frame in enumerate(pixels):  # (T, H, W, 3)
        t = i // tubelet[0]
        step = steps[t] if steps else None
        kept = _kept_grid(None if step is None else step.keep_idx, *grid)
        heat = None
        src = None if step is None else (step.scores if step.scores is not None else step.importance)
        if src is not None:
            heat = src[0].float().view(*grid).cpu().numpy()
        text = f"step {t} {'FULL' if step is None else step.kind.value.upper()} kept {kept.sum()}/{kept.size}"
        if weights == "random":
            text += " [random weights]"
        yield add_caption(overlay_tokens(np.ascontiguousarray(frame), kept, heat, tubelet[1]), text)
