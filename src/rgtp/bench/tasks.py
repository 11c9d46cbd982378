"""The three benchmark tasks and ``run_bench``: get the weights (shipped, given, or trained with the package's own
training), build the test set, evaluate every variant, write JSON, Markdown and a PNG plot.

* ``detection``: the small ViTDet on generated shapes (:mod:`rgtp.data.shapes`), mAP50 on the test split.
* ``pedestrians``: the same detector trained on the first 75% of ``vtest.avi`` against OpenCV HOG boxes
  (:mod:`rgtp.data.pedestrians`), mAP50 on the last 25%.
* ``action``: the small ViViT on generated motions (:mod:`rgtp.data.motions`), top-1 on the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rgtp.bench.evaluate import evaluate_action, evaluate_detection, prepare_clips, prepare_frames
from rgtp.bench.methods import action_variants, detection_variants, select_methods
from rgtp.bench.report import check_targets, markdown_table, plot
from rgtp.build import build_model, bundled_weights, load_weights
from rgtp.config import ConfigError
from rgtp.evaluation.records import ResultLog, atomic_write_text, environment
from rgtp.presets import get_preset

__all__ = ["TASKS", "BenchTask", "export_weights", "run_bench"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchTask:
    name: str
    dense_preset: str  # the trained model
    rgtp_preset: str  # RGTP's settings for this model (the paper's, scaled to the grid)
    metric: str
    title: str


TASKS: dict[str, BenchTask] = {
    "detection": BenchTask(
        "detection", "shapes_det_base", "shapes_det_rgtp", "mAP50 (%)", "Small ViTDet on generated shapes (test split)"
    ),
    "pedestrians": BenchTask(
        "pedestrians",
        "pedestrians_det_base",
        "pedestrians_det_rgtp",
        "mAP50 vs HOG boxes (%)",
        "Small ViTDet on vtest.avi pedestrians (last 25% of frames)",
    ),
    "action": BenchTask("action", "motions_base", "motions_rgtp", "top-1 (%)", "Small ViViT on generated motions"),
}


def export_weights(src: str | Path, dst: str | Path, **meta: Any) -> Path:
    """Write the model weights of a training run (``best.pt``) in fp16 with a little metadata: what ships in
    ``src/rgtp/weights/``. Loading converts them back to the model's dtype."""
    obj = torch.load(Path(src), map_location="cpu", weights_only=True)
    state = obj.get("model", obj)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": half, "rgtp_meta": {"source": Path(src).name, **meta}}, dst)
    return dst


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _data(task: BenchTask, split: str, video: str | None, boxes: str | None, **options: Any) -> Any:
    if task.name == "detection":
        from rgtp.data.shapes import make_shapes_split

        return make_shapes_split(split, **options)
    if task.name == "pedestrians":
        from rgtp.data.pedestrians import load_pedestrians

        if video is None:
            raise ConfigError(
                "the pedestrian benchmark needs --video vtest.avi (OpenCV's sample clip; see README: "
                "`apt-get download opencv-doc` or opencv/samples/data/vtest.avi)"
            )
        size = get_preset(task.dense_preset).model.img_size  # type: ignore[union-attr]
        return load_pedestrians(video, boxes or default_boxes(), split, size=size, **options)
    from rgtp.data.motions import MotionDataset

    return MotionDataset("generated", split, **options)


def default_boxes() -> Path:
    """The HOG boxes of vtest.avi shipped with the repository (benchmarks/data/vtest_hog_boxes.json)."""
    return Path(__file__).resolve().parents[3] / "benchmarks" / "data" / "vtest_hog_boxes.json"


def _train(task: BenchTask, run_dir: Path, video: str | None, boxes: str | None, device: str, progress: bool) -> Path:
    """Train the task's model with the package's training (resumable) and return its best weights."""
    preset = get_preset(task.dense_preset)
    if task.name == "action":  # from scratch the small ViViT stays at chance: a curriculum (see CURRICULA)
        from rgtp.training.loop import CURRICULA
        from rgtp.training.vivit import train_curriculum

        results = train_curriculum(
            CURRICULA["motions"], "generated", run_dir, preset, device=device, progress=progress, cache=True
        )
        return results[-1].out_dir / "best.pt"
    from rgtp.training.detection import DET_RECIPES, train_vitdet

    # pedestrians: validation on the last 48 frames before the test part (the test frames stay unseen)
    train_set, val_set = _data(task, "train", video, boxes), _data(task, "val", video, boxes)
    recipe = DET_RECIPES["shapes" if task.name == "detection" else "pedestrians"]
    train_vitdet(train_set, val_set, run_dir, preset, recipe, device=device, progress=progress)
    return run_dir / "best.pt"


