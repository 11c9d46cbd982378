"""Training a ViTDet detector (backbone, simple pyramid and Faster R-CNN head) on in-memory detection sets.

Samples are single frames: every frame of every training sequence, preprocessed exactly as at inference
(:func:`~rgtp.models.vitdet.preprocess_frame`: resize, normalise, zero-pad to the square input), ground-truth boxes
scaled by the same factor, with an optional random horizontal flip (within the resized width, not the padded one).
The losses are the Faster R-CNN head's (:meth:`~rgtp.models.frcnn.FasterRCNN.loss_terms`); AdamW with a linear warmup
and a cosine decay per step.

Conventions of :mod:`rgtp.training.loop`:

* every epoch the frames are shuffled with ``seed + epoch`` and cut into global batches of ``batch_size``; under
  ``torchrun`` each process takes every world-th frame of a batch. Each loss term is a sum over the process's frames
  divided by the term's normaliser summed over the processes, times the world size: after DDP averages the gradients,
  N processes make the update of one. A sample's flip and its anchor/RoI sampling are seeded by (seed, epoch, frame),
  so they do not depend on the batch or the process either.
* validation runs the dense model frame by frame on the validation set (or its first ``val_frames`` frames), sharded
  over the processes, and scores COCO mAP50 / mAP (:func:`rgtp.metrics.coco_map`, boxes in frame pixels), every
  ``eval_every`` epochs and after the last; the best epoch is the one with the highest mAP50.
* the first process writes ``RUN/config.json``, ``history.jsonl`` (one line per epoch: losses, lr, steps, seconds,
  validation), ``checkpoint.pt`` (model, optimiser, step, history, best: the resume state), ``last.pt`` and
  ``best.pt`` ({"model": state dict}, loadable by :func:`rgtp.build.load_weights`). Starting again with the same
  ``RUN`` resumes; epochs and workers may change, anything else must match (:class:`ResumeError` otherwise). The
  cosine schedule spans the current number of epochs, so growing it on resume stretches the rest of the schedule.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from rgtp.build import build_model, load_weights
from rgtp.config import ConfigError, Preset, ViTDetConfig, to_dict
from rgtp.data.detection import DetectionSet
from rgtp.evaluation.dist import DistInfo, barrier, gather, setup, shard
from rgtp.evaluation.records import plain
from rgtp.metrics import coco_map
from rgtp.models.frcnn import FRCNNTrainConfig
from rgtp.models.vitdet import ViTDet, preprocess_frame, resize_shape
from rgtp.ops import nonempty
from rgtp.progress import progress_bar
from rgtp.training.common import check_precision, training_autocast, weights_name
from rgtp.training.loop import (
    FitResult,
    all_sum,
    check_finite,
    epoch_batches,
    keyed_loader,
    lr_schedule,
    rank_seed,
    read_checkpoint,
    resume_settings,
    run_directory,
    write_epoch_files,
    write_json,
)

__all__ = [
    "DET_RECIPES",
    "DET_SPLITS",
    "DetTrainConfig",
    "FrameSamples",
    "build_detector",
    "det_recipe",
    "evaluate_detector",
    "lr_factor",
    "train_vitdet",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_FORMAT = 1
LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")


@dataclass(frozen=True)
class DetTrainConfig:
    """Detector training hyper-parameters (the recipes are :data:`DET_RECIPES`)."""

    recipe: str = "custom"  # where the defaults came from
    lr: float = 3e-4  # peak learning rate (after the warmup)
    epochs: int = 10
    batch_size: int = 8  # global: split over the processes under torchrun
    weight_decay: float = 0.05  # on weight matrices and conv kernels (not on norms, biases, position tables)
    warmup_steps: int = 100  # linear warmup from warmup_factor * lr
    warmup_factor: float = 0.001
    cosine: bool = True  # cosine decay to min_lr_ratio * lr over the remaining steps (else constant)
    min_lr_ratio: float = 0.0
    clip_grad: float | None = None  # max gradient norm (None: no clipping)
    seed: int = 0  # model initialisation (without weights), shuffling, flips and sampling
    hflip: bool = True  # random horizontal flips of the training frames
    max_steps: int | None = None  # at most this many optimiser steps per epoch (smoke tests)
    eval_every: int = 1  # validate every N epochs (and after the last one)
    val_frames: int | None = None  # validate on the first N frames of the validation set (None: all)
    val_batch_size: int = 8
    head: FRCNNTrainConfig = field(default_factory=FRCNNTrainConfig)  # anchor / RoI matching and sampling
    workers: int = 0  # DataLoader worker processes (0: load in the main process)
    precision: str = "fp32"  # or "bf16": mixed-precision forward passes (rgtp.training.common.PRECISIONS)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not (math.isfinite(self.lr) and self.lr > 0) or self.epochs < 1 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("lr must be a finite number > 0, epochs >= 1, batch_size >= 1 and workers >= 0")
        if self.weight_decay < 0 or self.warmup_steps < 0 or not 0.0 < self.warmup_factor <= 1.0:
            raise ConfigError("weight_decay and warmup_steps must be >= 0, warmup_factor in (0, 1]")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or (self.clip_grad is not None and self.clip_grad <= 0):
            raise ConfigError("min_lr_ratio must lie in [0, 1] and clip_grad be > 0 or None")
        for name in ("max_steps", "val_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {value}")
        if self.eval_every < 1 or self.val_batch_size < 1:
            raise ConfigError("eval_every and val_batch_size must be >= 1")


# shapes: measured on 2 shared CPU cores (1 thread, ~1.2-2.4 s a step): 5 epochs of 192 steps in 26 minutes, val
# mAP50 (first 144 frames) 13.6 / 34.9 / 37.8 / 39.5 / 39.9 after epochs 1-5; lr 1e-3 learnt nothing in its first
# epoch. The localisation is good (disc, ring AP50 60-80); telling squares, triangles, stars and crosses apart needs
# more steps than this budget. Later, on 2 idle cores (2 threads, ~120 s an epoch): 12 epochs on 64 training sequences
# reached their best val mAP50 (52.7) at epoch 6 and then overfit. With 256 sequences (768 steps an epoch, bf16,
# ~380 s an epoch) val mAP50 on all 288 frames was 61.1 / 73.4 / 74.4 after epochs 1-3 (test 80.7), against 60.4 /
# 69.4 for a 2-epoch schedule (test 72.6). pedestrians (one class): 10 epochs of 69 steps, ~88 s an epoch.
DET_RECIPES: dict[str, DetTrainConfig] = {
    "shapes": DetTrainConfig("shapes", lr=5e-4, epochs=3, batch_size=8, warmup_steps=100, precision="bf16"),
    "pedestrians": DetTrainConfig("pedestrians", lr=5e-4, epochs=10, batch_size=8, warmup_steps=100),
}


DET_SPLITS: dict[str, tuple[str, str]] = {"shapes": ("train", "val"), "pedestrians": ("train", "val")}  # (train, val)


def det_recipe(name: str, **overrides: Any) -> DetTrainConfig:
    """The recipe's config with every override that is not None applied."""
    if name not in DET_RECIPES:
        raise ConfigError(f"unknown detection recipe {name!r}; known: {sorted(DET_RECIPES)}")
    return dataclasses.replace(DET_RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def lr_factor(cfg: DetTrainConfig, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``, as a fraction of ``cfg.lr``."""
    return lr_schedule(step, total, cfg.warmup_steps, cfg.cosine, cfg.warmup_factor, cfg.min_lr_ratio)


# ---------------------------------------------------------------------------------------------------------------------
# Samples


@dataclass
class _Sample:
    image: Tensor  # (3, S, S) normalised, padded
    boxes: Tensor  # (G, 4) xyxy in input pixels
    labels: Tensor  # (G,)
    scale: float  # frame pixels -> input pixels
    seed: int  # of the sample's anchor / RoI sampling


class FrameSamples(Dataset):
    """The frames of a detection set as samples: key (frame index, epoch) -> :class:`_Sample` (training: random flip,
    seeded by (seed, epoch, index)); ``frames`` are the (sequence, frame) pairs in order."""

    def __init__(self, data: DetectionSet, size: int, train: bool, hflip: bool = False, seed: int = 0) -> None:
        self.data, self.size, self.train, self.hflip, self.seed = data, size, train, hflip, seed
        self.frames = [(s, t) for s, seq in enumerate(data.sequences) for t in range(len(seq))]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: tuple[int, int]) -> _Sample:
        index, epoch = key
        s, t = self.frames[index]
        seq = self.data.sequences[s]
        image, scale = preprocess_frame(torch.from_numpy(np.ascontiguousarray(seq.frames[t])), self.size)
        boxes = torch.as_tensor(seq.boxes[t], dtype=torch.float32).reshape(-1, 4) * scale  # (G, 4)
        labels = torch.as_tensor(seq.labels[t], dtype=torch.long).reshape(-1)
        keep = nonempty(boxes)
        boxes, labels = boxes[keep], labels[keep]
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.train and self.hflip and rng.random() < 0.5:
            nh, nw = resize_shape(*seq.size, self.size)
            image[:, :nh, :nw] = image[:, :nh, :nw].flip(-1)  # the frame, not the padding
            boxes = torch.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], dim=1)
        return _Sample(image, boxes, labels, scale, int(rng.integers(2**62)))


@dataclass
class _Batch:
    indices: list[int]
    images: Tensor | None  # (n, 3, S, S); None when n == 0
    targets: list[tuple[Tensor, Tensor]]
    scales: list[float]
    seeds: list[int]


def _collate(items: list[tuple[int, _Sample]]) -> _Batch:
    images = torch.stack([it.image for _, it in items]) if items else None
    return _Batch(
        [i for i, _ in items],
        images,
        [(it.boxes, it.labels) for _, it in items],
        [it.scale for _, it in items],
        [it.seed for _, it in items],
    )


def _describe(data: DetectionSet, frames: int | None = None) -> dict[str, Any]:
    return {**data.describe(), "frames_used": min(frames, data.num_frames) if frames else data.num_frames}


# ---------------------------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def evaluate_detector(
    model: ViTDet,
    data: DetectionSet,
    info: DistInfo | None = None,
    max_frames: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """COCO mAP50 and mAP (in %) of the dense model on the first ``max_frames`` frames of ``data`` (all if None),
    frame by frame; sharded over the processes and gathered (every process gets the metrics)."""
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = FrameSamples(data, model.cfg.img_size, train=False)
    n = min(len(samples), max_frames or len(samples))
    mine = list(shard(n, info))
    rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    bar = progress_bar(len(mine), "validation", progress and info.main, "frame")
    try:
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        for batch in keyed_loader(samples, batches, 0, 0, _collate):
            assert batch.images is not None
            for i, det, scale in zip(
                batch.indices, model.detect(model(batch.images.to(device))), batch.scales, strict=True
            ):
                boxes = (det.boxes.float() / scale).cpu().numpy()  # (K, 4) in frame pixels
                rows.append((i, boxes, det.scores.float().cpu().numpy(), det.labels.cpu().numpy()))
            bar.update(len(batch.indices))
    finally:
        bar.close()
    model.train(was_training)
    rows = sorted((r for part in gather(rows, info) for r in part), key=lambda r: r[0])
    gt = []
    for index in range(n):
        s, t = samples.frames[index]
        seq = data.sequences[s]
        gt.append((np.asarray(seq.boxes[t], dtype=np.float64).reshape(-1, 4), np.asarray(seq.labels[t])))
    metrics = coco_map(gt, [(b, sc, lab) for _, b, sc, lab in rows], data.classes)
    return {
        "frames": n,
        "map50": 100.0 * metrics.map50,
        "map": 100.0 * metrics.map,
        "detections": metrics.num_detections,
        "per_class_ap50": {k: None if v is None else 100.0 * v for k, v in metrics.per_class_ap50.items()},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Training


class _HeadLosses(nn.Module):
    """model(images) -> the head's summed loss terms (the module DDP wraps)."""

    def __init__(self, model: ViTDet, train: FRCNNTrainConfig) -> None:
        super().__init__()
        self.model, self.train_cfg = model, train

    def forward(self, images: Tensor, targets: list[tuple[Tensor, Tensor]], seeds: list[int]) -> Any:
        assert self.model.head is not None
        size = (self.model.cfg.img_size, self.model.cfg.img_size)
        return self.model.head.loss_terms(self.model(images), targets, size, self.train_cfg, seeds)


@dataclass
class _State:
    epoch: int = 0  # last finished epoch
    step: int = 0  # optimiser steps done
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and conv kernels only (not on norms, biases and position tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim < 2 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_detector(preset: Preset, weights: str | Path | None, device: str, seed: int) -> ViTDet:
    """The preset's ViTDet with a detection head (weights loaded strictly if given, else random from ``seed``)."""
    if not isinstance(preset.model, ViTDetConfig) or preset.model.head is None:
        raise ConfigError(f"preset {preset.name} is not a ViTDet with a detection head")
    model = build_model(preset, device, seed=seed)
    assert isinstance(model, ViTDet)
    if weights is None:
        logger.info("no weights given: training %s from random weights (seed %d)", preset.name, seed)
    else:
        load_weights(model, weights)
    return model


def train_vitdet(
    train_set: DetectionSet,
    val_set: DetectionSet,
    out_dir: str | Path,
    preset: Preset,
    cfg: DetTrainConfig | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Train the ViTDet detector of ``preset`` on ``train_set`` frames, validating on ``val_set`` (see the module doc).

    Resumable; runs under ``torchrun`` (call :func:`rgtp.evaluation.dist.cleanup` afterwards). ``best`` of the result
    is {"epoch": e, "map50": %}.
    """
    cfg = cfg or DetTrainConfig()
    info, device = setup(device)
    model = build_detector(preset, weights, device, cfg.seed)
    assert model.head is not None
    for name, data in (("training", train_set), ("validation", val_set)):
        if len(data.classes) != model.head.cfg.num_classes:
            raise ValueError(
                f"the {name} set has {len(data.classes)} classes; the model predicts {model.head.cfg.num_classes}"
            )
    if train_set.num_frames == 0:
        raise ValueError("the training set has no frames")
    out = run_directory(out_dir)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    identity = plain(
        {
            "kind": "vitdet",
            "preset": to_dict(preset),
            "weights": weights_name(weights),
            "data": {"train": _describe(train_set), "val": _describe(val_set, cfg.val_frames)},
            "train": resume_settings(cfg),
        }
    )
    state = _resume(out, identity, model, opt)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"run": identity, "config": to_dict(cfg)})
    samples = FrameSamples(train_set, model.cfg.img_size, True, cfg.hflip, cfg.seed)
    logger.info(
        "training %s on %d frames (%d sequences), validating on %d frames: %s",
        preset.name,
        len(samples),
        len(train_set),
        _describe(val_set, cfg.val_frames)["frames_used"],
        cfg,
    )
    module = _HeadLosses(model, cfg.head)
    ddp: nn.Module = module
    if info.world > 1:
        ddp = nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.startswith("cuda") else None)
    if state.epoch >= cfg.epochs:
        logger.info("%s: already trained for %d epoch(s)", out, state.epoch)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        start = time.perf_counter()
        train = _train_epoch(ddp, model, samples, cfg, opt, state, epoch, info, progress)
        train["train_seconds"] = round(time.perf_counter() - start, 3)
        _end_epoch(model, val_set, cfg, opt, out, info, state, identity, epoch, train, progress)
    if ddp is not module:  # free DDP's reducer before the process group goes away (see rgtp.training.loop.fit)
        del ddp
        gc.collect()
    model.eval()
    return FitResult(out, state.history, state.best)


def _steps_per_epoch(cfg: DetTrainConfig, n: int) -> int:
    return min(math.ceil(n / cfg.batch_size), cfg.max_steps or n)


def _train_epoch(
    ddp: nn.Module,
    model: ViTDet,
    samples: FrameSamples,
    cfg: DetTrainConfig,
    opt: torch.optim.Optimizer,
    state: _State,
    epoch: int,
    info: DistInfo,
    progress: bool,
) -> dict[str, Any]:
    """One pass over the shuffled frames; returns the mean of every loss term over the steps, and the step count."""
    batches = epoch_batches(len(samples), cfg.batch_size, cfg.seed, epoch, cfg.max_steps)
    total_steps = cfg.epochs * _steps_per_epoch(cfg, len(samples))
    torch.manual_seed(rank_seed(cfg.seed, epoch, info.rank))
    model.train()
    device = next(model.parameters()).device
    sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)  # per term: sum over steps of this process's share
    lr = cfg.lr
    bar = progress_bar(len(batches), f"epoch {epoch}/{cfg.epochs}", progress and info.main, "step")
    try:
        for batch in keyed_loader(samples, [b[info.rank :: info.world] for b in batches], epoch, cfg.workers, _collate):
            lr = cfg.lr * lr_factor(cfg, state.step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            sums += _step(ddp, model, cfg, opt, batch, info, device)
            state.step += 1
            bar.update(1)
    finally:
        bar.close()
    sums = all_sum(sums, info, device)
    steps = len(batches)
    losses = {k: v / max(steps, 1) for k, v in zip(LOSS_NAMES, sums.tolist(), strict=True)}
    return {"steps": steps, "step": state.step, "lr": lr, "loss": sum(losses.values()), **losses}


def _step(
    ddp: nn.Module,
    model: ViTDet,
    cfg: DetTrainConfig,
    opt: torch.optim.Optimizer,
    batch: _Batch,
    info: DistInfo,
    device: str | torch.device,
) -> Tensor:
    """One optimiser step on this process's part of a global batch; its share of each global-batch loss term."""
    if batch.images is None:  # no frame here: a zero-weighted dummy keeps this process in the all-reduce
        size = model.cfg.img_size
        images, targets, seeds, weight = torch.zeros(1, 3, size, size), [(torch.zeros(0, 4), torch.zeros(0))], [0], 0.0
    else:
        images, targets, seeds, weight = batch.images, batch.targets, batch.seeds, 1.0
    with training_autocast(cfg.precision, device):
        terms = ddp(images.to(device), targets, seeds)
    local = torch.tensor([terms.counts[k] * weight for k in LOSS_NAMES], dtype=torch.float64)
    counts = all_sum(local, info, device).clamp(min=1.0)  # the normalisers of the global batch
    parts = [terms.sums[k] * (weight * info.world / counts[i].item()) for i, k in enumerate(LOSS_NAMES)]
    loss = sum(parts)
    check_finite(loss, info, device)  # type: ignore[arg-type]
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[union-attr]
    if cfg.clip_grad is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    return torch.tensor([p.item() / info.world for p in parts], dtype=torch.float64)


def _end_epoch(
    model: ViTDet,
    val_set: DetectionSet,
    cfg: DetTrainConfig,
    opt: torch.optim.Optimizer,
    out: Path,
    info: DistInfo,
    state: _State,
    identity: dict[str, Any],
    epoch: int,
    train: dict[str, Any],
    progress: bool,
) -> None:
    """Validate (every ``eval_every`` epochs and after the last), update history and best, write the run files."""
    val = None
    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
        start = time.perf_counter()
        val = evaluate_detector(model, val_set, info, cfg.val_frames, cfg.val_batch_size, progress)
        val["val_seconds"] = round(time.perf_counter() - start, 3)
    state.epoch = epoch
    state.history.append({"epoch": epoch, **train, "val": val})
    improved = val is not None and (not state.best or val["map50"] > state.best["map50"])
    if improved:
        assert val is not None
        state.best = {"epoch": epoch, "map50": val["map50"], "map": val["map"]}
    if info.main:
        checkpoint = {
            "format": _CHECKPOINT_FORMAT,
            "identity": identity,
            "epoch": epoch,
            "step": state.step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "history": state.history,
            "best": state.best,
        }
        meta = {"epoch": epoch, "val": val, "kind": "vitdet"}
        write_epoch_files(out, model, meta, improved, state.history, checkpoint)
    barrier()
    shown = "not validated" if val is None else f"val mAP50 {val['map50']:.2f} mAP {val['map']:.2f}"
    best = f"best mAP50 {state.best['map50']:.2f} at epoch {state.best['epoch']}" if state.best else "no best yet"
    logger.info(
        "epoch %d: loss %.4f (rpn %.4f + %.4f, roi %.4f + %.4f), lr %.2e, %d steps in %.0f s; %s (%s)",
        epoch,
        train["loss"],
        *(train[k] for k in LOSS_NAMES),
        train["lr"],
        train["steps"],
        train["train_seconds"],
        shown,
        best,
    )


def _resume(out: Path, identity: dict[str, Any], model: ViTDet, opt: torch.optim.Optimizer) -> _State:
    obj = read_checkpoint(out, identity, _CHECKPOINT_FORMAT)
    if obj is None:
        return _State()
    model.load_state_dict(obj["model"])
    opt.load_state_dict(obj["optimizer"])
    logger.info("resuming %s after epoch %d (step %d)", out, obj["epoch"], obj["step"])
    return _State(obj["epoch"], obj["step"], obj["history"], obj["best"])
