"""Rollout-Guided Token Pruning (ICIP'25) for video Vision Transformers.

Quick use, on a model you already have (ours, Hugging Face's, timm's)::

    import rgtp
    runner = rgtp.adapt(model, keep_ratio=0.5)  # or method="eventful" / "tome" / "dense"
    state = runner.new_state()
    for frame in frames:
        out = runner.step(frame, state)  # one frame per stream; state.reset() between videos

or on a preset of the paper::

    preset = rgtp.get_preset("vitdet_vid_672_keep512")
    model = rgtp.build_model(preset)
    runner = rgtp.build_runner(preset, model)

Throughout the code, "method §N" cites section N of the documentation page ``docs/method.md`` (the method, section
by section, as the reference code does it).
"""

from rgtp.api import adapt
from rgtp.build import build_model, build_runner, load_weights
from rgtp.config import (
    ConfigError,
    EventfulConfig,
    ExecutionConfig,
    Preset,
    RGTPConfig,
    ToMeConfig,
    ViTDetConfig,
    ViViTConfig,
)
from rgtp.flops import MacCounter
from rgtp.presets import get_preset, preset_names
from rgtp.pruning import FrameKind, StreamState
from rgtp.runtime import ClassStep, Detections, GridStep, MultiStream, run_clip, stream

__version__ = "0.1.0"

__all__ = [
    "ClassStep",
    "ConfigError",
    "Detections",
    "EventfulConfig",
    "ExecutionConfig",
    "FrameKind",
    "GridStep",
    "MacCounter",
    "MultiStream",
    "Preset",
    "RGTPConfig",
    "StreamState",
    "ToMeConfig",
    "ViTDetConfig",
    "ViViTConfig",
    "__version__",
    "adapt",
    "build_model",
    "build_runner",
    "get_preset",
    "load_weights",
    "preset_names",
    "run_clip",
    "stream",
]
