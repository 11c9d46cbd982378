"""Accuracy, compute, state memory and wall-clock of benchmark variants on one test set.

Accuracy and compute come from one pass over the whole test set under :class:`~rgtp.flops.MacCounter` (so compute is
what actually ran, whatever the method). Wall-clock comes from a separate pass without the counter, on the first
frames (clips) only, with the variants interleaved round by round so that machine noise hits them alike.

Every finished variant is appended to a :class:`~rgtp.evaluation.records.ResultLog`, so an interrupted benchmark
resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rgtp.config import ConfigError, Preset, from_dict
from rgtp.data.action import ActionDataset, preset_views
from rgtp.data.detection import DetectionSet
from rgtp.evaluation.records import ResultLog
from rgtp.flops import PAPER_SCOPES, MacCounter
from rgtp.lab.bench.methods import Variant, build_variant
from rgtp.metrics import coco_map
from rgtp.models.vitdet import ViTDet, preprocess_frame
from rgtp.models.vivit import ViViT, predict_views
from rgtp.progress import progress_bar
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.driver import run_clip, stream
from rgtp.timing import Case, device_sync, measure_interleaved, stopwatch, summarize

__all__ = [
    "ClipSet",
    "FrameSet",
    "dense_reference",
    "evaluate_action",
    "evaluate_detection",
    "prepare_clips",
    "prepare_frames",
]

logger = logging.getLogger(__name__)

DETECTOR_SCOPES = ("backbone", "rgtp", "neck", "head")


# ---------------------------------------------------------------------------------------------------------------------
# Detection


@dataclass
class FrameSet:
    """A detection test set, preprocessed once for every variant."""

    classes: tuple[str, ...]
    sequences: list[list[tuple[Tensor, float]]]  # per sequence, per frame: (3, S, S) input and its resize scale
    ground_truth: list[tuple[np.ndarray, np.ndarray]]  # per frame, in sequence order: boxes (M, 4), labels (M,)

    @property
    def num_frames(self) -> int:
        return sum(len(s) for s in self.sequences)


def prepare_frames(data: DetectionSet, size: int, max_frames: int | None = None) -> FrameSet:
    """Preprocess every frame (resize, normalise, pad to ``size``); at most ``max_frames`` per sequence."""
    sequences, truth = [], []
    for seq in data:
        stop = len(seq) if max_frames is None else min(max_frames, len(seq))
        sequences.append([preprocess_frame(torch.from_numpy(seq.frames[t]), size) for t in range(stop)])
        truth += [(seq.boxes[t], seq.labels[t]) for t in range(stop)]
    return FrameSet(data.classes, sequences, truth)


def _detect_all(variant: Variant, model: ViTDet, frames: FrameSet, bar: Any) -> dict[str, Any]:
    runner = build_variant(variant, model)
    predictions, kept, state_bytes, full = [], [], 0, 0
    with MacCounter() as counter:
        for sequence in frames.sequences:
            for tick in stream(runner, (image[None] for image, _ in sequence)):
                det, scale = tick.output.detections[0], sequence[tick.index][1]
                boxes = (det.boxes.float() / scale).numpy()
                predictions.append((boxes, det.scores.float().numpy(), det.labels.numpy()))
                kept.append(tick.output.num_kept)
                full += tick.output.kind is FrameKind.FULL
                state_bytes = max(state_bytes, tick.state_nbytes)
                bar.update(1)
    n = frames.num_frames
    metrics = coco_map(frames.ground_truth, predictions, frames.classes)
    return {
        **variant.describe(),
        "accuracy": round(100.0 * metrics.map50, 3),
        "map": round(100.0 * metrics.map, 3),
        "gmacs": counter.macs(PAPER_SCOPES) / n / 1e9,
        "detector_gmacs": counter.macs(DETECTOR_SCOPES) / n / 1e9,
        "kept_mean": float(np.mean(kept)),
        "full_share": full / n,  # frames processed in full (every sequence's first included)
        "state_mb": state_bytes / 2**20,
        "frames": n,
    }


def dense_reference(model: ViTDet, frames: FrameSet, score: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dense model's detections scoring ``score`` or more on every frame, in sequence order, in the frames'
    pixels: (boxes (M, 4), labels (M,)) per frame, the reference of a label-free agreement check."""
    runner = build_variant(Variant("dense", "", None), model)
    reference = []
    with torch.no_grad():
        for sequence in frames.sequences:
            for tick in stream(runner, (image[None] for image, _ in sequence)):
                det, scale = tick.output.detections[0], sequence[tick.index][1]
                sure = det.scores >= score
                reference.append(((det.boxes[sure].float() / scale).numpy(), det.labels[sure].numpy()))
    return reference


