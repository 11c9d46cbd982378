"""ImageNet VID evaluation of ViTDet presets, the paper's protocol (method §12.1).

Every sequence runs frame by frame (batch 1, in order) from a fresh stream state; detections are mapped back to the
original frame size and scored with COCO-style mAP@0.5 over the whole split. Alongside accuracy it reports, per
frame: the paper's compute (backbone + RGTP overhead, MACs), the whole detector's compute (plus the neck and the
detection head, counted as they run), wall-clock speed of the model step, and the FULL-frame fraction.

Finished sequences are logged as they complete (:class:`~rgtp.evaluation.records.ResultLog`), so an interrupted run
resumes where it stopped. Under ``torchrun`` every process takes every world-th sequence and the first process
scores the union.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgtp.accounting import Accounting, count_preset
from rgtp.build import ModelPool, build_runner
from rgtp.config import Preset, ViTDetConfig, to_dict
from rgtp.data.vid import VIDDataset, VIDFrame, VIDSequence, load_frame
from rgtp.evaluation.dist import DistInfo, barrier, setup, shard
from rgtp.evaluation.records import ResultLog, environment, write_results
from rgtp.flops import MacCounter
from rgtp.metrics import check_backend, coco_map
from rgtp.models.vitdet import Detections, ViTDet, preprocess_frame
from rgtp.progress import progress_bar
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.driver import stream

__all__ = ["VIDResult", "evaluate_vid", "results_table"]

logger = logging.getLogger(__name__)


@dataclass
class VIDResult:
    """One preset on one split. Compute in GMACs (multiply-accumulates) per frame, averaged over the frames run."""

    preset: str
    weights: str
    split: str
    sequences: int
    frames: int
    map50: float  # COCO-style AP@0.5 averaged over classes, in percent (the paper's metric)
    map: float  # AP@[0.5:0.95], percent
    per_class_ap50: dict[str, float | None]
    gmacs_per_frame: float  # backbone + RGTP overhead: the paper's count
    detector_gmacs_per_frame: float  # plus the neck and the detection head
    fps: float  # frames per second of the model step (backbone, RGTP, neck, head), batch 1
    full_fraction: float  # share of FULL frames
    paper: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _CountingHead:
    """Wraps the detection head and counts its MACs when asked to (``count = True``) on the next call.

    The head's cost varies only with the number of proposals that survive the RPN (at most 300, nearly always 300), so
    counting the first frame of every sequence is enough, and keeps the counter's dispatch overhead out of the timings
    of the other frames.
    """

    def __init__(self, model: ViTDet) -> None:
        self.model = model
        self.count = True
        self.last_gmacs = 0.0

    def __call__(self, features: dict[str, torch.Tensor]) -> list[Detections]:
        if not self.count:
            return self.model.detect(features)
        with MacCounter() as counter:
            out = self.model.detect(features)
        self.last_gmacs, self.count = counter.gmacs(None), False
        return out


def _neck_gmacs(cfg: ViTDetConfig) -> float:
    """The pyramid's MACs for one frame (data-independent; counted on meta tensors)."""
    with torch.device("meta"):
        model = ViTDet(replace(cfg, head=None))
        tokens = torch.empty(1, cfg.num_tokens, cfg.embed_dim)
    with MacCounter() as counter:
        model.features(tokens)
    return counter.gmacs(None)


def _frames(sequence: VIDSequence, size: int, device: torch.device) -> Iterator[tuple[VIDFrame, torch.Tensor, float]]:
    """Decoded, preprocessed frames of a sequence; the next frame is decoded in a thread while the model runs."""

    def prepare(frame: VIDFrame) -> tuple[torch.Tensor, float]:
        return preprocess_frame(torch.from_numpy(load_frame(frame)), size)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, sequence.frames[0]) if sequence.frames else None
        for i, frame in enumerate(sequence.frames):
            assert pending is not None
            image, scale = pending.result()
            if i + 1 < len(sequence.frames):
                pending = pool.submit(prepare, sequence.frames[i + 1])
            yield frame, image.to(device), scale


