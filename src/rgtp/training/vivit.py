"""ViViT training: the classification task that temporal fine-tuning and whole-model training share, its config and
recipes, and whole-model training on decoded clips.

* :class:`TrainConfig`, and the recipes by name (:data:`RECIPES`: the paper's ``k400`` and ``epic``, method §12.5;
  the lab adds the small motions ViViT's, :mod:`rgtp.lab.recipes`, with :func:`register_recipe`).
* :class:`ClassifierTask`, the task of :mod:`rgtp.training.loop`: a ViViT with some of its parameters trainable and a
  module that maps a batch of samples ``(B, views, ...)`` to logits averaged over the views (:class:`ViewAveraged`).
  The loss is the per-sample cross-entropy of the averaged logits (plus the noun head's with ``train_nouns``);
  ``double_softmax`` reproduces the reference's quirk (cross-entropy of the softmax probabilities, method §13.13).
  Validation (top-1, top-5, cross-entropy; noun and action top-1 with a noun head) runs before training and after
  every epoch; the best epoch has the best validation top-1, and ``stop_top1`` ends training early.
  :func:`~rgtp.training.temporal.temporal_job` makes the task on cached features, :func:`vivit_job` on decoded clips.
* Whole-model training (:func:`train_vivit`, every parameter trainable). Training samples are one random view per
  clip: a random temporal start, the preset's frame count and stride, the same normalisation and short-side resize
  as the evaluation views (method §12.2), a random square crop and a random horizontal flip. The randomness of a
  sample is seeded by (seed, epoch, clip index), so it does not depend on the number of processes or DataLoader
  workers, and a resumed run sees the same samples. Validation uses the deterministic multi-view protocol
  (:func:`~rgtp.data.action.preset_views`). Clips that cannot be read are skipped, counted and listed in
  ``RUN/failed.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from rgtp.config import ConfigError, Preset, TrainPrecision, ViViTConfig, check_literals, to_dict
from rgtp.data.action import ActionDataError, ActionDataset, preset_views
from rgtp.data.views import normalize_resize, pad_frames
from rgtp.evaluation.dist import DistInfo, gather, setup, shard
from rgtp.models.vivit import ViViT
from rgtp.progress import progress_bar
from rgtp.training.common import build_vivit, fingerprint, weights_name
from rgtp.training.loop import (
    Batch,
    Failure,
    FitResult,
    TrainTask,
    fit,
    gather_dict,
    keyed_loader,
    resume_settings,
)

__all__ = [
    "RECIPES",
    "RECIPE_SPLITS",
    "ClassifierTask",
    "ClipSamples",
    "TrainConfig",
    "ViewAveraged",
    "default_splits",
    "make_config",
    "random_view",
    "recipe_for",
    "register_recipe",
    "train_vivit",
    "vivit_job",
]

logger = logging.getLogger(__name__)

TOPK = 5


# ---------------------------------------------------------------------------------------------------------------------
# Config and recipes


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. The recipes (:data:`RECIPES`) are the reference's (method §12.5)."""

    recipe: str = "custom"  # where the defaults came from
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8  # global: split over the processes under torchrun
    weight_decay: float = 0.05
    dropout: float = 0.5  # before the classifier (the reference fine-tunes with 0.5)
    seed: int = 42
    double_softmax: bool = False  # the reference's loss: cross-entropy of the softmax probabilities (method §13.13)
    train_nouns: bool = False  # also train the noun head (with a noun cross-entropy) when model and data have nouns
    max_steps: int | None = None  # at most this many optimiser steps per epoch (smoke tests)
    val_batch_size: int | None = None  # clips per validation batch (None: the task's default)
    workers: int = 0  # DataLoader worker processes (0: load in the main process)
    warmup_steps: int = 0  # linear warmup (0: none; the paper's recipes use a constant learning rate)
    cosine: bool = False  # cosine decay to 0 after the warmup (training from scratch)
    clip_grad: float | None = None  # max gradient norm (None: no clipping)
    precision: TrainPrecision = "fp32"  # or "bf16": mixed-precision forward passes
    stop_top1: float | None = None  # end training after the first epoch whose val top-1 reaches this (early stop)

    warmup_factor: ClassVar[float] = 0.001  # the warmup starts at this fraction of lr (fixed: not a setting)
    min_lr_ratio: ClassVar[float] = 0.0  # the cosine decays to this fraction of lr (fixed: not a setting)

    def __post_init__(self) -> None:
        check_literals(self)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("epochs must be >= 1, batch_size >= 1 and workers >= 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("weight_decay must be a finite number >= 0 and dropout in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ConfigError(f"val_batch_size must be >= 1 or None, got {self.val_batch_size}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"clip_grad must be > 0 or None, got {self.clip_grad}")
        if self.stop_top1 is not None and not 0.0 < self.stop_top1 <= 100.0:
            raise ConfigError(f"stop_top1 must be in (0, 100] or None, got {self.stop_top1}")


#: Recipes by name: the paper's (method §12.5); :func:`register_recipe` adds others.
RECIPES: dict[str, TrainConfig] = {
    "k400": TrainConfig("k400", lr=2e-6, epochs=10, batch_size=16),
    "epic": TrainConfig("epic", lr=1e-5, epochs=5, batch_size=8),
}
#: (train, validation) split names of each recipe's dataset.
RECIPE_SPLITS: dict[str, tuple[str, str]] = {"k400": ("train", "val"), "epic": ("train", "validation")}
_RECIPE_BY_CLASSES: dict[int, str] = {400: "k400", 97: "epic"}  # a classifier's size -> its recipe


def register_recipe(cfg: TrainConfig, splits: tuple[str, str], num_classes: int | None = None) -> None:
    """Add the recipe ``cfg`` (named ``cfg.recipe``) with its dataset's (train, validation) ``splits``; with
    ``num_classes``, :func:`recipe_for` infers it for a classifier of that size."""
    RECIPES[cfg.recipe] = cfg
    RECIPE_SPLITS[cfg.recipe] = splits
    if num_classes is not None:
        _RECIPE_BY_CLASSES[num_classes] = cfg.recipe


def recipe_for(preset: Preset, name: str | None = None) -> str:
    """The recipe ``name``, or the one that fits the preset's classifier (400 classes: k400, 97: epic)."""
    if name is None:
        cfg = preset.model
        num_classes = cfg.num_classes if isinstance(cfg, ViViTConfig) else None
        name = _RECIPE_BY_CLASSES.get(num_classes) if num_classes is not None else None
        if name is None:
            raise ConfigError(f"cannot infer a recipe for preset {preset.name}: give one of {sorted(RECIPES)}")
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return name


def default_splits(cfg: TrainConfig, preset: Preset) -> tuple[str, str]:
    """(train, validation) split names of the config's recipe (or of the preset's, for a custom config)."""
    return RECIPE_SPLITS[cfg.recipe if cfg.recipe in RECIPE_SPLITS else recipe_for(preset)]


def make_config(recipe: str, **overrides: Any) -> TrainConfig:
    """The recipe's config with every override that is not None applied."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
    return dataclasses.replace(RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------------
# The classification task


Item = tuple[Tensor, int, int] | Failure  # (inputs (views, ...), label, noun (-1: none)) or a failure


@dataclass
class _ClipBatch(Batch):
    inputs: Tensor | None  # (n, views, ...), None when n == 0
    labels: Tensor  # (n,)
    nouns: Tensor  # (n,), -1: none


def _collate(items: list[tuple[int, Item]]) -> _ClipBatch:
    ok = [(i, it) for i, it in items if not isinstance(it, Failure)]
    failed = {it.id: it.error for _, it in items if isinstance(it, Failure)}
    inputs = torch.stack([it[0] for _, it in ok]) if ok else None  # type: ignore[index]
    labels = torch.tensor([it[1] for _, it in ok], dtype=torch.long)  # type: ignore[index]
    nouns = torch.tensor([it[2] for _, it in ok], dtype=torch.long)  # type: ignore[index]
    return _ClipBatch([i for i, _ in ok], failed, inputs, labels, nouns)


class ViewAveraged(nn.Module):
    """A clip's views through the model, logits averaged over the views: the whole ViViT on decoded views, or
    (``temporal_only``) the temporal encoder and classifier on cached spatial features."""

    def __init__(self, model: ViViT, temporal_only: bool) -> None:
        super().__init__()
        self.model, self.temporal_only = model, temporal_only

    def forward(self, x: Tensor) -> Tensor:
        """(B, views, ...) -> (B, classes [+ nouns]); ``...`` is (steps, C) or (3, F, H, W)."""
        b, v = x.shape[:2]
        flat = x.flatten(0, 1)  # (B * views, ...)
        logits = self.model.classify(flat) if self.temporal_only else self.model(flat)  # (B * views, K)
        return logits.view(b, v, -1).mean(dim=1)  # (B, K)


@dataclass
class ClassifierTask(TrainTask):
    """A ViViT classifier to train (see the module docstring)."""

    kind: str  # "temporal" or "vivit"
    cfg: TrainConfig
    model: ViViT  # on its device; the parameters to optimise have requires_grad
    module: nn.Module  # (B, views, ...) -> (B, classes [+ nouns]) logits averaged over the views; wraps ``model``
    train_set: Any  # [(index, epoch)] -> Item
    val_set: Any  # [(index, 0)] -> Item
    sample_shape: tuple[int, ...]  # one training sample's inputs (views, ...): the dummy of an empty process
    source: dict[str, Any]  # what the run trains on (preset, weights, data): must match to resume
    nouns: bool = False  # train and score the noun head
    val_batch_size: int = 1  # default clips per validation batch

    collate = staticmethod(_collate)
    num_stats: ClassVar[int] = 2  # (sum of the per-sample losses, samples)
    best_keys: ClassVar[tuple[str, ...]] = ("top1",)
    validate_first: ClassVar[bool] = True

    def identity(self) -> dict[str, Any]:
        trainable = sorted({n.split(".")[0] for n, p in self.model.named_parameters() if p.requires_grad})
        settings = resume_settings(self.cfg)
        return {"kind": self.kind, **self.source, "trainable": trainable, "nouns": self.nouns, "train": settings}

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: no parameter requires a gradient")
        return [{"params": params, "weight_decay": self.cfg.weight_decay}]

    def loss(
        self, ddp: nn.Module, batch: _ClipBatch, total: float, info: DistInfo, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """The global-batch mean of the per-sample losses, times the world size (DDP averages over processes)."""
        if batch.inputs is None:  # no sample here: a zero-weighted dummy keeps this process in the all-reduce
            inputs = torch.zeros(1, *self.sample_shape, device=device)
            labels = torch.zeros(1, dtype=torch.long, device=device)
            nouns, weight = torch.full((1,), -1, dtype=torch.long, device=device), 0.0
        else:
            inputs, labels, nouns = batch.inputs.to(device), batch.labels.to(device), batch.nouns.to(device)
            weight = 1.0
        per_sample = _losses(self.model, ddp(inputs), labels, nouns, self.nouns, self.cfg.double_softmax)  # (n,)
        n = len(batch.indices)
        stats = torch.stack([per_sample.detach()[:n].double().sum().cpu(), torch.tensor(float(n), dtype=torch.float64)])
        return per_sample.sum() * (weight * info.world / total), stats

    def summary(self, sums: Tensor, steps: int, step: int, lr: float) -> dict[str, Any]:
        loss_sum, n_seen = sums
        return {
            "train_loss": loss_sum.item() / max(n_seen.item(), 1.0),
            "train_samples": int(n_seen.item()),
            "steps": steps,
        }

    def validate(self, epoch: int, info: DistInfo, progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
        metrics, failed = _validate(self, info, progress)
        metrics["failed"] = len(failed)
        return metrics, failed

    def record(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None) -> dict[str, Any]:
        return {"epoch": epoch, **train, "lr": self.cfg.lr, "val": val}

    def stop(self, history: list[dict[str, Any]]) -> bool:
        """Whether a trained epoch (not the validation before training) reached ``cfg.stop_top1``."""
        stop_top1 = self.cfg.stop_top1
        if stop_top1 is None:
            return False
        reached = [h for h in history if h["epoch"] >= 1 and h["val"]["top1"] >= stop_top1]
        if reached:
            logger.info("val top-1 reached stop_top1 %.2f at epoch %d: stopping", stop_top1, reached[0]["epoch"])
        return bool(reached)

    def weights(self) -> dict[str, Any]:
        return {"trainable": {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}}

    def load_weights(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(checkpoint["trainable"][name])

    def log_epoch(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, best: dict[str, Any]) -> None:
        assert val is not None
        what = "before training" if epoch == 0 else f"epoch {epoch}: train loss {train['train_loss']:.4f},"
        nouns = (
            f" noun top-1 {val['noun_top1']:.2f} action top-1 {val['action_top1']:.2f}" if "noun_top1" in val else ""
        )
        logger.info(
            "%s val top-1 %.2f top-5 %.2f loss %.4f%s (best top-1 %.2f at epoch %d)",
            what,
            val["top1"],
            val["top5"],
            val["loss"],
            nouns,
            best["top1"],
            best["epoch"],
        )


def _cross_entropy(logits: Tensor, target: Tensor, double_softmax: bool) -> Tensor:
    """Per-sample cross-entropy (targets -1 count 0); ``double_softmax``: of the probabilities, as the reference."""
    x = logits.float().softmax(dim=-1) if double_softmax else logits.float()
    return F.cross_entropy(x, target, reduction="none", ignore_index=-1)  # (n,)


def _losses(model: ViViT, logits: Tensor, labels: Tensor, nouns: Tensor, use_nouns: bool, double: bool) -> Tensor:
    """(n, classes [+ nouns]) view-averaged logits -> (n,) losses: the main head's, plus the noun head's."""
    verb, noun = model.split(logits)
    loss = _cross_entropy(verb, labels, double)
    if use_nouns and noun is not None:
        loss = loss + _cross_entropy(noun, nouns, double)
    return loss


@torch.no_grad()
def _validate(task: ClassifierTask, info: DistInfo, progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Validation metrics (in %, over the clips that could be read) and the failed clips, on every process."""
    task.model.eval()
    device = next(task.model.parameters()).device
    mine = list(shard(len(task.val_set), info))
    size = task.cfg.val_batch_size or task.val_batch_size
    batches = [mine[i : i + size] for i in range(0, len(mine), size)]
    rows: list[tuple[int, float, bool, bool, bool, bool]] = []
    failed: dict[str, str] = {}
    bar = progress_bar(len(mine), "validation", progress and info.main, "clip")
    try:
        for batch in keyed_loader(task.val_set, batches, 0, task.cfg.workers, _collate):
            failed.update(batch.failed)
            if batch.inputs is not None:
                logits = task.module(batch.inputs.to(device)).float().cpu()  # (n, classes [+ nouns])
                rows += _score(task.model, logits, batch, task.nouns)
            bar.update(len(batch.indices) + len(batch.failed))
    finally:
        bar.close()
    rows = [r for part in gather(rows, info) for r in part]
    return _summarize(sorted(rows), task.nouns), gather_dict(failed, info)


def _score(
    model: ViViT, logits: Tensor, batch: _ClipBatch, nouns: bool
) -> list[tuple[int, float, bool, bool, bool, bool]]:
    """Per clip: (index, cross-entropy, top-1, top-5, noun top-1, action top-1)."""
    verb, noun = model.split(logits)
    loss = F.cross_entropy(verb, batch.labels, reduction="none")  # (n,)
    top = verb.topk(min(TOPK, verb.shape[-1]), dim=-1).indices  # (n, k)
    hit5 = (top == batch.labels[:, None]).any(dim=-1)
    hit1 = top[:, 0] == batch.labels
    noun_hit = (noun.argmax(dim=-1) == batch.nouns) if nouns and noun is not None else torch.zeros_like(hit1)
    return [
        (i, float(loss[j]), bool(hit1[j]), bool(hit5[j]), bool(noun_hit[j]), bool(hit1[j] and noun_hit[j]))
        for j, i in enumerate(batch.indices)
    ]


def _summarize(rows: list[tuple[int, float, bool, bool, bool, bool]], nouns: bool) -> dict[str, Any]:
    n = len(rows)

    def pct(col: int) -> float:
        return 100.0 * sum(r[col] for r in rows) / max(n, 1)

    metrics: dict[str, Any] = {"clips": n, "top1": pct(2), "top5": pct(3), "loss": sum(r[1] for r in rows) / max(n, 1)}
    if nouns:
        metrics.update(noun_top1=pct(4), action_top1=pct(5))
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Whole-model training on decoded clips


def random_view(video: np.ndarray | Tensor, preset: Preset, rng: np.random.Generator, flip: bool = True) -> Tensor:
    """One random training view of a (T, H, W, 3) uint8 video: -> (3, frames, crop, crop), normalised; flipped
    horizontally with probability 1/2 when ``flip`` (the draw is made either way, so the other draws match)."""
    cfg = preset.model
    assert isinstance(cfg, ViViTConfig)
    span, crop = cfg.num_frames * preset.temporal_stride, cfg.img_size
    x = pad_frames(torch.as_tensor(video), span)
    start = int(rng.integers(0, x.shape[0] - span + 1))
    t = normalize_resize(x[start : start + span : preset.temporal_stride].permute(3, 0, 1, 2), crop)  # (3, F, h, w)
    nh, nw = t.shape[-2:]
    y0, x0 = int(rng.integers(0, nh - crop + 1)), int(rng.integers(0, nw - crop + 1))
    t = t[..., y0 : y0 + crop, x0 : x0 + crop]  # (3, F, crop, crop)
    if rng.random() < 0.5 and flip:
        t = t.flip(-1)
    return t.contiguous()


class ClipSamples(Dataset):
    """Decoded clips as training samples (one random view, (1, 3, F, crop, crop)) or validation samples (the
    preset's views, (views, 3, F, crop, crop)); a clip that cannot be read is a :class:`~rgtp.training.loop.Failure`.
    Keys are (clip index, epoch)."""

    def __init__(self, dataset: ActionDataset, preset: Preset, train: bool, seed: int = 0) -> None:
        self.dataset, self.preset, self.train, self.seed = dataset, preset, train, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        index, epoch = key
        clip = self.dataset[index]
        try:
            video = self.dataset.load(clip)
        except ActionDataError as exc:
            return Failure(clip.id, str(exc))
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            view = random_view(video, self.preset, rng, flip=self.dataset.hflip)
            return view[None], clip.label, clip.noun  # (1, 3, F, crop, crop)
        return preset_views(video, self.preset), clip.label, clip.noun  # (views, 3, F, crop, crop)


def _describe(dataset: ActionDataset) -> dict[str, object]:
    return {
        "dataset": dataset.describe(),  # name, resolved root, decoding options
        "clips": len(dataset),
        "ids": fingerprint(c.id for c in dataset),
    }


def vivit_job(
    train_data: ActionDataset,
    val_data: ActionDataset,
    preset: Preset,
    weights: str | Path | None,
    cfg: TrainConfig,
    device: str = "cpu",
) -> ClassifierTask:
    """The whole-model task: every parameter trainable (the noun head only with ``train_nouns`` and noun labels)."""
    model = build_vivit(preset, weights, device, dropout=cfg.dropout, seed=cfg.seed)
    if len(train_data.classes) != model.cfg.num_classes:
        raise ValueError(
            f"the dataset has {len(train_data.classes)} classes; the model predicts {model.cfg.num_classes}"
        )
    nouns = cfg.train_nouns and model.head_noun is not None and bool(train_data.nouns)
    if model.head_noun is not None and not nouns:
        model.head_noun.requires_grad_(False)
    source = {
        "preset": to_dict(preset),
        "weights": weights_name(weights),
        "data": {"train": _describe(train_data), "val": _describe(val_data)},
    }
    c = model.cfg
    return ClassifierTask(
        "vivit",
        cfg,
        model,
        ViewAveraged(model, temporal_only=False),
        ClipSamples(train_data, preset, True, cfg.seed),
        ClipSamples(val_data, preset, False),
        (1, 3, c.num_frames, c.img_size, c.img_size),
        source,
        nouns=nouns,
    )


def train_vivit(
    train_data: ActionDataset,
    val_data: ActionDataset,
    out_dir: str | Path,
    preset: Preset,
    weights: str | Path | None = None,
    cfg: TrainConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Train the whole ViViT of ``preset`` on decoded clips (see the module docstring); resumable, runs under
    ``torchrun``. ``cfg`` defaults to the recipe of the preset. Writes ``out_dir`` (see :mod:`rgtp.training.loop`)."""
    cfg = cfg or make_config(recipe_for(preset))
    info, device = setup(device)
    task = vivit_job(train_data, val_data, preset, weights, cfg, device)
    logger.info("training %s: %d train / %d val clips, %s", preset.name, len(train_data), len(val_data), cfg)
    return fit(task, out_dir, info, progress)
