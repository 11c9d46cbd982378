"""The training loop of every training in rgtp: one :class:`Trainer` for a :class:`TrainTask`; DDP, checkpoints,
resuming.

A task says what is trained and how: the model and the module DDP wraps, the keyed training set and its collate
function, the loss of one step, the validation, and the task's weights in the checkpoint. Two kinds of task use the
loop: ViViT classification (:class:`~rgtp.training.vivit.ClassifierTask`: temporal fine-tuning on cached features,
method §12.5, and whole-model training on decoded clips) and ViTDet detection
(:class:`~rgtp.training.detection.DetectorTask`). :func:`fit` does the rest, the same for both:

* AdamW on the task's parameter groups. Optimiser step ``s`` of the ``total`` steps of the run takes the learning rate
  ``cfg.lr * lr_schedule(s, total, ...)``: a linear warmup over ``cfg.warmup_steps``, then constant (the paper's
  recipes, method §12.5: no schedule) or a cosine decay (``cfg.cosine``). ``s`` counts every global batch of the
  epochs before, so the schedule of an epoch does not depend on how the ones before went.
* Every epoch the training set is shuffled by a permutation seeded with ``seed + epoch`` (the same on every process)
  and cut into global batches of ``batch_size``. Under ``torchrun`` each process takes every world-th sample of each
  global batch. The task's loss divides by the global batch's normalisers (its sample count, or its loss terms'
  counts summed over the processes) and multiplies by the world size: after DDP averages the gradients they equal the
  single-process gradient of the global batch, also for an uneven last batch. A process with no sample in a batch
  runs one zero-weighted dummy sample, so it still joins the gradient all-reduce. With dropout 0, one process and N
  processes give the same weights (up to float rounding).
* A loss that is not finite on any process stops training before the optimiser step (:class:`NonFiniteLossError`).
* The random state is re-seeded at the start of every epoch (from ``seed``, the epoch and the rank), so a run
  resumed from an epoch checkpoint continues exactly as an uninterrupted one would (dropout, flips and sampling
  included).
* The task validates after the epochs it chooses (and, as epoch 0, before training when it asks to), sharded over
  the processes and gathered; the best epoch has the highest value of the task's first ``best_keys`` metric.
* A dataset may return a :class:`Failure` for a sample it cannot read: the sample is skipped, counted and listed.
* Only the first process writes files. Layout of the run directory ``RUN``::

      RUN/config.json      the resolved training config and what the run trains on
      RUN/history.jsonl    one line per epoch (epoch 0: the validation before training, for the tasks that do it)
      RUN/checkpoint.pt    resume state after the last finished epoch: the task's weights (the trainable parameters,
                           or the whole model), optimiser, steps, history, best epoch, failed samples
      RUN/last.pt          full-model weights {"model": state dict, "rgtp_meta": ...} after the last epoch
                           (rgtp.build.load_weights)
      RUN/best.pt          the same for the best epoch
      RUN/failed.json      the samples that could not be read, by split (only if there are any)

Starting again with the same ``RUN`` resumes from ``checkpoint.pt``; the number of epochs may grow and the workers
change, anything else that changes the result must match (:class:`~rgtp.evaluation.records.ResumeError` otherwise).
A cosine schedule spans the current number of epochs, so growing it on resume stretches the rest of the schedule.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from rgtp.config import to_dict
from rgtp.evaluation.dist import DistInfo, barrier, gather
from rgtp.evaluation.records import ResumeError, atomic_write_text, plain
from rgtp.progress import progress_bar
from rgtp.training.common import training_autocast

__all__ = [
    "Batch",
    "Failure",
    "FitResult",
    "NonFiniteLossError",
    "TrainTask",
    "Trainer",
    "all_sum",
    "atomic_save",
    "check_finite",
    "epoch_batches",
    "fit",
    "gather_dict",
    "keyed_loader",
    "lr_schedule",
    "rank_seed",
    "read_checkpoint",
    "resume_settings",
    "run_directory",
    "write_epoch_files",
    "write_json",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_FORMAT = 1
_RESUMABLE_CHANGES = ("epochs", "workers", "stop_top1")  # config fields that may differ when a run resumes


# ---------------------------------------------------------------------------------------------------------------------
# Samples and batches


@dataclass(frozen=True)
class Failure:
    """A sample that could not be read (returned by a dataset instead of raising)."""

    id: str
    error: str


@dataclass
class Batch:
    """This process's part of a global batch, as a task's collate function makes it; tasks add their tensors."""

    indices: list[int]  # dataset indices of the samples that could be read
    failed: dict[str, str]  # sample id -> error, for the samples that could not


class _Keyed(Dataset):
    """Pairs every item with its dataset index (the key is (index, epoch))."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        return key[0], self.dataset[key]


