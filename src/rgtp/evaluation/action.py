"""Action-recognition evaluation of ViViT presets: Kinetics-400 and EPIC-KITCHENS-100, the paper's protocol.

Each clip is decoded once, cut into the preset's views (method §12.2: 4 temporal x 3 spatial, spatial-major), and the
views run as one batch; the prediction is the softmax of the view-averaged logits (per head when the model also has
EPIC's noun head). Several presets are evaluated in one pass: a clip is decoded once for all of them, and presets
that share a model configuration share the model (weights are read once).

Reported per preset: top-1 / top-5 accuracy (EPIC: verbs; with a noun head also noun and action top-1, action =
verb and noun both right), TMACs per clip from the package's counter (the paper's count: spatial and temporal
encoders and RGTP overheads; embeddings and classifier excluded), and clips per second of the model step (decoding
and view cutting are timed separately). Clips that cannot be read are listed with their error, never dropped
silently; they are retried when the run resumes.

Finished clips are logged as they complete (:class:`~rgtp.evaluation.records.ResultLog`), so an interrupted run
resumes where it stopped. Under ``torchrun`` every process takes every world-th clip and the first one scores all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgtp.accounting import count_preset
from rgtp.build import ModelPool, build_runner, with_weights_nouns
from rgtp.config import Preset, ViViTConfig, to_dict
from rgtp.data.action import ActionClip, ActionDataError, ActionDataset, preset_views
from rgtp.evaluation.dist import barrier, setup, shard
from rgtp.evaluation.records import ResultLog, environment, write_results
from rgtp.models.vivit import ViViT
from rgtp.progress import progress_bar
from rgtp.runtime.driver import run_clip
from rgtp.timing import stopwatch

__all__ = ["ActionResult", "action_table", "evaluate_action"]

logger = logging.getLogger(__name__)

TOPK = 5


@dataclass
class ActionResult:
    """One preset on one split. Accuracies in percent over the clips that could be read."""

    preset: str
    weights: str
    split: str
    clips: int  # evaluated
    failed: int  # could not be read (listed in failed_ids with the reason)
    top1: float
    top5: float
    tmacs_per_clip: float  # all views, spatial + temporal encoders + RGTP overheads (the paper's count)
    clips_per_s: float  # model step only (all views of a clip in one batch)
    decode_s_per_clip: float  # decoding and view cutting, for reference
    noun_top1: float | None = None
    noun_top5: float | None = None
    action_top1: float | None = None
    failed_ids: dict[str, str] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _header(task: str, preset: Preset, weights: str, dataset: ActionDataset, split: str) -> dict[str, Any]:
    """What identifies a run: not which clips it covers, so that a run of the first N clips resumes into one of
    more (the results are keyed by clip, and only the dataset's clips are scored)."""
    return {
        "task": task,
        "preset": to_dict(preset),
        "weights": weights if weights == "random" else str(Path(weights).resolve()),
        "dataset": dataset.describe(),
        "split": split,
    }


def _view_key(preset: Preset) -> tuple[Any, ...]:
    cfg = preset.model
    assert isinstance(cfg, ViViTConfig)
    return (cfg.num_frames, preset.temporal_stride, cfg.img_size, preset.views)


def _topk(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """Top-k classes and probabilities of view-averaged logits (views, K)."""
    prob = logits.float().mean(dim=0).softmax(dim=-1)  # (views, K) -> (K,)
    p, i = prob.topk(min(TOPK, prob.numel()))
    return i.tolist(), [round(v, 6) for v in p.tolist()]


def _classify(runtime: Any, model: ViViT, views: torch.Tensor, clip: ActionClip) -> dict[str, Any]:
    """Run one clip's views (one batch); its log record."""
    device = next(model.parameters()).device
    views = views.to(device)
    with stopwatch(device) as elapsed:
        logits = run_clip(runtime, views).logits  # (views, classes [+ nouns])
    seconds = elapsed[0]
    verb, noun = model.split(logits)
    top, prob = _topk(verb)
    record: dict[str, Any] = {"label": clip.label, "top": top, "prob": prob, "seconds": round(seconds, 5)}
    if noun is not None:
        record["noun"] = clip.noun
        record["noun_top"], record["noun_prob"] = _topk(noun)
    return record


def evaluate_action(
    task: str,
    dataset: ActionDataset,
    presets: Sequence[Preset],
    weights: str | Path | None,
    out_dir: str | Path,
    split: str = "val",
    device: str = "cpu",
    progress: bool = True,
    prefetch: bool = True,
) -> list[ActionResult]:
    """Evaluate each preset on ``dataset``; returns the results (on the first process; others return []).

    Predictions go to ``out_dir/<preset>/part-*.jsonl`` as clips finish and results to ``out_dir/results.json``.
    With ``prefetch`` the next clip is decoded in a thread while the model runs (turn it off to time the model
    step alone on a CPU).
    """
    info, device = setup(device)
    if not presets:
        raise ValueError("no presets to evaluate")
    models = ModelPool(weights, device)
    presets = [with_weights_nouns(p, weights) for p in presets]
    for p in presets:
        if not isinstance(p.model, ViViTConfig):
            raise ValueError(f"preset {p.name} is not a ViViT model ({task} needs one)")
        if p.model.num_classes != len(dataset.classes):
            raise ValueError(
                f"preset {p.name} predicts {p.model.num_classes} classes but the dataset has {len(dataset.classes)}"
            )
    weights_name = "random" if weights is None else str(weights)
    if weights is None:
        logger.warning("no weights given: evaluating RANDOM weights (accuracy is meaningless; compute is real)")
    out_dir = Path(out_dir)
    logs = {
        p.name: ResultLog(out_dir / p.name, _header(task, p, weights_name, dataset, split), info.rank) for p in presets
    }
    done = {name: _finished(log) for name, log in logs.items()}
    runtimes = {p.name: build_runner(p, models.get(p)) for p in presets}
    mine = [dataset[i] for i in shard(len(dataset), info)]
    todo = [c for c in mine if any(c.id not in done[p.name] for p in presets)]
    if len(todo) < len(mine):
        logger.info("resuming: %d of %d clips already done for every preset", len(mine) - len(todo), len(mine))
    bar = progress_bar(
        len(todo), f"{task} ({len(presets)} preset{'s' * (len(presets) > 1)})", progress and info.main, "clip"
    )
    try:
        for clip, loaded in zip(todo, _decoded(dataset, todo, prefetch), strict=True):
            _run_clip(clip, loaded, presets, runtimes, models, logs, done)
            bar.update(1)
    finally:
        bar.close()
    barrier()
    if not info.main:
        return []
    results = []
    for p in presets:
        results.append(_score(dataset, p, weights_name, split, logs[p.name]))
        write_results(out_dir / "results.json", results)
    return results


def _finished(log: ResultLog) -> set[str]:
    """Clips with a result; failed clips are not finished (they are retried on resume)."""
    return {key for key, record in log.records() if "error" not in record}


_Loaded = tuple[np.ndarray | None, str | None, float]  # frames or None, the error, decoding seconds


def _load(dataset: ActionDataset, clip: ActionClip) -> _Loaded:
    start = time.perf_counter()
    try:
        return dataset.load(clip), None, time.perf_counter() - start
    except ActionDataError as exc:
        return None, str(exc), time.perf_counter() - start


def _decoded(dataset: ActionDataset, clips: Sequence[ActionClip], prefetch: bool) -> Iterator[_Loaded]:
    """Each clip decoded, in order; with ``prefetch`` the next one is decoded in a thread meanwhile."""
    if not prefetch:
        yield from (_load(dataset, clip) for clip in clips)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, dataset, clips[0]) if clips else None
        for i in range(len(clips)):
            assert pending is not None
            loaded = pending.result()
            if i + 1 < len(clips):
                pending = pool.submit(_load, dataset, clips[i + 1])
            yield loaded


def _run_clip(
    clip: ActionClip,
    loaded: _Loaded,
    presets: Sequence[Preset],
    runtimes: dict[str, Any],
    models: ModelPool,
    logs: dict[str, ResultLog],
    done: dict[str, set[str]],
) -> None:
    pending = [p for p in presets if clip.id not in done[p.name]]
    video, error, decode = loaded
    if video is None:
        logger.warning("%s", error)  # the message names the clip
        for p in pending:
            logs[p.name].append(clip.id, {"error": error})
        return
    views: dict[tuple[Any, ...], torch.Tensor] = {}
    for p in pending:
        key = _view_key(p)
        if key not in views:
            t0 = time.perf_counter()
            views[key] = preset_views(video, p)  # (views, 3, frames, crop, crop)
            decode += time.perf_counter() - t0
        model = models.get(p)
        assert isinstance(model, ViViT)
        record = _classify(runtimes[p.name], model, views[key], clip)
        record["decode_seconds"] = round(decode, 5)
        logs[p.name].append(clip.id, record)


def _accuracy(records: list[dict[str, Any]], top: str, label: str, k: int) -> float:
    return 100.0 * sum(r[label] in r[top][:k] for r in records) / max(len(records), 1)


def _score(dataset: ActionDataset, preset: Preset, weights: str, split: str, log: ResultLog) -> ActionResult:
    ok: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for key, record in log.records():
        if "error" in record:
            errors[key] = record["error"]
        else:
            ok[key] = record
    records, failed = [], {}
    for clip in dataset:
        if clip.id in ok:
            records.append(ok[clip.id])
        elif clip.id in errors:
            failed[clip.id] = errors[clip.id]
        else:
            raise RuntimeError(f"clip {clip.id} has no result (a process failed?)")
    if failed and not records:
        where = "; ".join(dataset.searched()) or "(the reader names no location)"
        raise ActionDataError(
            f"none of the {len(failed)} clips of split {split!r} could be read (media searched in: {where}); "
            f"the first error: {next(iter(failed.values()))}"
        )
    if failed:
        logger.warning("%s: %d clip(s) could not be read: %s", preset.name, len(failed), ", ".join(list(failed)[:10]))
    seconds = sum(r["seconds"] for r in records)
    nouns = bool(records) and "noun_top" in records[0]
    from rgtp.presets import PAPER

    reported = PAPER.get(preset.name)
    n = len(records)
    return ActionResult(
        preset=preset.name,
        weights=weights,
        split=split,
        clips=n,
        failed=len(failed),
        top1=_accuracy(records, "top", "label", 1),
        top5=_accuracy(records, "top", "label", TOPK),
        tmacs_per_clip=count_preset(preset).clip_tmacs or 0.0,
        clips_per_s=n / seconds if seconds > 0 else 0.0,
        decode_s_per_clip=sum(r["decode_seconds"] for r in records) / max(n, 1),
        noun_top1=_accuracy(records, "noun_top", "noun", 1) if nouns else None,
        noun_top5=_accuracy(records, "noun_top", "noun", TOPK) if nouns else None,
        action_top1=(
            100.0 * sum(r["top"][0] == r["label"] and r["noun_top"][0] == r["noun"] for r in records) / max(n, 1)
            if nouns
            else None
        ),
        failed_ids=failed,
        paper={} if reported is None else {"top1": reported.accuracy, "clip_tmacs": reported.clip_tmacs},
        environment=environment(),
    )


def action_table(results: Sequence[ActionResult]) -> str:
    """A Markdown table: accuracy, compute and speed of each preset next to the paper's figures."""
    nouns = any(r.noun_top1 is not None for r in results)
    head = "| preset | clips | failed | top-1 | top-5 | paper top-1 | TMACs/clip | paper | clips/s |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if nouns:
        head, rule = head + " noun top-1 | action top-1 |", rule + "---:|---:|"
    rows = [head, rule]
    for r in results:
        paper_acc, paper_tmacs = r.paper.get("top1"), r.paper.get("clip_tmacs")
        row = (
            f"| {r.preset} | {r.clips} | {r.failed} | {r.top1:.2f} | {r.top5:.2f} "
            f"| {'' if paper_acc is None else f'{paper_acc:.2f}'} | {r.tmacs_per_clip:.4f} "
            f"| {'' if paper_tmacs is None else f'{paper_tmacs:.4f}'} | {r.clips_per_s:.3f} |"
        )
        if nouns:
            row += f" {_fmt(r.noun_top1)} | {_fmt(r.action_top1)} |"
        rows.append(row)
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