def _weights(
    task: BenchTask,
    weights: str | None,
    train: bool,
    out_dir: Path,
    video: str | None,
    boxes: str | None,
    device: str,
    progress: bool,
) -> Path:
    if weights is not None:
        return Path(weights)
    if train:
        return _train(task, out_dir / "train", video, boxes, device, progress)
    bundled = bundled_weights(task.dense_preset)
    if bundled is None:
        raise ConfigError(f"no weights are shipped for {task.name}: give --weights, or --train to train them here")
    return bundled


def run_bench(
    task_name: str,
    out_dir: str | Path | None = None,
    weights: str | None = None,
    train: bool = False,
    methods: list[str] | None = None,
    video: str | None = None,
    boxes: str | None = None,
    max_items: int | None = None,
    max_frames: int | None = None,
    timing: int | None = None,
    timing_rounds: int = 3,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run one benchmark task end to end; returns the results written to ``out_dir/results.json``.

    ``max_items`` / ``max_frames`` cut the test set (sequences or clips / frames per sequence) for quick runs;
    ``timing`` is the number of frames (clips) timed per variant and round (0: no timing).
    """
    if task_name not in TASKS:
        raise ConfigError(f"unknown benchmark {task_name!r}; known: {', '.join(TASKS)}")
    task = TASKS[task_name]
    out = Path(out_dir or f"benchmarks/results/bench_{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    weights_path = _weights(task, weights, train, out, video, boxes, device, progress)
    model = build_model(get_preset(task.dense_preset), device)
    load_weights(model, weights_path)
    base = get_preset(task.rgtp_preset).rgtp
    assert base is not None
    family = "detection" if task.name != "action" else "action"
    variants = select_methods(detection_variants(base) if family == "detection" else action_variants(base), methods)

    options: dict[str, Any] = {}
    if max_items is not None and task.name == "detection":
        options["num_sequences"] = max_items
    if max_items is not None and task.name == "action":
        options["num_clips"] = max_items
    test = _data(task, "test", video, boxes, **options)
    header = {
        "task": task.name,
        "weights": str(weights_path),
        "weights_sha256": _sha256(weights_path),
        "data": test.describe(),
        "max_frames": max_frames,
    }
    log = ResultLog(out / "log", header)
    logger.info("benchmark %s: %d variants, weights %s", task.name, len(variants), weights_path)
    if family == "detection":
        if task.name == "pedestrians" and max_items is not None:
            test = replace(test, sequences=test.sequences[:max_items])
        frames = prepare_frames(test, model.cfg.img_size, max_frames)
        records = evaluate_detection(
            model, variants, frames, log, 48 if timing is None else timing, timing_rounds, progress
        )
        unit, time_unit = "GMACs per frame", "frame"
    else:
        clips = prepare_clips(test, get_preset(task.dense_preset))
        records = evaluate_action(
            model,
            variants,
            clips,
            log,
            timing_clips=16 if timing is None else timing,
            timing_rounds=timing_rounds,
            progress=progress,
        )
        unit, time_unit = "GMACs per clip", "clip"
    targets = check_targets(records)
    results = {
        "task": task.name,
        "title": task.title,
        "metric": task.metric,
        "unit": unit,
        "weights": str(weights_path),
        "weights_sha256": header["weights_sha256"],
        "data": header["data"],
        "environment": {**environment(), "timing_rounds": timing_rounds},
        "targets": targets,
        "records": records,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown_table(records, task.metric, unit, time_unit)
    atomic_write_text(out / "table.md", f"# {task.title}\n\n{table}\n\n{_targets_text(targets)}\n")
    plot(records, out / "plot.png", task.title, task.metric, unit)
    logger.info("wrote %s, %s, %s", out / "results.json", out / "table.md", out / "plot.png")
    results["table"] = table
    return results


def _targets_text(t: dict[str, Any]) -> str:
    lines = [
        f"Dense: {t['dense_accuracy']:.2f} at {t['dense_gmacs']:.4f} GMACs. "
        f"Budget (60% fewer): {t['budget_gmacs']:.4f} GMACs.",
    ]
    if t["rgtp_accuracy_at_budget"] is None:
        lines.append("- Target 1 (≤0.5 loss at 60% fewer GMACs): not judged (budget outside RGTP's measured range).")
    else:
        verdict = "met" if t["target_loss_met"] else "MISSED"
        lines.append(
            f"- Target 1 (≤0.5 loss at 60% fewer GMACs): {verdict}: RGTP {t['rgtp_accuracy_at_budget']:.2f} "
            f"(loss {t['loss_at_budget']:.2f})."
        )
    verdict = {True: "met", False: "MISSED", None: "not judged"}[t["target_baselines_met"]]
    lost = ", ".join(t["baselines_lost_to"]) or "none"
    lines.append(
        f"- Target 2 (RGTP ≥ every baseline at its compute): {verdict}: RGTP is at least as accurate at "
        f"{t['baseline_points_beaten']} of {t['baseline_points_judged']} baseline points; loses to: {lost}."
    )
    return "\n".join(lines)
