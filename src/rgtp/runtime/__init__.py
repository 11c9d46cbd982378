"""The RGTP per-frame loops on our models: :class:`RGTPViTDet` (detection) and :class:`RGTPViViT` (action)."""

from rgtp.runtime.eventful import EventfulState, EventfulViTDet, EventfulViViT
from rgtp.runtime.tome import ToMeState, ToMeViTDet, ToMeViViT
from rgtp.runtime.vitdet import DenseViTDet, Detections, FrameResult, RGTPViTDet
from rgtp.runtime.vivit import ClipResult, RGTPViViT, StepResult

__all__ = [
    "ClipResult",
    "DenseViTDet",
    "Detections",
    "EventfulState",
    "EventfulViTDet",
    "EventfulViViT",
    "FrameResult",
    "RGTPViTDet",
    "RGTPViViT",
    "StepResult",
    "ToMeState",
    "ToMeViTDet",
    "ToMeViViT",
]
