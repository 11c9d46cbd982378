"""Training: spatial-feature caches, temporal fine-tuning on them (method §12.4-12.5), whole-model ViViT training and
ViTDet detector training, all on one training loop.

* :func:`cache_spatial` writes ``(views, steps, C)`` spatial features per clip (dense or RGTP spatial encoder);
  :class:`FeatureCache` reads them.
* :func:`train_temporal` fine-tunes the temporal encoder and classifier on a cache.
* :func:`train_vivit` trains the whole model on decoded clips.
* :func:`train_vitdet` trains a ViTDet detector (backbone, pyramid, Faster R-CNN head) on in-memory detection sets.

All three share the :class:`~rgtp.training.loop.Trainer` of :mod:`rgtp.training.loop` (DDP under ``torchrun``,
validation, resumable checkpoints, ``last.pt``/``best.pt`` loadable by :func:`rgtp.build.load_weights`): ViViT
training as a :class:`~rgtp.training.vivit.ClassifierTask` (with the paper's recipes, :data:`RECIPES`), detector
training as a :class:`~rgtp.training.detection.DetectorTask`. The recipes of the small shipped models are the lab's
(:mod:`rgtp.lab.recipes`).

Under ``torchrun`` these functions join the process group themselves; call :func:`rgtp.evaluation.dist.cleanup` when
done (the CLI does), since a gloo process group left to interpreter shutdown can abort the process.
"""

from rgtp.training.cache import CacheSummary, FeatureCache, cache_spatial, cached_preset
from rgtp.training.detection import DetTrainConfig, evaluate_detector, train_vitdet
from rgtp.training.loop import FitResult
from rgtp.training.temporal import train_temporal
from rgtp.training.vivit import (
    RECIPE_SPLITS,
    RECIPES,
    TrainConfig,
    default_splits,
    make_config,
    random_view,
    recipe_for,
    train_vivit,
)

__all__ = [
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
    "evaluate_detector",
    "make_config",
    "random_view",
    "recipe_for",
    "train_temporal",
    "train_vitdet",
    "train_vivit",
]
