"""Run a preset over a video file frame by frame: per-frame JSON lines, an optional annotated video, a summary.

This is the engine behind ``rgtp run`` and ``rgtp demo``. Results are written line by line as frames finish, so an
interrupted run keeps everything up to the last frame. The annotated video is at the source's resolution (with an
option to scale it) with a caption panel under each frame (:mod:`rgtp.annotate`); ``compare`` also runs the dense
model on the same frames, draws it beside the pruned one and reports how far pruning changed the answer.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rgtp.accounting import Accounting, count_preset
from rgtp.annotate import ViewGeometry, render_grid_frame, render_vivit_frames, rescale, side_by_side
from rgtp.build import BUNDLED, build_model, build_runner, load_weights, shipped
from rgtp.config import ExecutionConfig, Preset, ViTDetConfig, ViViTConfig
from rgtp.data.views import make_views
from rgtp.interrupt import StopRequest, graceful_stop
from rgtp.io.video import VideoWriter, read_frames, video_info
from rgtp.models.vitdet import preprocess_frame
from rgtp.models.vivit import ViViT, predict_views
from rgtp.progress import progress_bar
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.driver import run_clip, stream
from rgtp.runtime.streams import MultiStream
from rgtp.timing import stopwatch
from rgtp.viz import PANEL_COLOUR

__all__ = ["RANDOM", "RunSummary", "run_video", "run_videos"]

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
    unit: str = "frame"  # what a step is: a frame (ViTDet) or a tubelet step of every view (ViViT)
    model: str = ""  # what the weights were trained on and what the model outputs
    agreement: dict[str, Any] = field(default_factory=dict)  # with compare: pruned vs dense

    def record(self) -> dict[str, Any]:
        """The run's totals as the last JSON line: steps by kind, mean and dense compute, agreement, interruption."""
        unit = "frame" if self.unit == "frame" else "step_and_view"
        return {
            "preset": self.preset,
            "weights": self.weights,
            "model": self.model,
            f"{self.unit}s": self.frames,
            "by_kind": {k: {n: round(x, 4) for n, x in v.items()} for k, v in self.by_kind.items()},
            f"mean_gmacs_per_{unit}": round(self.mean_gmacs, 6),
            f"dense_gmacs_per_{unit}": round(self.dense_gmacs, 6),
            "agreement_with_dense": self.agreement or None,
            "interrupted_by": signal.Signals(self.interrupted).name if self.interrupted else None,
        }

    def table(self) -> str:
        """A small Markdown table of the run."""
        unit, ms = ("GMACs/frame", "ms/frame") if self.unit == "frame" else ("GMACs/step·view", "ms/step (all views)")
        rows = [f"| step kind | count | {unit} | {ms} (mean) |", "|---|---|---|---|"]
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
    compare: bool = False,
    out_scale: float = 1.0,
    execution: ExecutionConfig | None = None,
) -> RunSummary:
    """Run ``preset`` over ``video``; write JSON lines to ``jsonl`` and an annotated video to ``out_video``.

    ``weights``: a checkpoint, None for the weights shipped for the preset's model (random weights if none are), or
    ``"random"``. ViTDet presets process every frame. ViViT presets classify consecutive segments of
    ``segment_frames`` frames (250: a 10 s Kinetics clip at 25 fps), each with the preset's spatial x temporal views
    (method §12.2). SIGINT / SIGTERM stop the run after the current frame with every output closed and valid
    (``summary.interrupted`` says which signal). A video that ends before the frame count its container announces
    (damaged) is processed up to the damage with a warning, or with ``strict`` fails there. ``compare``: run the
    dense model too, draw both side by side and report their agreement (``summary.agreement``). ``out_scale``: the
    annotated video's size relative to the source. ``execution``: how the runners execute (fused attention,
    autocast, compilation; None: the exact default path).
    """
    video = Path(video)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    if not 0.05 <= out_scale <= 8.0:
        raise ValueError(f"out_scale must lie in [0.05, 8], got {out_scale}")
    if compare and preset.method == "dense":
        raise ValueError(f"--compare dense: {preset.name} already runs the dense model")
    if compare and isinstance(preset.model, ViTDetConfig):
        from rgtp.metrics import check_backend

        check_backend()  # the agreement is an mAP: fail now, not after the video, if no backend is installed
    info = video_info(video)  # fails early, naming the file, if it is missing or not a video
    model, weights_name = _load_model(preset, weights, device)
    summary = RunSummary(preset.name, str(video), weights_name, model=_model_line(preset, weights_name))
    options = Options(compare, out_scale, segment_frames, execution)
    accounting = count_preset(preset)
    total = info.num_frames if max_frames is None else min(max_frames, info.num_frames or max_frames)
    with ExitStack() as stack:
        sink = stack.enter_context(open(jsonl, "w")) if jsonl else None
        video_out = stack.enter_context(VideoWriter(out_video, fps=info.fps or 10.0)) if out_video else None
        writer = None if video_out is None else _Pictures(video_out, out_scale)
        frames = read_frames(video, max_frames, strict)
        if isinstance(preset.model, ViTDetConfig):
            records = _run_vitdet(preset, model, frames, accounting, writer, summary, options)
        else:
            summary.unit = "step"
            records = _run_vivit(preset, model, frames, accounting, writer, summary, options)
        bar = stack.enter_context(closing(progress_bar(total, preset.name)))
        stop = stack.enter_context(graceful_stop())  # a signal ends the run after the current frame, outputs closed
        _consume(records, summary, sink, bar, stop)
        summary.dense_gmacs = _dense_gmacs(preset)
        _finish_agreement(summary)
        if sink is not None and summary.frames:
            sink.write(json.dumps({"run_summary": summary.record()}) + "\n")
    if summary.frames == 0 and not summary.clips and summary.interrupted is None:
        _remove(jsonl, out_video)  # nothing to keep: no empty outputs left behind
        raise ValueError(f"{video}: no frame could be decoded (an empty or unreadable video stream)")
    if jsonl:
        summary.outputs["jsonl"] = str(jsonl)
    if out_video:
        summary.outputs["video"] = str(out_video)
    return summary