def _run_sequence(
    runtime: Any,
    model: ViTDet,
    head: _CountingHead,
    sequence: VIDSequence,
    accounting: Accounting,
    neck_gmacs: float,
    device: torch.device,
    progress: Any,
) -> dict[str, Any]:
    """Run one sequence from a fresh state; returns its log record (detections in original-frame pixels)."""
    head.count = True
    frames, scales = [], []

    def images() -> Iterator[torch.Tensor]:
        for frame, image, scale in _frames(sequence, model.cfg.img_size, device):
            frames.append({"index": frame.index})
            scales.append(scale)
            yield image[None]

    for tick in stream(runtime, images(), timed=True):
        result, record, scale = tick.output, frames[tick.index], scales[tick.index]
        det = result.detections[0]
        gmacs = accounting.step_gmacs(result.kind)
        record.update(
            {
                "kind": result.kind.value,
                "kept": result.num_kept,
                "seconds": round(tick.seconds or 0.0, 5),
                "gmacs": round(gmacs, 4),
                "detector_gmacs": round(gmacs + neck_gmacs + head.last_gmacs, 4),
                "boxes": (det.boxes.float() / scale).cpu().numpy().round(2).tolist(),
                "scores": det.scores.float().cpu().numpy().round(5).tolist(),
                "labels": det.labels.cpu().tolist(),
            }
        )
        progress.update(1)
    return {"frames": frames}


def _header(preset: Preset, weights: str, dataset: VIDDataset, split: str) -> dict[str, Any]:
    return {
        "task": "vitdet-vid",
        "preset": to_dict(preset),
        "weights": weights if weights == "random" else str(Path(weights).resolve()),
        "data": str(dataset.root.resolve()),
        "split": split,
    }


def evaluate_vid(
    dataset: VIDDataset,
    presets: Sequence[Preset],
    weights: str | Path | None,
    out_dir: str | Path,
    split: str = "val",
    device: str = "cpu",
    progress: bool = True,
) -> list[VIDResult]:
    """Evaluate each preset on ``dataset``; returns the results (on the first process; others return []).

    Weights are read once; presets that share a model configuration share the model. Predictions go to
    ``out_dir/<preset>/part-*.jsonl`` as sequences finish and results to ``out_dir/results.json``.
    """
    info, device = setup(device)
    check_backend()  # fail now, not after hours of inference, if no mAP backend is installed
    if not presets:
        raise ValueError("no presets to evaluate")
    for p in presets:
        if not isinstance(p.model, ViTDetConfig) or p.model.head is None:
            raise ValueError(f"preset {p.name} is not a ViTDet detector (VID evaluation needs a ViTDet with a head)")
        if p.model.head.num_classes != len(dataset.classes):
            raise ValueError(
                f"preset {p.name} predicts {p.model.head.num_classes} classes but the dataset has "
                f"{len(dataset.classes)}"
            )
    out_dir = Path(out_dir)
    weights_name = "random" if weights is None else str(weights)
    if weights is None:
        logger.warning("no weights given: evaluating RANDOM weights (mAP is meaningless; compute and speed are real)")
    models = ModelPool(weights, device)
    results = []
    for preset in presets:
        model = models.get(preset)
        assert isinstance(model, ViTDet)
        result = _evaluate_preset(dataset, preset, model, weights_name, out_dir, split, info, progress)
        if result is not None:
            results.append(result)
            write_results(out_dir / "results.json", results)
    return results


