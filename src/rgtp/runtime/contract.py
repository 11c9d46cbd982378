"""The runner contract: every per-frame method, on every model, is a :class:`Runner`.

A runner holds a model (through the block protocol, :mod:`rgtp.models.protocol`) and a method's settings, and no
per-video state: :meth:`Runner.new_state` makes the state of one stream (a :class:`~rgtp.pruning.state.StreamState`),
and :meth:`Runner.step` processes one frame (one tubelet step) of every stream in a batch, updating that state. The
step's output has one type per model family, whatever the method:

* :class:`GridStep` for grid models (ViTDet, transformers' VitDetBackbone): dense feature maps, detections;
* :class:`ClassStep` for class-token models (ViViT's spatial encoder, ViT, DINOv2, CLIP): the pooled output and, for
  models with dense outputs, every token's output.

Both carry what the method did: the step kind, the tokens processed, the kept indices and the importance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import Tensor

from rgtp.models.frcnn import Detections
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState

__all__ = ["ClassStep", "GridStep", "Runner", "StepOutput"]


@dataclass
class StepOutput:
    """What every step of every method reports.

    Attributes:
        t: step index within the stream.
        kind: how the step was processed (:class:`~rgtp.pruning.schedule.FrameKind`).
        num_kept: patch tokens processed after the method's reduction (N when nothing was reduced).
        keep_idx: (B, K) ascending indices of the patch tokens processed, or None when all were (or when the method
            processes no subset, as ToMe).
        scores: (B, N) the scores that chose them (RGTP: the warped importance; Eventful: block 0's gate errors).
        importance: (B, N) the heatmap this step leaves for the next (RGTP; None for methods without one).
    """

    t: int
    kind: FrameKind
    num_kept: int
    keep_idx: Tensor | None
    scores: Tensor | None
    importance: Tensor | None


@dataclass
class GridStep(StepOutput):
    """A step of a grid model. ``features``: the model's dense outputs by name (our ViTDet: pyramid levels
    "p2".."p6"; VitDetBackbone: its ``out_features`` stages as (B, C, h, w)); ``detections``: per image, when a
    detection head is attached."""

    features: dict[str, Tensor]
    detections: list[Detections] | None


@dataclass
class ClassStep(StepOutput):
    """A step of a class-token model. ``pooled``: (B, C') the model's pooled output (ViViT: the spatial class token
    after the final norm; ViT: the pooler's output or the normalised class token; DINOv2: the normalised class
    token; CLIP: post_layernorm of the class token); ``tokens``: (B, P + N, C) every token's output (the model's
    last hidden state), pruned tokens from buffers, or None for models without dense outputs."""

    pooled: Tensor
    tokens: Tensor | None


StepT = TypeVar("StepT", bound=StepOutput, covariant=True)


class Runner(Protocol[StepT]):
    """One method on one model. ``stateless`` runners carry nothing across steps but the step index, so their steps
    may be batched (a clip's tubelet steps at once)."""

    model: Any
    stateless: bool

    def new_state(self) -> StreamState: ...

    def step(self, inputs: Tensor, state: Any) -> StepT: ...