def keyed_loader(
    dataset: Any, batches: Sequence[Sequence[int]], epoch: int, workers: int, collate: Callable[[list], Any]
) -> DataLoader:
    """Batches of ``collate([(index, dataset[(index, epoch)]), ...])``, one per list of indices in ``batches``."""
    keys = [[(i, epoch) for i in b] for b in batches]
    return DataLoader(_Keyed(dataset), batch_sampler=keys, collate_fn=collate, num_workers=workers)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, max_steps: int | None = None) -> list[list[int]]:
    """The global batches of an epoch: a permutation of ``range(n)`` seeded by ``seed + epoch`` (the same on every
    process), cut into batches of ``batch_size``, the first ``max_steps`` of them."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)][:max_steps]


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a process's random state for an epoch."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def lr_schedule(
    step: int, total: int, warmup_steps: int, cosine: bool, warmup_factor: float = 0.001, min_ratio: float = 0.0
) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based) of ``total``: linear warmup from ``warmup_factor``
    over ``warmup_steps``, then constant or a cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(total - warmup_steps, 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resume_settings(cfg: Any) -> dict[str, Any]:
    """A training config as plain data, less the fields a resumed run may change (epochs, workers, stop_top1)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE_CHANGES}


# ---------------------------------------------------------------------------------------------------------------------
# The task and the trainer


class TrainTask:
    """What :func:`fit` trains and how. A task sets the attributes below and implements the methods that raise
    :class:`NotImplementedError`.

    ``cfg`` is the training config (:class:`~rgtp.training.vivit.TrainConfig`,
    :class:`~rgtp.training.detection.DetTrainConfig`); the trainer reads its ``lr``, ``epochs``, ``batch_size``,
    ``seed``, ``max_steps``, ``workers``, ``warmup_steps``, ``warmup_factor``, ``cosine``, ``min_lr_ratio``,
    ``clip_grad`` and ``precision``.
    """

    kind: str  # what is trained ("temporal", "vivit", "vitdet"): in the identity and in the weights' rgtp_meta
    cfg: Any
    model: nn.Module  # on its device; the parameters to optimise have requires_grad; saved as last.pt / best.pt
    module: nn.Module  # what a training step calls (DDP wraps it): wraps ``model``
    train_set: Any  # [(index, epoch)] -> a sample (or a Failure)
    collate: Callable[[list[tuple[int, Any]]], Batch]  # a module-level function: DataLoader workers pickle it
    num_stats: ClassVar[int]  # length of the statistics vector of a step (see loss)
    best_keys: ClassVar[tuple[str, ...]]  # validation metrics of the best epoch, ranked by the first (higher: better)
    validate_first: ClassVar[bool] = False  # validate before training, as epoch 0

    def identity(self) -> dict[str, Any]:
        """What the run trains on and with which settings (plain data): a resumed run must have the same."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (with their weight decay)."""
        raise NotImplementedError

    def loss(
        self, ddp: nn.Module, batch: Batch, total: float, info: DistInfo, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``(loss, stats)`` of this process's part of a global batch of ``total`` samples (``batch.indices`` may be
        empty: then a zero-weighted dummy sample). ``loss`` is normalised so that DDP's gradient average is the global
        batch's gradient; ``stats`` is a float64 vector of :attr:`num_stats` values, summed over the steps and the
        processes for :meth:`summary`. Runs under the config's autocast."""
        raise NotImplementedError

    def summary(self, sums: Tensor, steps: int, step: int, lr: float) -> dict[str, Any]:
        """What the history records of an epoch's training: from the ``stats`` summed over its ``steps`` optimiser
        steps and the processes, the steps of the run so far (``step``) and the last learning rate."""
        raise NotImplementedError

    def validate(self, epoch: int, info: DistInfo, progress: bool) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """Validation metrics after ``epoch`` (None: not validated this epoch) and the samples that could not be read;
        on every process."""
        raise NotImplementedError

    def weights(self) -> dict[str, Any]:
        """The task's weights in ``checkpoint.pt`` (e.g. {"model": state dict})."""
        raise NotImplementedError

    def load_weights(self, checkpoint: dict[str, Any]) -> None:
        """Restore :meth:`weights` from a checkpoint."""
        raise NotImplementedError

    def log_epoch(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, best: dict[str, Any]) -> None:
        """Log an epoch's line."""
        raise NotImplementedError

    def record(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None) -> dict[str, Any]:
        """The history line of an epoch."""
        return {"epoch": epoch, **train, "val": val}

    def stop(self, history: list[dict[str, Any]]) -> bool:
        """Whether training ends before the next epoch (an early stop)."""
        return False