def _evaluate_preset(
    dataset: VIDDataset,
    preset: Preset,
    model: ViTDet,
    weights: str,
    out_dir: Path,
    split: str,
    info: DistInfo,
    progress: bool,
) -> VIDResult | None:
    device = next(model.parameters()).device
    log = ResultLog(out_dir / preset.name, _header(preset, weights, dataset, split), info.rank)
    done = log.keys()
    mine = [dataset.sequences[i] for i in shard(len(dataset.sequences), info)]
    todo = [s for s in mine if s.name not in done]
    if len(todo) < len(mine):
        logger.info("%s: resuming, %d of %d sequences already done", preset.name, len(mine) - len(todo), len(mine))
    accounting = count_preset(preset)
    head = _CountingHead(model)
    runtime = build_runner(preset, model)
    runtime.head = head
    neck = _neck_gmacs(preset.model)  # type: ignore[arg-type]
    bar = progress_bar(sum(len(s.frames) for s in todo), preset.name, progress and info.main)
    try:
        for sequence in todo:
            log.append(sequence.name, _run_sequence(runtime, model, head, sequence, accounting, neck, device, bar))
    finally:
        bar.close()
    barrier()
    if not info.main:
        return None
    return _score(dataset, preset, weights, split, log)


def _score(dataset: VIDDataset, preset: Preset, weights: str, split: str, log: ResultLog) -> VIDResult:
    """mAP and per-frame figures of a finished preset; records are read one at a time and kept as arrays."""
    by_name: dict[str, tuple[list[Any], list[dict[str, Any]]]] = {}
    for key, record in log.records():
        preds, stats = [], []
        for out in record["frames"]:
            boxes = np.asarray(out.pop("boxes"), dtype=np.float32).reshape(-1, 4)
            scores = np.asarray(out.pop("scores"), dtype=np.float32)
            preds.append((boxes, scores, np.asarray(out.pop("labels"), dtype=np.int64)))
            stats.append(out)
        by_name[key] = (preds, stats)
    gts, preds, frames = [], [], []
    for sequence in dataset.sequences:
        if sequence.name not in by_name:
            raise RuntimeError(f"sequence {sequence.name} has no results (a process failed?)")
        seq_preds, seq_stats = by_name.pop(sequence.name)
        if len(seq_preds) != len(sequence.frames):
            raise RuntimeError(f"sequence {sequence.name}: {len(seq_preds)} results for {len(sequence.frames)} frames")
        gts.extend((frame.boxes, frame.labels) for frame in sequence.frames)
        preds.extend(seq_preds)
        frames.extend(seq_stats)
    metrics = coco_map(gts, preds, dataset.classes)
    n = len(frames)
    seconds = sum(f["seconds"] for f in frames)
    from rgtp.presets import PAPER

    reported = PAPER.get(preset.name)
    return VIDResult(
        preset=preset.name,
        weights=weights,
        split=split,
        sequences=len(dataset.sequences),
        frames=n,
        map50=100 * metrics.map50,
        map=100 * metrics.map,
        per_class_ap50={k: None if v is None else 100 * v for k, v in metrics.per_class_ap50.items()},
        gmacs_per_frame=sum(f["gmacs"] for f in frames) / max(n, 1),
        detector_gmacs_per_frame=sum(f["detector_gmacs"] for f in frames) / max(n, 1),
        fps=n / seconds if seconds > 0 else 0.0,
        full_fraction=sum(f["kind"] == FrameKind.FULL.value for f in frames) / max(n, 1),
        paper={} if reported is None else {"map50": reported.accuracy, "avg_gmacs": reported.avg_gmacs},
        environment=environment(),
    )


def results_table(results: Sequence[VIDResult]) -> str:
    """A Markdown table: accuracy and compute of each preset next to the paper's figures."""
    rows = [
        "| preset | mAP50 | paper mAP50 | GMACs/frame (backbone+RGTP) | paper | detector GMACs/frame | fps | FULL % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper_map = r.paper.get("map50")
        paper_gmacs = r.paper.get("avg_gmacs")
        rows.append(
            f"| {r.preset} | {r.map50:.2f} | {'' if paper_map is None else f'{paper_map:.2f}'} "
            f"| {r.gmacs_per_frame:.2f} | {'' if paper_gmacs is None else f'{paper_gmacs:.1f}'} "
            f"| {r.detector_gmacs_per_frame:.2f} | {r.fps:.2f} | {100 * r.full_fraction:.1f} |"
        )
    return "\n".join(rows)
