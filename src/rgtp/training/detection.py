"""Training a ViTDet detector (backbone, simple pyramid and Faster R-CNN head) on in-memory detection sets.

Samples are single frames: every frame of every training sequence, preprocessed exactly as at inference
(:func:`~rgtp.models.vitdet.preprocess_frame`: resize, normalise, zero-pad to the square input), ground-truth boxes
scaled by the same factor, with an optional random horizontal flip (within the resized width, not the padded one).
The losses are the Faster R-CNN head's (:meth:`~rgtp.models.frcnn.FasterRCNN.loss_terms`); AdamW (weight decay on
weight matrices and conv kernels only) with a linear warmup and a cosine decay per step.

:class:`DetectorTask` is the task of the loop of :mod:`rgtp.training.loop` (shuffling, global batches under
``torchrun``, resumable run directory, the same as ViViT training's):

* each loss term is a sum over the process's frames divided by the term's normaliser summed over the processes, times
  the world size: after DDP averages the gradients, N processes make the update of one. A sample's flip and its
  anchor/RoI sampling are seeded by (seed, epoch, frame), so they do not depend on the batch or the process either.
* validation runs the dense model frame by frame on the validation set (or its first ``val_frames`` frames), sharded
  over the processes, and scores COCO mAP50 / mAP (:func:`rgtp.metrics.coco_map`, boxes in frame pixels), every
  ``eval_every`` epochs and after the last; the best epoch is the one with the highest mAP50. There is no validation
  before training.
* ``history.jsonl`` has one line per epoch: the mean of every loss term over the steps, their sum, the last learning
  rate, the steps (of the epoch and of the run), seconds and the validation (None when not validated);
  ``checkpoint.pt`` holds the whole model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from rgtp.build import build_model, load_weights
from rgtp.config import ConfigError, Preset, TrainPrecision, ViTDetConfig, check_literals, to_dict
from rgtp.data.detection import DetectionSet
from rgtp.evaluation.dist import DistInfo, gather, setup, shard
from rgtp.metrics import coco_map
from rgtp.models.frcnn import FRCNNTrainConfig
from rgtp.models.vitdet import ViTDet, preprocess_frame, resize_shape
from rgtp.ops import nonempty
from rgtp.progress import progress_bar
from rgtp.training.common import weights_name
from rgtp.training.loop import Batch, FitResult, TrainTask, all_sum, fit, keyed_loader, lr_schedule, resume_settings

__all__ = [
    "DetTrainConfig",
    "DetectorTask",
    "FrameSamples",
    "build_detector",
    "evaluate_detector",
    "lr_factor",
    "train_vitdet",
]

logger = logging.getLogger(__name__)

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")


@dataclass(frozen=True)
class DetTrainConfig:
    """Detector training hyper-parameters (the small shipped detectors' recipes: :mod:`rgtp.lab.recipes`)."""

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
    precision: TrainPrecision = "fp32"  # or "bf16": mixed-precision forward passes

    def __post_init__(self) -> None:
        check_literals(self)
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
class _FrameBatch(Batch):
    images: Tensor | None  # (n, 3, S, S); None when n == 0
    targets: list[tuple[Tensor, Tensor]]
    scales: list[float]
    seeds: list[int]


def _collate(items: list[tuple[int, _Sample]]) -> _FrameBatch:
    images = torch.stack([it.image for _, it in items]) if items else None
    return _FrameBatch(
        [i for i, _ in items],
        {},
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


class DetectorTask(TrainTask):
    """A ViTDet detector to train on the frames of ``train_data``, validated on ``val_data`` (see the module doc)."""

    kind = "vitdet"
    collate = staticmethod(_collate)
    num_stats: ClassVar[int] = len(LOSS_NAMES)  # this process's share of each global-batch loss term
    best_keys: ClassVar[tuple[str, ...]] = ("map50", "map")

    def __init__(
        self, cfg: DetTrainConfig, model: ViTDet, train_data: DetectionSet, val_data: DetectionSet, source: dict
    ) -> None:
        self.cfg, self.model, self.val_data, self.source = cfg, model, val_data, source
        self.module = _HeadLosses(model, cfg.head)
        self.train_set = FrameSamples(train_data, model.cfg.img_size, True, cfg.hflip, cfg.seed)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.source, "train": resume_settings(self.cfg)}

    def param_groups(self) -> list[dict[str, Any]]:
        return _param_groups(self.model, self.cfg.weight_decay)

    def loss(
        self, ddp: nn.Module, batch: _FrameBatch, total: float, info: DistInfo, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """The sum of the loss terms, each normalised over the global batch (times the world size)."""
        if batch.images is None:  # no frame here: a zero-weighted dummy keeps this process in the all-reduce
            size = self.model.cfg.img_size
            images, targets, seeds = torch.zeros(1, 3, size, size), [(torch.zeros(0, 4), torch.zeros(0))], [0]
            weight = 0.0
        else:
            images, targets, seeds, weight = batch.images, batch.targets, batch.seeds, 1.0
        terms = ddp(images.to(device), targets, seeds)
        local = torch.tensor([terms.counts[k] * weight for k in LOSS_NAMES], dtype=torch.float64)
        counts = all_sum(local, info, device).clamp(min=1.0)  # the normalisers of the global batch
        parts = [terms.sums[k] * (weight * info.world / counts[i].item()) for i, k in enumerate(LOSS_NAMES)]
        stats = torch.tensor([p.item() / info.world for p in parts], dtype=torch.float64)
        return sum(parts), stats  # type: ignore[return-value]

    def summary(self, sums: Tensor, steps: int, step: int, lr: float) -> dict[str, Any]:
        losses = {k: v / max(steps, 1) for k, v in zip(LOSS_NAMES, sums.tolist(), strict=True)}
        return {"steps": steps, "step": step, "lr": lr, "loss": sum(losses.values()), **losses}

    def validate(self, epoch: int, info: DistInfo, progress: bool) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """Every ``eval_every`` epochs and after the last."""
        cfg = self.cfg
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            return evaluate_detector(self.model, self.val_data, info, cfg.val_frames, cfg.val_batch_size, progress), {}
        return None, {}

    def weights(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_weights(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])

    def log_epoch(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, best: dict[str, Any]) -> None:
        shown = "not validated" if val is None else f"val mAP50 {val['map50']:.2f} mAP {val['map']:.2f}"
        so_far = f"best mAP50 {best['map50']:.2f} at epoch {best['epoch']}" if best else "no best yet"
        logger.info(
            "epoch %d: loss %.4f (rpn %.4f + %.4f, roi %.4f + %.4f), lr %.2e, %d steps in %.0f s; %s (%s)",
            epoch,
            train["loss"],
            *(train[k] for k in LOSS_NAMES),
            train["lr"],
            train["steps"],
            train["train_seconds"],
            shown,
            so_far,
        )


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
    is {"epoch": e, "map50": %, "map": %}.
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
    source = {
        "preset": to_dict(preset),
        "weights": weights_name(weights),
        "data": {"train": _describe(train_set), "val": _describe(val_set, cfg.val_frames)},
    }
    task = DetectorTask(cfg, model, train_set, val_set, source)
    logger.info(
        "training %s on %d frames (%d sequences), validating on %d frames: %s",
        preset.name,
        len(task.train_set),
        len(train_set),
        _describe(val_set, cfg.val_frames)["frames_used"],
        cfg,
    )
    result = fit(task, out_dir, info, progress)
    model.eval()
    return result
