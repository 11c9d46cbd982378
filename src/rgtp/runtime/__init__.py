"""The RGTP per-frame loops on our models: :class:`RGTPViTDet` (detection) and :class:`RGTPViViT` (action)."""

from rgtp.runtime.vitdet import DenseViTDet, Detections, FrameResult, RGTPViTDet
from rgtp.runtime.vivit import ClipResult, RGTPViViT, StepResult

__all__ = ["ClipResult", "DenseViTDet", "Detections", "FrameResult", "RGTPViTDet", "RGTPViViT", "StepResult"]
