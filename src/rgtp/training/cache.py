"""Spatial-feature caches (method §12.4): the spatial encoder's class token per step for every view of every clip.

Temporal fine-tuning (:mod:`rgtp.training.temporal`) never runs the spatial encoder: it reads what this module
writes. For each clip the preset's deterministic evaluation views (no augmentation, method §12.4) go through the
preset's spatial encoder (dense, or RGTP-pruned) as one batch, and ``(views, steps, C)`` features are stored with the
labels.

Layout of a cache directory ``DIR`` (one sub-directory per split)::

    DIR/<split>/0000000.npz   features (views, steps, C), label, noun (-1: none), id; named by the clip's index
    DIR/<split>/meta.json     preset + config, weights, dataset, split, counts, failed clips (id, index, error),
                              complete (false while a run is unfinished)

Files are written atomically (a hidden temporary file, then a rename), so an interrupted run resumes by skipping the
clips whose file exists. Clips that cannot be read are listed in ``meta.json`` (never dropped silently) and retried
when the run resumes. Under ``torchrun`` every process takes every world-th clip; the first one writes ``meta.json``
after all are done.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgtp.build import build_runner
from rgtp.config import Preset, ViViTConfig, from_dict, to_dict
from rgtp.data.action import ActionClip, ActionDataError, ActionDataset, preset_views
from rgtp.evaluation.dist import DistInfo, barrier, gather, setup, shard
from rgtp.evaluation.records import ResumeError, atomic_write_text, plain
from rgtp.progress import progress_bar
from rgtp.runtime.driver import run_clip
from rgtp.training.common import build_vivit, weights_name

__all__ = ["CacheError", "CacheSummary", "FeatureCache", "cache_spatial", "cached_preset"]

logger = logging.getLogger(__name__)

META = "meta.json"
DTYPES = ("float32", "float16")
_IDENTITY = ("preset", "config", "weights", "dataset", "split", "count", "dtype")  # must match to resume


class CacheError(ValueError):
    """A feature cache that cannot be used: a damaged file, or features of another preset."""


@dataclass
class CacheSummary:
    """What one ``cache_spatial`` run left in ``directory``."""

    directory: Path
    count: int  # clips in the split
    written: int  # feature files present (this run and earlier ones)
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> error


def _meta(preset: Preset, weights: str | Path | None, dataset: ActionDataset, split: str, dtype: str) -> dict[str, Any]:
    cfg = preset.model
    assert isinstance(cfg, ViViTConfig)
    return {
        "preset": preset.name,
        "config": to_dict(preset),
        "weights": weights_name(weights),
        "dataset": dataset.describe(),
        "split": split,
        "count": len(dataset),
        "dtype": dtype,
        "feature_shape": [preset.views[0] * preset.views[1], cfg.num_steps, cfg.embed_dim],  # (views, steps, C)
        "num_classes": len(dataset.classes),
        "num_nouns": len(dataset.nouns),
    }


def _check_resume(directory: Path, meta: dict[str, Any]) -> None:
    path = directory / META
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    new = plain(meta)
    diff = [k for k in _IDENTITY if old.get(k) != new.get(k)]
    if diff:
        raise ResumeError(
            f"{directory} holds features of a different run (differs in: {', '.join(diff)}); "
            "use another output directory or delete it"
        )


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(directory / META, json.dumps(meta, indent=2) + "\n")


def _feature_path(directory: Path, index: int) -> Path:
    return directory / f"{index:07d}.npz"


def _save_features(path: Path, features: np.ndarray, clip: ActionClip) -> None:
    """Write one clip's file atomically: a crash leaves no partial ``.npz`` behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, features=features, label=np.int64(clip.label), noun=np.int64(clip.noun), id=np.str_(clip.id))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _spatial_runtime(preset: Preset, weights: str | Path | None, device: str) -> Any:
    model = build_vivit(preset, weights, device)
    return build_runner(preset, model)


def cache_spatial(
    dataset: ActionDataset,
    preset: Preset,
    weights: str | Path | None,
    out_dir: str | Path,
    split: str,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
) -> CacheSummary:
    """Cache the spatial features of every clip of ``dataset`` under ``out_dir/split`` (see the module docstring).

    Resumes an interrupted run (existing files are kept) and raises :class:`~rgtp.evaluation.records.ResumeError` if
    the directory holds features of another preset, weights or dataset. Returns the summary (on every process).
    """
    if not isinstance(preset.model, ViViTConfig):
        raise ValueError(f"preset {preset.name} is not a ViViT model")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    info, device = setup(device)
    directory = Path(out_dir) / split
    directory.mkdir(parents=True, exist_ok=True)
    meta = _meta(preset, weights, dataset, split, dtype)
    _check_resume(directory, meta)
    if info.main and not (directory / META).is_file():
        _write_meta(directory, {**meta, "complete": False})  # identifies an interrupted run's files
    runtime = _spatial_runtime(preset, weights, device)
    failed = _cache_clips(dataset, runtime, preset, directory, dtype, info, device, progress)
    barrier()
    failed = {k: v for part in gather(failed, info) for k, v in part.items()}
    written = sum(1 for _ in directory.glob("*.npz"))
    if info.main:
        meta["written"] = written
        meta["failed"] = [{"index": i, "id": cid, "error": err} for i, (cid, err) in sorted(failed.items())]
        _write_meta(directory, {**meta, "complete": True})
    barrier()
    if failed:
        logger.warning("%d clip(s) could not be read (listed in %s)", len(failed), directory / META)
    return CacheSummary(directory, len(dataset), written, {cid: err for cid, err in failed.values()})


