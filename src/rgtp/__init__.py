"""Rollout-Guided Token Pruning (ICIP'25) for video Vision Transformers.

Quick use::

    import rgtp
    preset = rgtp.get_preset("vitdet_vid_672_keep512")
    model = rgtp.build_model(preset)
    runtime = rgtp.RGTPViTDet(model, preset.rgtp)
    state = runtime.new_state()
    result = runtime.step(images, state)  # one frame per stream; state.reset() between videos
"""

from rgtp.build import build_model, build_runtime, load_weights
from rgtp.config import ConfigError, Preset, RGTPConfig, ViTDetConfig, ViViTConfig
from rgtp.flops import MacCounter
from rgtp.presets import get_preset, preset_names
from rgtp.pruning import FrameKind, StreamState
from rgtp.runtime import DenseViTDet, Detections, RGTPViTDet, RGTPViViT

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DenseViTDet",
    "Detections",
    "FrameKind",
    "MacCounter",
    "Preset",
    "RGTPConfig",
    "RGTPViTDet",
    "RGTPViViT",
    "StreamState",
    "ViTDetConfig",
    "ViViTConfig",
    "__version__",
    "build_model",
    "build_runtime",
    "get_preset",
    "load_weights",
    "preset_names",
]
