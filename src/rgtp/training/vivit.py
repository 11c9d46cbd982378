"""Whole-model ViViT training on decoded clips (every parameter trainable), with the shared loop.

Training samples are one random view per clip: a random temporal start, the preset's frame count and stride, the
same normalisation and short-side resize as the evaluation views (method §12.2), a random square crop and a random
horizontal flip. The randomness of a sample is seeded by (seed, epoch, clip index), so it does not depend on the
number of processes or DataLoader workers, and a resumed run sees the same samples. Validation uses the
deterministic multi-view protocol (:func:`~rgtp.data.action.preset_views`). Clips that cannot be read are skipped,
counted and listed in ``RUN/failed.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rgtp.config import Preset, ViViTConfig, to_dict
from rgtp.data.action import ActionDataError, ActionDataset, preset_views
from rgtp.data.views import normalize_resize, pad_frames
from rgtp.evaluation.dist import setup
from rgtp.training.common import build_vivit, fingerprint, weights_name
from rgtp.training.loop import (
    Failure,
    FitResult,
    Item,
    Stage,
    TrainConfig,
    TrainJob,
    ViewAveraged,
    default_splits,
    fit,
    make_config,
    recipe_for,
)

__all__ = ["ClipSamples", "random_view", "train_curriculum", "train_vivit", "vivit_job"]

logger = logging.getLogger(__name__)


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
) -> TrainJob:
    """The whole-model job: every parameter trainable (the noun head only with ``train_nouns`` and noun labels)."""
    model = build_vivit(preset, weights, device, dropout=cfg.dropout, seed=cfg.seed)
    if len(train_data.classes) != model.cfg.num_classes:
        raise ValueError(
            f"the dataset has {len(train_data.classes)} classes; the model predicts {model.cfg.num_classes}"
        )
    nouns = cfg.train_nouns and model.head_noun is not None and bool(train_data.nouns)
    if model.head_noun is not None and not nouns:
        model.head_noun.requires_grad_(False)
    identity = {
        "preset": to_dict(preset),
        "weights": weights_name(weights),
        "data": {"train": _describe(train_data), "val": _describe(val_data)},
    }
    c = model.cfg
    return TrainJob(
        "vivit",
        model,
        ViewAveraged(model, temporal_only=False),
        ClipSamples(train_data, preset, True, cfg.seed),
        ClipSamples(val_data, preset, False),
        (1, 3, c.num_frames, c.img_size, c.img_size),
        identity,
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
    job = vivit_job(train_data, val_data, preset, weights, cfg, device)
    logger.info("training %s: %d train / %d val clips, %s", preset.name, len(train_data), len(val_data), cfg)
    return fit(job, cfg, out_dir, info, progress)


def train_curriculum(
    stages: tuple[Stage, ...],
    root: str | Path,
    out_dir: str | Path,
    preset: Preset,
    weights: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    **options: Any,
) -> list[FitResult]:
    """Train the whole ViViT through ``stages`` (e.g. :data:`~rgtp.training.loop.CURRICULA` ``["motions"]``), each
    with :func:`train_vivit` in ``out_dir/<i>-<stage name>`` from the previous stage's ``best.pt`` (the first from
    ``weights``; a stage's later tries go to ``...-try<k>``, see :class:`~rgtp.training.loop.Stage`). ``root`` and
    ``options`` go to every stage's dataset builder. Resumable: a finished stage is not trained again. The last
    stage's ``best.pt`` is the result."""
    from rgtp.data.registry import build_action_dataset

    results: list[FitResult] = []
    start = None if weights is None else Path(weights)
    for i, stage in enumerate(stages, 1):
        kept = {"classes": list(stage.classes)} if stage.classes else {}
        train_split, val_split = default_splits(stage.cfg, preset)
        train, val = (build_action_dataset(stage.dataset, root, s, **options, **kept) for s in (train_split, val_split))
        logger.info("curriculum stage %d/%d (%s): %s", i, len(stages), stage.name, stage.dataset)
        for attempt in range(stage.tries):
            run = Path(out_dir) / (f"{i}-{stage.name}" + (f"-try{attempt + 1}" if attempt else ""))
            cfg = dataclasses.replace(stage.cfg, seed=stage.cfg.seed + attempt)
            result = train_vivit(train, val, run, preset, start, cfg, device, progress)
            if result.best["top1"] >= stage.min_top1:
                break
            logger.warning(
                "stage %s: best val top-1 %.1f < %.1f (try %d of %d)",
                stage.name,
                result.best["top1"],
                stage.min_top1,
                attempt + 1,
                stage.tries,
            )
        results.append(result)
        start = result.out_dir / "best.pt"
    return results
