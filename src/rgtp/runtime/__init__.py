"""Every per-frame method behind one runner contract (:mod:`rgtp.runtime.contract`), on every model family.

- :mod:`~rgtp.runtime.grid_loop`, :mod:`~rgtp.runtime.cls_loop`: RGTP's per-frame loops on grid models (ViTDet) and
  class-token models (ViViT's spatial encoder, ViT, DINOv2, CLIP);
- :mod:`~rgtp.runtime.selectors`: what chooses the kept tokens (the rollout, and the baselines' selections);
- :mod:`~rgtp.runtime.dense`, :mod:`~rgtp.runtime.eventful`, :mod:`~rgtp.runtime.tome`: the dense model and the
  comparison methods behind the same contract;
- :mod:`~rgtp.runtime.methods`: the method registry and :func:`make_runner`;
- :mod:`~rgtp.runtime.driver`: :func:`stream` and :func:`run_clip`, the one loop over frames;
- :mod:`~rgtp.runtime.streams`: :class:`MultiStream`, many independent streams in one batch with per-slot resets;
- :mod:`~rgtp.runtime.execution`: how runners execute (fused attention, autocast, ``torch.compile``, CUDA graphs).
"""

from rgtp.models.frcnn import Detections
from rgtp.runtime.cls_loop import RGTPClass
from rgtp.runtime.contract import ClassStep, GridStep, Runner, StepOutput
from rgtp.runtime.dense import DenseClass, DenseGrid
from rgtp.runtime.driver import ClipOutput, Tick, run_clip, stream
from rgtp.runtime.eventful import EventfulClass, EventfulGrid, EventfulState
from rgtp.runtime.grid_loop import RGTPGrid
from rgtp.runtime.methods import METHODS, make_runner, method_name, register_method
from rgtp.runtime.selectors import SELECTORS, ForcedSelector, Selector, register_selector
from rgtp.runtime.streams import MultiStream
from rgtp.runtime.tome import ToMeClass, ToMeGrid

__all__ = [
    "METHODS",
    "SELECTORS",
    "ClassStep",
    "ClipOutput",
    "DenseClass",
    "DenseGrid",
    "Detections",
    "EventfulClass",
    "EventfulGrid",
    "EventfulState",
    "ForcedSelector",
    "GridStep",
    "MultiStream",
    "RGTPClass",
    "RGTPGrid",
    "Runner",
    "Selector",
    "StepOutput",
    "Tick",
    "ToMeClass",
    "ToMeGrid",
    "make_runner",
    "method_name",
    "register_method",
    "register_selector",
    "run_clip",
    "stream",
]
