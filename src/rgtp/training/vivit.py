"""Whole-model ViViT training on decoded clips (every parameter trainable), with the shared loop.

Training samples are one random view per clip: a random temporal start, the preset's frame count and stride, the
same normalisation and short-side resize as the evaluation views (spec §12.2), a random square crop and a random
horizontal flip. The randomness of a sample is seeded by (seed, epoch, clip index), so it does not depend on the
number of processes or DataLoader workers, and a resumed run sees the same samples. Validation uses the
deterministic multi-view protocol (:func:`~rgtp.data.action.preset_views`). Clips that cannot be read are skipped,
counted and listed in ``RUN/failed.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from rgtp.config import Preset, ViViTConfig, to_dict
from rgtp.data.action import ActionDataError, ActionDataset, preset_views
from rgtp.data.views import MEAN, STD
from rgtp.evaluation.dist import setup
from rgtp.models.vivit import ViViT
from rgtp.training.common import build_vivit, fingerprint, weights_name
from rgtp.training.loop import Failure, FitResult, Item, TrainConfig, TrainJob, fit, make_config, recipe_for

__all__ = ["ClipSamples", "ClipViewClassifier", "random_view", "train_vivit", "vivit_job"]

logger = logging.getLogger(__name__)


def random_view(video: np.ndarray | Tensor, preset: Preset, rng: np.random.Generator) -> Tensor:
    """One random training view of a (T, H, W, 3) uint8 video: -> (3, frames, crop, crop), normalised."""
    cfg = preset.model
    assert isinstance(cfg, ViViTConfig)
    x = torch.as_tensor(video)
    span, crop = cfg.num_frames * preset.temporal_stride, cfg.img_size
    if x.shape[0] < span:
        x = torch.cat([x, x[-1:].expand(span - x.shape[0], -1, -1, -1)])  # repeat the last frame
    start = int(rng.integers(0, x.shape[0] - span + 1))
    t = x[start : start + span : preset.temporal_stride].permute(3, 0, 1, 2).float() / 255.0  # (3, F, H, W)
    t = (t - MEAN) / STD
    h, w = t.shape[-2:]
    scale = max(crop / h, crop / w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)  # (3, F, nh, nw)
    y0, x0 = int(rng.integers(0, nh - crop + 1)), int(rng.integers(0, nw - crop + 1))
    t = t[..., y0 : y0 + crop, x0 : x0 + crop]  # (3, F, crop, crop)
    if rng.random() < 0.5:
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
            return random_view(video, self.preset, rng)[None], clip.label, clip.noun  # (1, 3, F, crop, crop)
        return preset_views(video, self.preset), clip.label, clip.noun  # (views, 3, F, crop, crop)


class ClipViewClassifier(nn.Module):
    """The whole ViViT on the views of each clip, logits averaged over the views."""

    def __init__(self, model: ViViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: Tensor) -> Tensor:
        """(B, views, 3, F, H, W) -> (B, classes [+ nouns]) view-averaged logits."""
        b, v = clips.shape[:2]
        logits = self.model(clips.flatten(0, 1))  # (B * views, K)
        return logits.view(b, v, -1).mean(dim=1)  # (B, K)


def _describe(dataset: ActionDataset) -> dict[str, object]:
    root = getattr(dataset, "root", None)
    return {
        "dataset": dataset.describe(),
        "root": None if root is None else str(Path(root).resolve()),
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
        ClipViewClassifier(model),
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
