"""Helpers shared by caching and training: the model a checkpoint fits, and the process/device setup."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from rgtp.build import build_model, load_weights, with_weights_nouns
from rgtp.config import Preset, ViViTConfig
from rgtp.models.vivit import ViViT

__all__ = ["build_vivit", "fingerprint", "native_bf16", "training_autocast", "weights_name"]

logger = logging.getLogger(__name__)


def training_autocast(precision: str, device: str | torch.device) -> torch.autocast:
    """The autocast context of a training forward pass at ``precision`` on ``device``: bfloat16 for ``bf16`` where
    the device has it natively (:func:`native_bf16`); disabled for fp32, and for bf16 elsewhere (emulated bf16 is
    slower than fp32; logged once)."""
    dev = torch.device(device)
    bf16 = precision == "bf16" and native_bf16(dev)
    if precision == "bf16" and not bf16:
        _warn_no_bf16(dev.type)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)


@functools.cache
def _warn_no_bf16(device_type: str) -> None:
    logger.warning("precision bf16: this %s has no native bfloat16, training in fp32", device_type)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (read from /proc/cpuinfo; False where it cannot be read). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