def _cache_clips(
    dataset: ActionDataset,
    runtime: Any,
    preset: Preset,
    directory: Path,
    dtype: str,
    info: DistInfo,
    device: str,
    progress: bool,
) -> dict[int, tuple[str, str]]:
    """Cache this process's clips that have no file yet; returns the failed ones: index -> (id, error)."""
    mine = list(shard(len(dataset), info))
    todo = [i for i in mine if not _feature_path(directory, i).is_file()]
    if len(todo) < len(mine):
        logger.info("resuming: %d of %d clips already cached", len(mine) - len(todo), len(mine))
    failed: dict[int, tuple[str, str]] = {}
    bar = progress_bar(len(todo), f"cache {directory.name} ({preset.name})", progress and info.main, "clip")
    try:
        for index in todo:
            clip = dataset[index]
            try:
                video = dataset.load(clip)
            except ActionDataError as exc:
                logger.warning("%s", exc)  # the message names the clip
                failed[index] = (clip.id, str(exc))
            else:
                features = _clip_features(runtime, video, preset, device)  # (views, steps, C)
                _save_features(_feature_path(directory, index), features.astype(dtype), clip)
            bar.update(1)
    finally:
        bar.close()
    return failed


@torch.no_grad()
def _clip_features(runtime: Any, video: np.ndarray, preset: Preset, device: str) -> np.ndarray:
    """One decoded clip -> its views' spatial class tokens, (views, steps, C) float32."""
    views = preset_views(video, preset).to(device)  # (views, 3, frames, crop, crop)
    return run_clip(runtime, views).pooled.float().cpu().numpy()  # (views, steps, C)


class FeatureCache(torch.utils.data.Dataset):
    """The cached features of one split (``DIR/<split>``), in clip-index order; failed clips are absent.

    ``cache[i]`` (or ``cache[(i, epoch)]``) is ``(features (views, steps, C) float32, label, noun)``.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META
        if not meta_path.is_file():
            hint = "the cache run did not finish" if self.directory.is_dir() else "cache it with `rgtp cache-spatial`"
            raise FileNotFoundError(f"no feature cache at {self.directory} ({META} missing: {hint})")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if not self.meta.get("complete", True):
            raise ValueError(
                f"the feature cache {self.directory} is incomplete: run `rgtp cache-spatial` again to finish"
            )
        self.files = sorted(self.directory.glob("*.npz"))
        if not self.files:
            raise ValueError(f"feature cache {self.directory} holds no clips")
        failed = len(self.meta.get("failed", []))
        if failed:
            logger.warning("%s: %d clip(s) are missing (failed to load when cached)", self.directory, failed)
        if len(self.files) + failed < int(self.meta.get("count", 0)):
            logger.warning(
                "%s: only %d of %d clips are cached (an interrupted run? run cache-spatial again to finish)",
                self.directory,
                len(self.files),
                self.meta["count"],
            )

    @property
    def preset(self) -> Preset:
        """The preset the features were computed with."""
        return from_dict(Preset, self.meta["config"])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        views, steps, dim = self.meta["feature_shape"]
        return int(views), int(steps), int(dim)

    @property
    def has_nouns(self) -> bool:
        return int(self.meta.get("num_nouns", 0)) > 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index = key[0] if isinstance(key, tuple) else key
        path = self.files[index]
        try:
            with np.load(path) as data:
                features = torch.from_numpy(data["features"].astype(np.float32))  # (views, steps, C)
                return features, int(data["label"]), int(data["noun"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CacheError(
                f"{path}: unreadable cached features ({type(exc).__name__}: {exc}); delete it and run "
                "`rgtp cache-spatial` again (it resumes, re-caching what is missing)"
            ) from None


def cached_preset(cache_dir: str | Path) -> Preset:
    """The preset a cache directory's features were computed with (read from the first split's ``meta.json``)."""
    metas = sorted(Path(cache_dir).glob(f"*/{META}"))
    if not metas:
        raise FileNotFoundError(f"no feature cache under {cache_dir} (no <split>/{META}); run `rgtp cache-spatial`")
    return from_dict(Preset, json.loads(metas[0].read_text())["config"])
