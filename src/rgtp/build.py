"""Build models and their runners from presets; load weights strictly."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgtp.config import ExecutionConfig, Preset, ViTDetConfig, ViViTConfig
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.runtime.methods import make_runner

__all__ = [
    "ModelPool",
    "Shipped",
    "WeightsError",
    "build_model",
    "build_runner",
    "bundled_weights",
    "load_weights",
    "read_checkpoint",
    "resolve_device",
    "shipped",
    "with_weights_nouns",
]

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected keys, wrong shapes, unreadable file)."""


@dataclass(frozen=True)
class Shipped:
    """Weights trained here and shipped in the package (fp16, ``src/rgtp/weights/``), and what they are for."""

    file: str
    trained_on: str  # the data, in a phrase a user can judge their own footage by
    outputs: str  # what the model detects or classifies

    @property
    def path(self) -> Path:
        return Path(__file__).parent / "weights" / self.file


#: Shipped weights by model preset prefix.
BUNDLED = {
    "shapes_det": Shipped(
        "shapes_det.pt",
        "generated videos of moving shapes over a panning texture (rgtp.lab.data.shapes)",
        "6 shape classes: disc, square, triangle, star, cross, ring",
    ),
    "pedestrians_det": Shipped(
        "pedestrians_det.pt",
        "real footage: OpenCV's vtest.avi, a static campus camera filming pedestrians from above (HOG boxes)",
        "people (person), best on a fixed camera looking down on walking pedestrians",
    ),
    "motions": Shipped(
        "motions_vivit.pt",
        "generated clips of moving shapes (rgtp.lab.data.motions)",
        "10 motion classes: move right/left/up/down, rotate cw/ccw, grow, shrink, oscillate, collide",
    ),
}


def shipped(preset_name: str) -> Shipped | None:
    """The weights shipped for a preset's model (``shapes_det_*``, ``pedestrians_det_*``, ``motions_*``), or None."""
    for prefix, entry in BUNDLED.items():
        if preset_name.startswith(prefix) and entry.path.is_file():
            return entry
    return None


def bundled_weights(preset_name: str) -> Path | None:
    """The path of the weights shipped for a preset's model, or None."""
    entry = shipped(preset_name)
    return None if entry is None else entry.path


def build_model(preset: Preset, device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """The preset's model with random (seeded) weights, in eval mode."""
    torch.manual_seed(seed)
    with torch.device(device):
        model: nn.Module = ViTDet(preset.model) if isinstance(preset.model, ViTDetConfig) else ViViT(preset.model)
    return model.eval()


def build_runner(preset: Preset, model: nn.Module, execution: ExecutionConfig | None = None) -> Any:
    """The runner of the preset's method on ``model`` (from :func:`build_model`), with its detector attached to
    ViTDet presets that have a detection head; ``execution``: how it executes (None: the exact default path)."""
    head = model.detect if isinstance(model, ViTDet) and model.head is not None else None
    return make_runner(model, preset.method_config, head, execution=execution)


def read_checkpoint(path: Path, map_location: str = "cpu") -> Any:
    """``torch.load`` of a checkpoint (tensors and plain data only), or a one-line error saying what the file is."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither a zip archive nor a pickle: not a checkpoint at all
            raise WeightsError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)") from None
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise WeightsError(f"{path} is a damaged or unreadable checkpoint ({first})") from None


def resolve_device(name: str) -> str:
    """A device name that works here, or a one-line error: unknown names, and CUDA / MPS where there is none."""
    from rgtp.config import ConfigError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: rgtp runs on cpu, cuda or mps")
    return str(device)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load an rgtp checkpoint (a state dict, or {"model": state dict}) strictly; errors name every mismatch.

    A checkpoint written by ``rgtp convert`` may provide only some parts of the model (``rgtp_meta["parts"]``, e.g.
    the COCO backbone without a detection head): those parts load strictly and the rest keeps its initial weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = read_checkpoint(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict (or a dict with a 'model' state dict)")
    parts = obj.get("rgtp_meta", {}).get("parts") if isinstance(obj, dict) else None
    expected = model.state_dict()
    if parts:
        expected = {k: v for k, v in expected.items() if k.split(".")[0] in parts}
        left = sorted({k.split(".")[0] for k in model.state_dict()} - set(parts))
        if left:
            logger.warning(
                "%s provides %s only: %s keep their initial weights", path, ", ".join(parts), ", ".join(left)
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_some(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:8])}")
    if problems:
        raise WeightsError(f"weights {path} do not fit the model: " + " | ".join(problems))
    model.load_state_dict(state, strict=not parts)
    logger.info("loaded %d tensors from %s", len(state), path)


class ModelPool:
    """Models for several presets: one per distinct model configuration (presets that differ only in pruning share
    it). The weights file is read once; later models (another input size) copy the first one's parameters."""

    def __init__(self, weights: str | Path | None, device: torch.device | str = "cpu") -> None:
        self.weights, self.device = weights, device
        self.models: dict[object, nn.Module] = {}

    def get(self, preset: Preset) -> nn.Module:
        if preset.model not in self.models:
            model = build_model(preset, self.device)
            if self.models:
                model.load_state_dict(next(iter(self.models.values())).state_dict())
            elif self.weights is not None:
                load_weights(model, self.weights)
            self.models[preset.model] = model
        return self.models[preset.model]


def _weights_num_nouns(weights: str | Path | None) -> int:
    """The size of the noun head stored in ``weights`` (0 if none or no file)."""
    if weights is None or not Path(weights).is_file():
        return 0
    obj = read_checkpoint(Path(weights), map_location="meta")
    state = obj.get("model", obj) if isinstance(obj, dict) else {}
    noun = state.get("head_noun.weight") if isinstance(state, dict) else None
    return int(noun.shape[0]) if isinstance(noun, torch.Tensor) else 0


def with_weights_nouns(preset: Preset, weights: str | Path | None) -> Preset:
    """The preset with the noun head that ``weights`` carry (EPIC checkpoints converted with ``--nouns``), so that
    the strict :func:`load_weights` accepts them."""
    cfg = preset.model
    nouns = _weights_num_nouns(weights)
    if not isinstance(cfg, ViViTConfig) or not nouns or cfg.num_nouns == nouns:
        return preset
    logger.info("%s: the weights have a %d-class noun head; building it", preset.name, nouns)
    return dataclasses.replace(preset, model=dataclasses.replace(cfg, num_nouns=nouns))


def _some(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")
