"""Training ViViT: spatial-feature caches, temporal fine-tuning on them (method §12.4-12.5), whole-model training.

* :func:`cache_spatial` writes ``(views, steps, C)`` spatial features per clip (dense or RGTP spatial encoder);
  :class:`FeatureCache` reads them.
* :func:`train_temporal` fine-tunes the temporal encoder and classifier on a cache.
* :func:`train_vivit` trains the whole model on decoded clips.
* :func:`train_vitdet` trains a ViTDet detector (backbone, pyramid, Faster R-CNN head) on in-memory detection sets
  (:mod:`rgtp.training.detection`, same run-directory conventions).

Both training modes share :func:`~rgtp.training.loop.fit` (recipes, DDP under ``torchrun``, validation, resumable
checkpoints, ``last.pt``/``best.pt`` loadable by :func:`rgtp.build.load_weights`).

Under ``torchrun`` these functions join the process group themselves; call :func:`rgtp.evaluation.dist.cleanup` when
done (the CLI does), since a gloo process group left to interpreter shutdown can abort the process.
"""

from rgtp.training.cache import CacheSummary, FeatureCache, cache_spatial, cached_preset
from rgtp.training.detection import DET_RECIPES, DetTrainConfig, det_recipe, evaluate_detector, train_vitdet
from rgtp.training.loop import RECIPE_SPLITS, RECIPES, FitResult, TrainConfig, default_splits, make_config, recipe_for
from rgtp.training.temporal import train_temporal
from rgtp.training.vivit import random_view, train_vivit

__all__ = [
    "DET_RECIPES",
    "RECIPES",
    "RECIPE_SPLITS",
    "CacheSummary",
    "DetTrainConfig",
    "FeatureCache",
    "FitResult",
    "TrainConfig",
    "cache_spatial",
    "cached_preset",
    "default_splits",
    "det_recipe",
    "evaluate_detector",
    "make_config",
    "random_view",
    "recipe_for",
    "train_temporal",
    "train_vitdet",
    "train_vivit",
]
