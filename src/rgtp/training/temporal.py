"""Temporal fine-tuning on cached spatial features (method §12.5).

The ViViT is built from the preset with dropout 0.5 and the starting weights; only the temporal encoder and the
classifier(s) are optimised (the noun head too when the cache has noun labels). A sample is one clip's cached
``(views, steps, C)`` features: per view the temporal encoder and classifier run, and the logits are averaged over
the views. The loss is the cross-entropy of the averaged logits; ``double_softmax`` reproduces the reference's quirk
(cross-entropy of the softmax probabilities, method §13.13) and is only used when asked for. It is the classification
task of :mod:`rgtp.training.vivit` on the cache, trained by the loop of :mod:`rgtp.training.loop`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rgtp.config import Preset, ViViTConfig, to_dict
from rgtp.evaluation.dist import setup
from rgtp.training.cache import FeatureCache
from rgtp.training.common import build_vivit, weights_name
from rgtp.training.loop import FitResult, fit
from rgtp.training.vivit import ClassifierTask, TrainConfig, ViewAveraged, default_splits, make_config, recipe_for

__all__ = ["temporal_job", "train_temporal"]

logger = logging.getLogger(__name__)


def _check_cache(cache: FeatureCache, cfg: ViViTConfig) -> None:
    _, steps, dim = cache.feature_shape
    if (steps, dim) != (cfg.num_steps, cfg.embed_dim):
        raise ValueError(
            f"{cache.directory} holds (views, {steps}, {dim}) features; the model takes "
            f"({cfg.num_steps} steps, {cfg.embed_dim} channels)"
        )
    classes = int(cache.meta.get("num_classes", 0))
    if classes and classes != cfg.num_classes:
        raise ValueError(f"{cache.directory} has {classes} classes; the model predicts {cfg.num_classes}")


def _check_presets(preset: Preset, *caches: FeatureCache) -> None:
    """The features must come from the preset being fine-tuned (its spatial encoder and pruning), for every split."""
    for cache in caches:
        made_with = cache.meta.get("config")
        if made_with is not None and made_with.get("name") == preset.name and made_with != to_dict(preset):
            raise ValueError(f"{cache.directory} was cached with another {preset.name} (its config differs)")
        if cache.meta.get("preset") != preset.name:
            raise ValueError(
                f"{cache.directory} holds features of preset {cache.meta.get('preset')!r}, not of {preset.name!r}: "
                "cache the splits with the preset you fine-tune (rgtp cache-spatial --preset ...)"
            )


def temporal_job(
    cache_dir: str | Path,
    preset: Preset,
    weights: str | Path | None,
    cfg: TrainConfig,
    splits: tuple[str, str],
    device: str = "cpu",
) -> ClassifierTask:
    """The fine-tuning task: the model with only ``temporal``, ``head`` (and ``head_noun``) trainable, and the caches
    ``cache_dir/<train split>`` and ``cache_dir/<val split>``."""
    train_set, val_set = (FeatureCache(Path(cache_dir) / s) for s in splits)
    _check_presets(preset, train_set, val_set)
    model = build_vivit(preset, weights, device, dropout=cfg.dropout, seed=cfg.seed)
    for cache in (train_set, val_set):
        _check_cache(cache, model.cfg)
        if cache.meta.get("weights") != weights_name(weights):
            logger.warning(
                "%s was cached with weights %s (training starts from %s)",
                cache.directory,
                cache.meta.get("weights"),
                weights_name(weights),
            )
    nouns = cfg.train_nouns and model.head_noun is not None and train_set.has_nouns
    model.requires_grad_(False)
    for part in (model.temporal, model.head, model.head_noun if nouns else None):
        if part is not None:
            part.requires_grad_(True)
    source = {
        "preset": to_dict(preset),
        "weights": weights_name(weights),
        "data": {
            split: {
                "cache": str(c.directory.resolve()),
                "clips": len(c),
                "preset": c.meta.get("preset"),
                "features_weights": c.meta.get("weights"),
            }
            for split, c in zip(("train", "val"), (train_set, val_set), strict=True)
        },
    }
    return ClassifierTask(
        "temporal",
        cfg,
        model,
        ViewAveraged(model, temporal_only=True),
        train_set,
        val_set,
        train_set.feature_shape,
        source,
        nouns=nouns,
        val_batch_size=cfg.batch_size,
    )


def train_temporal(
    cache_dir: str | Path,
    out_dir: str | Path,
    preset: Preset,
    weights: str | Path | None,
    cfg: TrainConfig | None = None,
    splits: tuple[str, str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Fine-tune the temporal encoder and classifier of ``preset``'s ViViT on cached features; resumable, and runs
    under ``torchrun``. ``cfg`` defaults to the recipe of the preset (k400 or epic), ``splits`` (train, validation)
    to the recipe's splits. Writes the run directory ``out_dir`` (see :mod:`rgtp.training.loop`)."""
    cfg = cfg or make_config(recipe_for(preset))
    info, device = setup(device)
    task = temporal_job(cache_dir, preset, weights, cfg, splits or default_splits(cfg, preset), device)
    logger.info(
        "temporal fine-tuning of %s: %d train / %d val clips, %s",
        preset.name,
        len(task.train_set),
        len(task.val_set),
        cfg,
    )
    return fit(task, out_dir, info, progress)