def _play_frames(variant: Variant, model: ViTDet, frames: FrameSet, count: int) -> list[float]:
    """Run the first ``count`` frames of the first sequence(s), each sequence from a fresh state (a timing
    workload); returns each frame's milliseconds (device synchronised around every step)."""
    runner = build_variant(variant, model)
    ms: list[float] = []
    for sequence in frames.sequences:
        images = (image[None] for image, _ in sequence[: count - len(ms)])
        ms += [1e3 * tick.seconds for tick in stream(runner, images, timed=True)]
        if len(ms) >= count:
            break
    return ms


def evaluate_detection(
    model: ViTDet,
    variants: Sequence[Variant],
    frames: FrameSet,
    log: ResultLog,
    timing_frames: int = 48,
    timing_rounds: int = 3,
    progress: bool = True,
    retime: bool = False,
) -> list[dict[str, Any]]:
    """Run every variant over the test frames; returns one record per variant (resumed ones included;
    ``retime``: measure the timing rounds again even where they are logged)."""
    return _evaluate(
        variants,
        log,
        lambda v, bar: _detect_all(v, model, frames, bar),
        lambda v: _play_frames(v, model, frames, timing_frames),
        frames.num_frames,
        timing_rounds if timing_frames > 0 else 0,
        "frame",
        progress,
        retime,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Action recognition


@dataclass
class ClipSet:
    """An action test set, its views computed once for every variant."""

    views: list[Tensor]  # per clip: (views, 3, T, crop, crop), normalised
    labels: list[int]
    num_views: int

    def __len__(self) -> int:
        return len(self.views)

    def batch(self, start: int, stop: int) -> Tensor:
        """Views of clips [start, stop): (clips * views, 3, T, crop, crop)."""
        return torch.cat(self.views[start:stop])


def prepare_clips(data: ActionDataset, preset: Preset, max_clips: int | None = None) -> ClipSet:
    """Decode every clip and make the preset's views (at most ``max_clips`` clips)."""
    clips = list(data)[:max_clips] if max_clips is not None else list(data)
    views = [preset_views(data.load(c), preset) for c in clips]
    return ClipSet(views, [c.label for c in clips], preset.views[0] * preset.views[1])


def _classify_all(variant: Variant, model: ViViT, clips: ClipSet, batch: int, bar: Any) -> dict[str, Any]:
    runner = build_variant(variant, model)
    correct, state_bytes = 0, 0
    with MacCounter() as counter:
        for start in range(0, len(clips), batch):
            x = clips.batch(start, start + batch)  # (clips * views, 3, T, H, W)
            out = run_clip(runner, x)  # logits (clips * views, classes + nouns)
            probs = predict_views(model.split(out.logits)[0], clips.num_views)  # (clips, classes)
            labels = torch.tensor(clips.labels[start : start + batch])
            correct += int((probs.argmax(-1) == labels).sum())
            state_bytes = max(state_bytes, out.state_nbytes // x.shape[0])  # per stream (one view)
            bar.update(probs.shape[0])
    n = len(clips)
    return {
        **variant.describe(),
        "accuracy": round(100.0 * correct / n, 3),
        "gmacs": counter.macs(PAPER_SCOPES) / n / 1e9,
        "state_mb": state_bytes / 2**20,
        "clips": n,
    }


def _play_clips(variant: Variant, model: ViViT, clips: ClipSet, count: int) -> list[float]:
    """Run the first ``count`` clips (all their views), one clip at a time as a stream would (a timing workload);
    returns each clip's milliseconds."""
    runner = build_variant(variant, model)
    inputs = [clips.batch(i, i + 1) for i in range(min(count, len(clips)))]
    ms = []
    for x in inputs:
        with stopwatch(x.device) as elapsed:
            run_clip(runner, x)
        ms.append(1e3 * elapsed[0])
    return ms


def evaluate_action(
    model: ViViT,
    variants: Sequence[Variant],
    clips: ClipSet,
    log: ResultLog,
    batch: int = 25,
    timing_clips: int = 16,
    timing_rounds: int = 3,
    progress: bool = True,
    retime: bool = False,
) -> list[dict[str, Any]]:
    """Run every variant over the test clips; returns one record per variant (resumed ones included;
    ``retime``: measure the timing rounds again even where they are logged)."""
    return _evaluate(
        variants,
        log,
        lambda v, bar: _classify_all(v, model, clips, batch, bar),
        lambda v: _play_clips(v, model, clips, timing_clips),
        len(clips),
        timing_rounds if timing_clips > 0 else 0,
        "clip",
        progress,
        retime,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Shared driver


def _evaluate(
    variants: Sequence[Variant],
    log: ResultLog,
    run: Any,
    play: Any,
    units: int,
    rounds: int,
    unit: str,
    progress: bool,
    retime: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy pass per variant (skipping finished ones), then interleaved timing rounds (also logged; a round is
    measured again when a variant in it was evaluated again, or with ``retime``)."""
    done = log.done()
    evaluated = {v.name for v in variants} if retime else set()
    records: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for variant in variants:
            key = f"eval/{variant.name}"
            if key in done and same_config(done[key].get("config"), variant):
                records[variant.name] = done[key]
                continue
            bar = progress_bar(units, variant.name, progress, unit)
            try:
                record = run(variant, bar)
            finally:
                bar.close()
            log.append(key, record)
            records[variant.name] = record
            evaluated.add(variant.name)
            logger.info("%s: accuracy %.2f, %.4f GMACs per %s", variant.name, record["accuracy"], record["gmacs"], unit)
        timings = _timings(variants, log, done, play, rounds, evaluated)
    for name, (ms, p50, p95) in timings.items():
        records[name].update({f"ms_per_{unit}": ms, f"p50_ms_per_{unit}": p50, f"p95_ms_per_{unit}": p95})
    return [records[v.name] for v in variants]


def same_config(logged: dict[str, Any] | None, variant: Variant) -> bool:
    """Whether a logged record's config is the variant's: read back with today's config classes, so an option
    added since (absent from the log, at its default) does not invalidate finished results."""
    if variant.config is None or logged is None:
        return variant.config is None and logged is None
    cls = type(variant.config)
    if logged.get("type") != cls.__name__:
        return False
    try:
        return from_dict(cls, {k: v for k, v in logged.items() if k != "type"}) == variant.config
    except ConfigError:
        return False


def _timings(
    variants: Sequence[Variant], log: ResultLog, done: dict[str, Any], play: Any, rounds: int, stale: set[str]
) -> dict[str, tuple[float, float, float]]:
    """Per variant: (median over rounds of its mean time per unit, p50 and p95 of its per-unit times over all
    rounds). Every round times all variants in turn with :func:`rgtp.timing.measure_interleaved` (device
    synchronised; one warm-up round first) and is logged with each unit's time; logged rounds are reused unless
    ``stale`` names a variant (evaluated again, or every variant to re-time)."""
    if rounds <= 0:
        return {}
    means: dict[str, list[float]] = {v.name: [] for v in variants}
    each: dict[str, list[float]] = {v.name: [] for v in variants}
    units: dict[str, list[float]] = {}

    def case(v: Variant) -> Case:
        return Case(v.name, lambda _: units.__setitem__(v.name, play(v)))

    warmup = 1
    for r in range(rounds):
        key = f"time/{r}"
        if key in done and set(done[key].get("unit_ms", {})) >= set(means) and not stale:
            row, unit_ms = done[key]["ms"], done[key]["unit_ms"]
        else:
            taken = measure_interleaved([case(v) for v in variants], warmup, 1, device_sync())
            row = {name: ms[0] / max(len(units[name]), 1) for name, ms in taken.items()}  # per frame or clip
            unit_ms = {name: [round(t, 3) for t in units[name]] for name in taken}
            log.append(key, {"ms": row, "unit_ms": unit_ms})
            warmup = 0
        for name in means:
            means[name].append(row[name])
            each[name] += unit_ms[name]
    return {
        name: (
            summarize(means[name]).median_ms,
            float(np.percentile(each[name], 50)),
            float(np.percentile(each[name], 95)),
        )
        for name in means
    }