def run_videos(
    videos: list[str | Path],
    preset: Preset,
    weights: str | Path | None = None,
    out_dir: str | Path = ".",
    max_frames: int | None = None,
    device: str = "cpu",
    strict: bool = False,
    execution: ExecutionConfig | None = None,
) -> list[RunSummary]:
    """Run a ViTDet ``preset`` over several videos at once: their frames are stepped together as the streams of one
    batch (:class:`~rgtp.runtime.streams.MultiStream`), a video that ends leaves the batch.

    Each video gets ``<out_dir>/<stem>.<preset>.jsonl``: a line per frame (as :func:`run_video` writes; ``ms`` is
    the batched step's time, shared by ``batch`` streams) and the run summary last. SIGINT / SIGTERM stop after the
    current step with every file closed and valid.
    """
    if not isinstance(preset.model, ViTDetConfig):
        raise ValueError(f"{preset.name}: several videos at once run ViTDet presets (a ViViT clip batches its views)")
    if len({Path(v).resolve() for v in videos}) != len(videos):
        raise ValueError("a video is given twice")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    cfg = preset.model
    infos = [video_info(v) for v in videos]  # fails early, naming the file, if one is missing or not a video
    model, weights_name = _load_model(preset, weights, device)
    runner = build_runner(preset, model, execution)
    accounting, dense_gmacs = count_preset(preset), _dense_gmacs(preset)
    names = class_names(cfg, weights_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [RunSummary(preset.name, str(v), weights_name, model=_model_line(preset, weights_name)) for v in videos]
    counts = [i.num_frames if max_frames is None else min(max_frames, i.num_frames or max_frames) for i in infos]
    total = None if None in counts else sum(counts)  # a container may not say how many frames it holds
    stems = [Path(v).stem for v in videos]
    names_out = [s if stems.count(s) == 1 else f"{s}.{i}" for i, s in enumerate(stems)]  # a.mp4 and b/a.mp4
    with ExitStack() as stack:
        sinks = []
        for stem, summary in zip(names_out, summaries, strict=True):
            path = out_dir / f"{stem}.{preset.name}.jsonl"
            sinks.append(stack.enter_context(open(path, "w")))
            summary.outputs["jsonl"] = str(path)
        sources = [read_frames(v, max_frames, strict) for v in videos]
        active = list(range(len(videos)))  # the videos in the batch, in slot order
        streams = MultiStream(runner)
        bar = stack.enter_context(closing(progress_bar(total, f"{preset.name} x {len(videos)} videos")))
        stop = stack.enter_context(graceful_stop())
        model_device = next(model.parameters()).device
        while active and stop.signum is None:
            batch, ended = _next_frames(sources, active, cfg.img_size, model_device)
            if ended:
                streams.drop(ended)
                active = [v for slot, v in enumerate(active) if slot not in ended]
            if not batch:
                break
            with stopwatch(model_device) as elapsed:
                outs = streams.step(torch.stack([b[2] for b in batch]))
            for (v, frame, _, scale), out in zip(batch, outs, strict=True):
                det = out.detections
                found = None if det is None else _source_detections(det[0], scale, frame.shape[:2])
                gmacs = accounting.step_gmacs(out.kind)
                record = _frame_record(out, found, cfg, gmacs, elapsed[0] * 1e3, weights_name, names)
                record["batch"] = len(batch)
                _add(summaries[v], record)
                sinks[v].write(json.dumps(record) + "\n")
                sinks[v].flush()
            bar.update(len(batch))
        for summary, sink in zip(summaries, sinks, strict=True):
            summary.dense_gmacs = dense_gmacs
            summary.interrupted = stop.signum
            if summary.frames:
                sink.write(json.dumps({"run_summary": summary.record()}) + "\n")
    if stop.signum is not None:
        logger.warning("%s: stopped; every output holds the frames finished so far", stop.name)
    return summaries


def _next_frames(
    sources: list[Iterator[np.ndarray]], active: list[int], size: int, device: torch.device
) -> tuple[list[tuple[int, np.ndarray, Tensor, float]], set[int]]:
    """The next frame of each active video: ([(video, frame, model input, scale)], the slots whose video ended)."""
    batch, ended = [], set()
    for slot, v in enumerate(active):
        frame = next(sources[v], None)
        if frame is None:
            ended.add(slot)
        else:
            image, scale = preprocess_frame(torch.from_numpy(frame).to(device), size)
            batch.append((v, frame, image, scale))
    return batch, ended


def _frame_record(
    out: Any,
    found: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    cfg: ViTDetConfig,
    gmacs: float,
    ms: float,
    weights: str,
    names: tuple[str, ...] | None,
    k: int = 1,
) -> dict[str, Any]:
    """A ViTDet frame's JSON line: ``found`` are its detections in pixels of the source enlarged ``k`` times, written
    in source pixels."""
    return {
        "frame": out.t,
        "kind": out.kind.value,
        "kept": out.num_kept,
        "tokens": cfg.num_tokens,
        "gmacs": round(gmacs, 4),
        "ms": round(ms, 2),
        "weights": weights,
        "outputs": {
            "features": {name: list(v.shape[1:]) for name, v in out.features.items()},
            "detections": None if found is None else _detections_json(found, names, k),
        },
    }


@dataclass(frozen=True)
class Options:
    """How to run and draw: ``compare`` with the dense model, ``out_scale`` of the annotated video, ViViT segments."""

    compare: bool = False
    out_scale: float = 1.0
    segment_frames: int = 250
    execution: ExecutionConfig | None = None


def _model_line(preset: Preset, weights: str) -> str:
    """What the model is, in one line for the output: its weights' training data and what it detects or classifies."""
    entry = shipped(preset.name)
    if weights == RANDOM:
        return f"{preset.name} with RANDOM weights: its outputs mean nothing (kept tokens, MACs and times are real)"
    if entry is not None and Path(weights) == entry.path:
        return f"{preset.name}, trained on {entry.trained_on}; outputs: {entry.outputs}"
    return f"{preset.name} with the weights {Path(weights).name}"


def _load_model(preset: Preset, weights: str | Path | None, device: str) -> tuple[torch.nn.Module, str]:
    """The preset's model with the given, the shipped or random weights; (model, what the weights are)."""
    model = build_model(preset, device)
    entry = shipped(preset.name) if weights is None else None
    if entry is not None:
        weights = entry.path
        logger.info(
            "%s: the weights shipped for it, trained on %s; outputs: %s", preset.name, entry.trained_on, entry.outputs
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
        bar.update(_source_frames(record))
        if stop.signum is not None and "step" not in record:  # a ViViT clip stops whole, after its summary
            logger.warning("%s: stopping after %d %ss; closing the outputs", stop.name, summary.frames, summary.unit)
            summary.interrupted = stop.signum
            return


class _Pictures:
    """The annotated video: pictures scaled by ``scale``, each fitted to the first one's size (a caption that wraps
    further than the panel reserved for it is cut rather than ending the run: a video has one frame size)."""

    def __init__(self, writer: VideoWriter, scale: float) -> None:
        self.writer, self.scale = writer, scale
        self.hw: tuple[int, int] | None = None

    def write(self, picture: np.ndarray) -> None:
        picture = rescale(picture, self.scale)
        if self.hw is None:
            self.hw = picture.shape[:2]
        h, w = self.hw
        if picture.shape[:2] != (h, w):
            logger.debug("annotated frame %s fitted to %s", picture.shape[:2], (h, w))
            fitted = np.full((h, w, 3), PANEL_COLOUR, dtype=np.uint8)
            fitted[: min(h, picture.shape[0]), : min(w, picture.shape[1])] = picture[:h, :w]
            picture = fitted
        self.writer.write(picture)


def _source_frames(record: dict[str, Any]) -> int:
    """How many source frames a record finishes: a ViTDet frame one, a ViViT clip its segment, a ViViT step none."""
    if "clip_summary" in record:
        return int(record["clip_summary"]["source_frames"])
    return 0 if "step" in record else 1


def _remove(*paths: str | Path | None) -> None:
    for path in paths:
        if path is not None and Path(path).is_file():
            Path(path).unlink()


def _dense_gmacs(preset: Preset) -> float:
    """GMACs per frame (ViTDet) or per step and view (ViViT: the spatial encoder, as the steps are counted) of the
    dense model."""
    return count_preset(_dense(preset)).step_gmacs(FrameKind.FULL)


def _add(summary: RunSummary, record: dict[str, Any]) -> None:
    if "clip_summary" in record:
        summary.clips.append(record["clip_summary"])
        return
    gmacs = record["gmacs"] if "gmacs" in record else record["gmacs_per_view"]
    ms = record["ms"] if "ms" in record else record["ms_all_views"]
    kind = summary.by_kind.setdefault(record["kind"], {"count": 0, "gmacs": gmacs, "ms_mean": 0.0})
    kind["ms_mean"] = (kind["ms_mean"] * kind["count"] + ms) / (kind["count"] + 1)
    kind["count"] += 1
    summary.frames += 1
    summary.mean_gmacs += (gmacs - summary.mean_gmacs) / summary.frames


# ---------------------------------------------------------------------------------------------------------------------
# ViTDet


def _run_vitdet(
    preset: Preset,
    model: torch.nn.Module,
    frames: Iterable[np.ndarray],
    accounting: Accounting,
    writer: _Pictures | None,
    summary: RunSummary,
    options: Options,
) -> Iterator[dict[str, Any]]:
    cfg = preset.model
    assert isinstance(cfg, ViTDetConfig)
    runtime = build_runner(preset, model, options.execution)
    dense = _Dense(build_runner(_dense(preset), model, options.execution)) if options.compare else None
    device = next(model.parameters()).device
    names = class_names(cfg, summary.weights)
    inputs: list[tuple[np.ndarray, Tensor, float]] = []  # the frame being stepped: source, model input, scale

    def images() -> Iterator[Tensor]:
        for frame in frames:
            image, scale = preprocess_frame(torch.from_numpy(frame).to(device), cfg.img_size)
            inputs[:] = [(frame, image, scale)]
            yield image[None]

    for tick in stream(runtime, images(), timed=True):
        out, (frame, image, scale) = tick.output, inputs[0]
        k = legible_factor(frame.shape[:2])
        frame, scale = enlarge(frame, k), scale / k  # drawn k times larger: the model input is frame * scale
        gmacs, ms = accounting.step_gmacs(out.kind), (tick.seconds or 0.0) * 1e3
        found = None if out.detections is None else _source_detections(out.detections[0], scale, frame.shape[:2])
        record = _frame_record(out, found, cfg, gmacs, ms, summary.weights, names, k)  # (out.t is tick.index)
        lines = [_frame_line(tick.index, out.kind.value, out.num_kept, cfg.num_tokens, gmacs, ms), summary.model]
        reserve = _reserve(frame, [_frame_line(10**6, "rollout", cfg.num_tokens, cfg.num_tokens, 888.8, 88888.0),
                                   summary.model])  # fmt: skip
        picture = None
        if writer is not None:
            picture = render_grid_frame(frame, scale, cfg.patch_size, cfg.grid, out, names, lines, found, reserve)
        if dense is not None:
            record["dense"], dense_picture = dense.frame(image, frame, scale, cfg, names, found, writer is not None, k)
            picture = side_by_side(picture, dense_picture) if picture is not None else None
            summary.agreement.setdefault("frames", []).append(dense.last)
        if writer is not None and picture is not None:
            writer.write(picture)
        yield record


#: Annotated frames narrower than this are drawn larger (an integer factor, nearest-neighbour), so that text fits,
LEGIBLE_WIDTH = 480
#: but never with a side longer than this (video encoders and players handle up to 4096 px; 8K is rare).
MAX_DRAWN_SIDE = 4096


def legible_factor(hw: tuple[int, int]) -> int:
    """The integer factor that makes an (H, W) frame at least :data:`LEGIBLE_WIDTH` wide (1 if it is), without making
    its longer side exceed :data:`MAX_DRAWN_SIDE`."""
    h, w = hw
    wanted = -(-LEGIBLE_WIDTH // max(w, 1))
    allowed = MAX_DRAWN_SIDE // max(h, w, 1)
    return max(1, min(wanted, allowed))


def enlarge(frame: np.ndarray, k: int) -> np.ndarray:
    """(H, W, 3) -> (kH, kW, 3), nearest neighbour (the source's pixels stay visible)."""
    return frame if k == 1 else frame.repeat(k, axis=0).repeat(k, axis=1)


def _frame_line(t: int, kind: str, kept: int, tokens: int, gmacs: float, ms: float) -> str:
    return f"frame {t}  {kind.upper()}  kept {kept}/{tokens} tokens  {gmacs:.3g} GMACs  {ms:.0f} ms"


def _reserve(frame: np.ndarray, worst: list[str]) -> int:
    """Caption lines to reserve on frames like ``frame`` so that the longest caption (``worst``) fits: one panel
    height for every frame of the video."""
    from rgtp.viz import text_size_for, wrapped_lines

    return wrapped_lines(frame.shape[1], worst, font_size=text_size_for(*frame.shape[:2]))


def _dense(preset: Preset) -> Preset:
    """The preset's model without its method."""
    return replace(preset, rgtp=None, eventful=None, tome=None)


class _Dense:
    """The dense model beside the pruned one, frame by frame: its detections, its picture, the pair to score."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.state = runner, runner.new_state()
        self.last: tuple[Any, Any] = (None, None)

    def frame(
        self,
        image: Tensor,
        frame: np.ndarray,
        scale: float,
        cfg: ViTDetConfig,
        names: tuple[str, ...] | None,
        pruned: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        draw: bool,
        k: int = 1,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The dense step of a frame: (its record, its picture or None); ``frame`` is the source enlarged ``k`` times
        and ``scale`` takes it to the model input."""
        tick = next(stream(self.runner, [image[None]], self.state, timed=True))
        found = (
            None
            if tick.output.detections is None
            else _source_detections(tick.output.detections[0], scale, frame.shape[:2])
        )
        self.last = (found, pruned)
        ms = (tick.seconds or 0.0) * 1e3
        record = {"ms": round(ms, 2), "detections": None if found is None else _detections_json(found, names, k)}
        picture = None
        if draw:
            lines = [f"DENSE  all {cfg.num_tokens} tokens  {ms:.0f} ms", "the same model without pruning"]
            reserve = _reserve(frame, [f"DENSE  all {cfg.num_tokens} tokens  88888 ms", lines[1]])
            picture = render_grid_frame(
                frame, scale, cfg.patch_size, cfg.grid, None, names, lines, found, reserve, legend=False
            )
        return record, picture


def _source_detections(det: Any, scale: float, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (K, 4) in source pixels, scores (K,), labels (K,)) of detections in model-input pixels, clipped to the
    (H, W) source frame (the model's input is padded to a square: boxes reach into the padding); boxes that lie
    wholly in the padding are dropped."""
    h, w = hw
    boxes = (det.boxes.float() / scale).cpu().numpy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[inside], det.scores.float().cpu().numpy()[inside], det.labels.cpu().numpy()[inside]


def _detections_json(
    found: tuple[np.ndarray, np.ndarray, np.ndarray], names: tuple[str, ...] | None, k: int = 1
) -> list[dict[str, Any]]:
    """Detections as JSON, boxes in source pixels (``found`` is in pixels of the source enlarged ``k`` times)."""
    boxes, scores, labels = found
    return [
        {
            "box": [round(float(v) / k, 1) for v in box],
            "score": round(float(s), 4),
            "label": int(c),
            "class": names[int(c)] if names else f"class {int(c)}",
        }
        for box, s, c in zip(boxes, scores, labels, strict=True)
    ]


#: With compare, dense detections scoring at least this are the reference the pruned ones are scored against.
AGREEMENT_SCORE = 0.5


def _finish_agreement(summary: RunSummary) -> None:
    """Score the pruned detections against the dense ones (mAP50), or average the clips' agreements (ViViT)."""
    pairs = summary.agreement.pop("frames", None)
    if pairs:
        from rgtp.metrics import coco_map

        truth, predictions, classes = [], [], 1
        for dense, pruned in pairs:
            if dense is None or pruned is None:
                continue
            keep = dense[1] >= AGREEMENT_SCORE
            truth.append((dense[0][keep], dense[2][keep]))
            predictions.append(pruned)
            classes = max(classes, int(max(dense[2].max(initial=0), pruned[2].max(initial=0))) + 1)
        if truth:
            summary.agreement = {
                "map50_vs_dense": None,
                "reference": f"the dense model's detections scoring >= {AGREEMENT_SCORE}",
                "frames": len(truth),
            }
            if sum(len(boxes) for boxes, _ in truth) == 0:  # nothing to agree on: say so rather than score it
                confident = sum(int((p[1] >= AGREEMENT_SCORE).sum()) for p in predictions)
                summary.agreement["note"] = (
                    f"nothing to compare: the dense model found nothing scoring >= {AGREEMENT_SCORE}, the pruned one "
                    f"{confident} detections"
                )
            else:
                metrics = coco_map(truth, predictions, [str(k) for k in range(classes)])
                summary.agreement["map50_vs_dense"] = round(100 * metrics.map50, 2)
    elif summary.clips and "top1_agree" in summary.clips[0].get("agreement", {}):
        agree = [c["agreement"] for c in summary.clips]
        summary.agreement = {
            "top1_agreement": round(100 * sum(a["top1_agree"] for a in agree) / len(agree), 1),
            "mean_total_variation": round(sum(a["total_variation"] for a in agree) / len(agree), 4),
            "clips": len(agree),
        }


def class_names(cfg: ViTDetConfig | ViViTConfig, weights: str = RANDOM) -> tuple[str, ...] | None:
    """Names of a model's classes: those of the shipped weights when ``weights`` are theirs, else those of the paper's
    datasets recognised by their count (ImageNet VID: 30, Kinetics-400: 400); None ("class k") otherwise."""
    from rgtp.data.kinetics import KINETICS400_CLASSES
    from rgtp.data.vid import VID_CLASSES

    entry = next((e for e in BUNDLED.values() if weights != RANDOM and Path(weights) == e.path), None)
    if entry is not None:  # the shipped weights are the lab's small models
        from rgtp.lab.data.motions import MOTION_CLASSES
        from rgtp.lab.data.pedestrians import PEDESTRIAN_CLASSES
        from rgtp.lab.data.shapes import SHAPES_CLASSES

        by_file = {
            "shapes_det.pt": SHAPES_CLASSES,
            "pedestrians_det.pt": PEDESTRIAN_CLASSES,
            "motions_vivit.pt": MOTION_CLASSES,
        }
        return by_file.get(entry.file)
    if isinstance(cfg, ViTDetConfig):
        count = cfg.head.num_classes if cfg.head is not None else 0
        return VID_CLASSES if count == len(VID_CLASSES) else None
    return tuple(KINETICS400_CLASSES) if cfg.num_classes == len(KINETICS400_CLASSES) else None


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
    writer: _Pictures | None,
    summary: RunSummary,
    options: Options,
) -> Iterator[dict[str, Any]]:
    assert isinstance(model, ViViT)
    cfg = model.cfg
    runtime = build_runner(preset, model, options.execution)
    dense = build_runner(_dense(preset), model, options.execution) if options.compare else None
    device = next(model.parameters()).device
    views = preset.views[0] * preset.views[1]
    names = class_names(cfg, summary.weights)
    start = 0
    for c, raw in enumerate(_segments(frames, options.segment_frames)):
        clip = make_views(np.stack(raw), cfg.num_frames, preset.temporal_stride, cfg.img_size, preset.views).to(device)
        result = run_clip(runtime, clip, timed=True)
        geometry = ViewGeometry.centre(
            raw[0].shape[:2], len(raw), cfg.num_frames, preset.temporal_stride, cfg.img_size, cfg.tubelet[1],
            preset.views,
        )  # fmt: skip
        for t, step in enumerate(result.steps):
            sampled = geometry.frames[t * cfg.tubelet[0] : (t + 1) * cfg.tubelet[0]]
            yield {
                "clip": c,
                "step": t,
                "frames": [start + f for f in sampled],  # the source frames of this step in the view drawn
                "kind": step.kind.value,
                "kept": step.num_kept,
                "tokens": cfg.num_tokens,
                "gmacs_per_view": round(accounting.step_gmacs(step.kind), 6),
                "ms_all_views": round(1e3 * (result.step_seconds or [0.0] * len(result.steps))[t], 3),
                "weights": summary.weights,
            }
        probs = predict_views(model.split(result.logits)[0], views)[0]
        clip_record = _clip_summary(c, len(raw), probs, names, accounting, result)
        dense_clip = None
        if dense is not None:
            dense_probs = predict_views(model.split(run_clip(dense, clip).logits)[0], views)[0]
            dense_clip = {"clip": c, **_top5(dense_probs, names)}
            clip_record["agreement"] = {
                "top1_agree": bool(probs.argmax() == dense_probs.argmax()),
                "total_variation": round(0.5 * float((probs - dense_probs).abs().sum()), 4),
                **{f"dense_{key}": value for key, value in dense_clip.items() if key != "clip"},
            }
        if writer is not None:
            k = legible_factor(raw[0].shape[:2])  # narrow frames are drawn larger, so that the text fits
            big = [enlarge(f, k) for f in raw]
            view = geometry.enlarged(k)
            lines = [_predictions_line(clip_record), summary.model]
            worst = [_worst_step_line(cfg.num_tokens), _worst_predictions(names), summary.model]
            if dense_clip is not None:
                tv = clip_record["agreement"]["total_variation"]
                lines.insert(1, f"total variation to the dense probabilities: {tv:.3f}")
                worst.insert(2, "total variation to the dense probabilities: 0.000")
            pictures = render_vivit_frames(
                big, view, result.steps, cfg.tubelet[0], cfg.grid, lines, _reserve(big[0], worst), start
            )
            if dense_clip is not None:
                dense_lines = [_predictions_line(dense_clip), "the same model without pruning"]
                dense_worst = [_worst_step_line(cfg.num_tokens), _worst_predictions(names), dense_lines[1]]
                dense_pictures = render_vivit_frames(
                    big, view, None, cfg.tubelet[0], cfg.grid, dense_lines, _reserve(big[0], dense_worst), start
                )
                pictures = (side_by_side(a, b) for a, b in zip(pictures, dense_pictures, strict=True))
            for picture in pictures:
                writer.write(picture)
        yield {"clip_summary": clip_record}  # after its frames are written: a stop here leaves whole clips
        start += len(raw)


def _name(index: int, names: tuple[str, ...] | None) -> str:
    return names[index] if names else f"class {index}"


def _top5(probs: Tensor, names: tuple[str, ...] | None) -> dict[str, Any]:
    """The five likeliest classes: ``top5`` [[index, probability]], ``top5_names``."""
    top = probs.topk(min(5, probs.numel()))
    return {
        "top5": [[int(i), round(float(p), 4)] for p, i in zip(*top, strict=True)],
        "top5_names": [_name(int(i), names) for i in top.indices],
    }


def _clip_summary(
    c: int, segment: int, probs: Tensor, names: tuple[str, ...] | None, accounting: Accounting, result: Any
) -> dict[str, Any]:
    """A segment's record: its top-5 classes, compute and time."""
    return {
        "clip": c,
        "source_frames": segment,
        **_top5(probs, names),
        "tmacs_per_clip_all_views": accounting.clip_tmacs,
        "ms_all_views": round(1e3 * sum(result.step_seconds or []), 1),
    }


def _worst_step_line(tokens: int) -> str:
    return f"frame 99999: step 99 ROLLOUT: kept {tokens}/{tokens} tokens"


def _worst_predictions(names: tuple[str, ...] | None) -> str:
    longest = sorted(names or ["class 999"], key=len)[-3:]
    return f"segment 99999: {', '.join(f'{n} 100%' for n in longest)}"


def _predictions_line(clip: dict[str, Any]) -> str:
    top = ", ".join(f"{n} {p:.0%}" for n, (_, p) in zip(clip["top5_names"][:3], clip["top5"][:3], strict=True))
    return f"segment {clip['clip']}: {top}"
