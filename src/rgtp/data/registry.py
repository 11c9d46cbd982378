"""Action-recognition datasets by name: ``build_action_dataset("kinetics400", root, "val", fps=25.0)``.

:data:`ACTION_DATASETS` holds the readers of the paper's datasets; the lab adds its generated sets (``motions``,
``motions-easy``) when :mod:`rgtp.lab.data.registry` is imported (the command line does it for those names).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rgtp.config import ConfigError
from rgtp.data.action import ActionDataset
from rgtp.data.epic import EpicKitchens
from rgtp.data.kinetics import Kinetics400

__all__ = ["ACTION_DATASETS", "build_action_dataset", "dataset_for_preset"]

#: Builders ``(root, split, **options) -> ActionDataset`` by dataset name.
ACTION_DATASETS: dict[str, Callable[..., ActionDataset]] = {
    "kinetics400": Kinetics400,
    "epic-kitchens": EpicKitchens,
    "epic": EpicKitchens,  # alias
}


def build_action_dataset(name: str, root: str | os.PathLike[str], split: str, **options: Any) -> ActionDataset:
    """The dataset ``name`` (a key of :data:`ACTION_DATASETS`) at ``root``, for ``split``, with reader options.

    Raises:
        ConfigError: On an unknown name (listing the known ones).
    """
    if name not in ACTION_DATASETS:
        lab = "" if "motions" in ACTION_DATASETS else " (the lab's generated sets come with rgtp.lab.data.registry)"
        raise ConfigError(f"unknown action dataset {name!r}; known datasets: {', '.join(ACTION_DATASETS)}{lab}")
    return ACTION_DATASETS[name](root, split, **options)


def dataset_for_preset(preset_name: str) -> str:
    """The dataset a ViViT preset is evaluated on: ``vivit_k400*`` -> kinetics400, ``vivit_epic*`` -> epic-kitchens,
    ``motions*`` -> motions (a generated set of the lab, :mod:`rgtp.lab.data.registry`).

    Raises:
        ConfigError: For a preset of neither family.
    """
    if preset_name.startswith("vivit_k400"):
        return "kinetics400"
    if preset_name.startswith("vivit_epic"):
        return "epic-kitchens"
    if preset_name.startswith("motions"):
        return "motions"
    raise ConfigError(
        f"preset {preset_name!r} is not a Kinetics-400 (vivit_k400*), EPIC (vivit_epic*) or motions (motions*) preset; "
        f"name the dataset with --dataset ({', '.join(ACTION_DATASETS)})"
    )