@dataclass
class FitResult:
    out_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]  # {"epoch": e, <the task's best_keys>: ...}


@dataclass
class _State:
    epoch: int = -1  # last finished epoch (0: the validation before training); -1: nothing done
    step: int = 0  # optimiser steps done
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=lambda: {"train": {}, "val": {}})


def fit(task: TrainTask, out_dir: str | Path, info: DistInfo, progress: bool = True) -> FitResult:
    """Train ``task`` for ``task.cfg.epochs`` epochs (resuming ``out_dir`` if it holds a checkpoint); see the module
    doc."""
    return Trainer(task, info, progress).fit(out_dir)


class Trainer:
    """The loop of the module doc, for one task on this process."""

    def __init__(self, task: TrainTask, info: DistInfo, progress: bool = True) -> None:
        self.task, self.cfg, self.info, self.progress = task, task.cfg, info, progress
        self.device = next(task.model.parameters()).device

    def fit(self, out_dir: str | Path) -> FitResult:
        task, cfg, info = self.task, self.cfg, self.info
        out = run_directory(out_dir)
        opt = torch.optim.AdamW(task.param_groups(), lr=cfg.lr)
        identity = plain(task.identity())
        state = self._resume(out, identity, opt)
        if info.main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", {"run": identity, "config": to_dict(cfg)})
        ddp: nn.Module = task.module
        if info.world > 1:
            cuda = self.device.type == "cuda"
            ddp = nn.parallel.DistributedDataParallel(task.module, device_ids=[self.device] if cuda else None)
        if state.epoch < 0:
            if task.validate_first:
                self._end_epoch(opt, out, state, identity, 0, {})
            else:
                state.epoch = 0
        if state.epoch >= cfg.epochs:
            logger.info("%s: already trained for %d epoch(s)", out, state.epoch)
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if task.stop(state.history):
                break
            start = time.perf_counter()
            train, failed = self._train_epoch(ddp, opt, state, epoch)
            train["train_seconds"] = round(time.perf_counter() - start, 3)
            if failed:
                shown = ", ".join(list(failed)[:10])
                logger.warning("epoch %d: %d training sample(s) could not be read: %s", epoch, len(failed), shown)
            state.failed["train"].update(failed)
            self._end_epoch(opt, out, state, identity, epoch, train)
        if ddp is not task.module:  # free DDP's reducer (and its pending gloo work) before the process group goes away;
            del ddp  # left to interpreter shutdown it can abort the process
            gc.collect()
        return FitResult(out, state.history, state.best)

    def _train_epoch(
        self, ddp: nn.Module, opt: torch.optim.Optimizer, state: _State, epoch: int
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """One pass over the shuffled training set: the task's summary of it and the samples that could not be read."""
        task, cfg, info, device = self.task, self.cfg, self.info, self.device
        batches = epoch_batches(len(task.train_set), cfg.batch_size, cfg.seed, epoch, cfg.max_steps)
        first_step, total_steps = (epoch - 1) * len(batches), cfg.epochs * len(batches)
        torch.manual_seed(rank_seed(cfg.seed, epoch, info.rank))  # dropout (and anything random) is reproducible
        task.model.train()
        sums = torch.zeros(task.num_stats, dtype=torch.float64)  # this process's stats, summed over the steps
        steps, lr, failed = 0, cfg.lr, {}
        mine = [b[info.rank :: info.world] for b in batches]
        bar = progress_bar(len(batches), f"epoch {epoch}/{cfg.epochs}", self.progress and info.main, "step")
        try:
            for batch in keyed_loader(task.train_set, mine, epoch, cfg.workers, task.collate):
                failed.update(batch.failed)
                total = all_sum(torch.tensor([float(len(batch.indices))]), info, device)[0].item()  # global batch
                factor = lr_schedule(
                    first_step + steps, total_steps, cfg.warmup_steps, cfg.cosine, cfg.warmup_factor, cfg.min_lr_ratio
                )
                lr = cfg.lr * factor
                for group in opt.param_groups:
                    group["lr"] = lr
                if total > 0:  # a global batch of samples that all failed is skipped
                    sums += self._step(ddp, opt, batch, total)
                    steps += 1
                    state.step += 1
                bar.update(1)
        finally:
            bar.close()
        return task.summary(all_sum(sums, info, device), steps, state.step, lr), gather_dict(failed, info)

    def _step(self, ddp: nn.Module, opt: torch.optim.Optimizer, batch: Batch, total: float) -> Tensor:
        """One optimiser step on this process's part of a global batch of ``total`` samples; the task's stats."""
        cfg, device = self.cfg, self.device
        with training_autocast(cfg.precision, device):
            loss, stats = self.task.loss(ddp, batch, total, self.info, device)
        check_finite(loss, self.info, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.task.model.parameters(), cfg.clip_grad)
        opt.step()
        return stats

    def _end_epoch(
        self,
        opt: torch.optim.Optimizer,
        out: Path,
        state: _State,
        identity: dict[str, Any],
        epoch: int,
        train: dict[str, Any],
    ) -> None:
        """Validate, update the history and the best epoch, and (first process) write the run files."""
        task, info = self.task, self.info
        start = time.perf_counter()
        val, failed = task.validate(epoch, info, self.progress)
        state.failed["val"].update(failed)
        if val is not None:
            val["val_seconds"] = round(time.perf_counter() - start, 3)
        state.epoch = epoch
        state.history.append(task.record(epoch, train, val))
        key = task.best_keys[0]
        improved = val is not None and (not state.best or val[key] > state.best[key])
        if improved:
            assert val is not None
            state.best = {"epoch": epoch, **{k: val[k] for k in task.best_keys}}
        if info.main:
            meta = {"epoch": epoch, "val": val, "kind": task.kind}
            extra = {"failed.json": state.failed} if any(state.failed.values()) else {}
            checkpoint = {
                "format": _CHECKPOINT_FORMAT,
                "identity": identity,
                "epoch": state.epoch,
                "step": state.step,
                **task.weights(),
                "optimizer": opt.state_dict(),
                "history": state.history,
                "best": state.best,
                "failed": state.failed,
            }
            write_epoch_files(out, task.model, meta, improved, state.history, checkpoint, extra)
        barrier()
        task.log_epoch(epoch, train, val, state.best)
        if failed:
            shown = ", ".join(list(failed)[:10])
            logger.warning("%d validation sample(s) could not be read: %s", len(failed), shown)

    def _resume(self, out: Path, identity: dict[str, Any], opt: torch.optim.Optimizer) -> _State:
        """The state saved in ``out/checkpoint.pt`` (weights and optimiser restored), or a fresh state."""
        obj = read_checkpoint(out, identity)
        if obj is None:
            return _State()
        self.task.load_weights(obj)
        opt.load_state_dict(obj["optimizer"])  # moves the state to the parameters' device
        logger.info("resuming %s after epoch %d", out, obj["epoch"])
        history = obj["history"]
        # checkpoints written before the two trainings shared this loop: ViViT's had no "step", ViTDet's no "failed"
        step = obj.get("step", sum(h.get("steps", 0) for h in history))
        failed = obj.get("failed", {"train": {}, "val": {}})
        return _State(obj["epoch"], step, history, obj["best"], failed)


# ---------------------------------------------------------------------------------------------------------------------
# Run directory: checkpoints, weights and history


def run_directory(out_dir: str | Path) -> Path:
    """A run directory to write (or resume): an existing file of that name is an error."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: the run needs a directory (--out names where checkpoints go)")
    return out


def read_checkpoint(out: Path, identity: dict[str, Any], fmt: int = _CHECKPOINT_FORMAT) -> dict[str, Any] | None:
    """The resume state in ``out/checkpoint.pt`` (None if there is none); :class:`ResumeError` if it was written by
    a run with another identity or checkpoint format."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if obj.get("format") != fmt or obj.get("identity") != identity:
        old = obj.get("identity") or {}
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise ResumeError(
            f"{out} holds a run with other settings (differs in: {', '.join(diff) or 'format'}); "
            "use another output directory or delete it"
        )
    return obj


def write_epoch_files(
    out: Path,
    model: nn.Module,
    meta: dict[str, Any],
    improved: bool,
    history: list[dict[str, Any]],
    checkpoint: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """The run files after an epoch: ``last.pt`` (and ``best.pt`` if ``improved``) as {"model": state dict,
    "rgtp_meta": meta}, ``history.jsonl``, the ``extra`` JSON files by name, and last ``checkpoint.pt``, the commit
    point of the epoch."""
    atomic_save({"model": model.state_dict(), "rgtp_meta": meta}, out / "last.pt")
    if improved:
        atomic_save({"model": model.state_dict(), "rgtp_meta": meta}, out / "best.pt")
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    for name, obj in (extra or {}).items():
        write_json(out / name, obj)
    atomic_save(checkpoint, out / "checkpoint.pt")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path`` (readers never see a partial file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Collectives (no-ops in a single process)


class NonFiniteLossError(ValueError):
    """Training diverged: a loss became NaN or infinite. The run's files hold the last finished (finite) epoch."""


def check_finite(loss: Tensor, info: DistInfo, device: torch.device | str) -> None:
    """Raise :class:`NonFiniteLossError` on every process if the loss is not finite on any (before the optimiser
    step, so no non-finite update reaches the weights)."""
    bad = all_sum(torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0]), info, device)
    if bad.item() > 0:
        raise NonFiniteLossError(
            "the training loss is not finite (NaN or inf): training stopped before applying it; the run directory "
            "keeps the last finished epoch (checkpoint.pt, last.pt, best.pt). Lower the learning rate, or clip "
            "gradients (--clip-grad)"
        )


def all_sum(t: Tensor, info: DistInfo, device: torch.device | str) -> Tensor:
    """Sum ``t`` over the processes (on ``device``: NCCL reduces CUDA tensors only); returned on the CPU."""
    if info.world > 1:
        t = t.to(device)
        dist.all_reduce(t)
    return t.cpu()


def gather_dict(d: dict[str, str], info: DistInfo) -> dict[str, str]:
    """The union of every process's ``d``."""
    return {k: v for part in gather(d, info) for k, v in part.items()}
