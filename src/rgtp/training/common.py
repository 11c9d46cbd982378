"""Helpers shared by caching and training: the model a checkpoint fits, and the process/device setup."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from rgtp.build import build_model, load_weights, with_weights_nouns
from rgtp.config import Preset, ViViTConfig
from rgtp.models.vivit import ViViT

__all__ = ["build_vivit", "fingerprint", "weights_name"]

logger = logging.getLogger(__name__)


def weights_name(weights: str | Path | None) -> str:
    return "random" if weights is None else str(Path(weights).resolve())


def build_vivit(
    preset: Preset, weights: str | Path | None, device: str, dropout: float | None = None, seed: int = 0
) -> ViViT:
    """The preset's ViViT (with the weights' noun head, and ``dropout`` if given), with ``weights`` loaded strictly."""
    if not isinstance(preset.model, ViViTConfig):
        raise ValueError(f"preset {preset.name} is not a ViViT model")
    preset = with_weights_nouns(preset, weights)
    if dropout is not None:
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, dropout=dropout))
    model = build_model(preset, device, seed=seed)
    assert isinstance(model, ViViT)
    if weights is None:
        logger.warning("no weights given: starting from RANDOM weights")
    else:
        load_weights(model, weights)
    return model


def fingerprint(ids: Iterable[str]) -> str:
    """A short digest of an ordered list of clip ids (identifies a split without storing it)."""
    digest = hashlib.sha1()
    for i in ids:
        digest.update(i.encode() + b"\0")
    return digest.hexdigest()[:16]
