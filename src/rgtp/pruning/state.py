"""Per-stream state: :class:`StreamState`, the base every method's state derives from, and RGTP's own state.

A state holds everything one method carries from one step of a stream (or of a lockstep batch of streams) to the
next, and nothing else does: runners are stateless, so one runner serves any number of streams. The base handles
what every state needs: :meth:`~StreamState.reset` between videos, :meth:`~StreamState.nbytes` for memory
accounting and :meth:`~StreamState.to` for devices, generically over the dataclass fields (tensors, optional tensors
and dicts of tensors).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["RGTPState", "StreamState"]


@dataclass
class StreamState:
    """The base of every per-stream state: the index ``t`` of the next step, plus a method's own fields.

    A method without temporal state (dense, ToMe) uses this class as it is.
    """

    t: int = 0

    def reset(self) -> None:
        """Forget everything: the next step is step 0 of a new video."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value.clear()  # in place: no stale tensor survives through a reference to the dict
            elif f.default_factory is not dataclasses.MISSING:
                setattr(self, f.name, f.default_factory())
            else:
                setattr(self, f.name, f.default)

    def tensors(self) -> dict[str, Tensor]:
        """All tensors held, by name (``field`` or ``field.key`` for dicts): for inspection and memory accounting."""
        named: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                named[f.name] = value
            elif isinstance(value, dict):
                named.update({f"{f.name}.{k}": v for k, v in value.items() if isinstance(v, Tensor)})
        return named

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(v.numel() * v.element_size() for v in self.tensors().values())

    def to(self, device: torch.device | str) -> StreamState:
        """Move every tensor to ``device`` (in place); returns self."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _map(getattr(self, f.name), lambda v: v.to(device)))
        return self

    def take(self, rows: Tensor) -> StreamState:
        """A new state of the streams ``rows`` (1-D indices into the batch), in that order; other fields (the step
        index, the grid) are shared values and carry over."""
        return dataclasses.replace(
            self, **{f.name: _map(getattr(self, f.name), lambda v: v[rows]) for f in dataclasses.fields(self)}
        )

    @classmethod
    def join(cls, states: list[StreamState]) -> StreamState:
        """The streams of ``states`` as one batch, in order. Shared values (the step index, ...) are the first
        state's; an optional tensor one state lacks (e.g. the drift a reset cleared) is zeros for its streams; a buffer
        (a dict entry) one state lacks is an error."""
        first = states[0]
        sizes = [s.batch_size() for s in states]
        joined = {}
        for f in dataclasses.fields(first):
            values = [getattr(s, f.name) for s in states]
            if isinstance(values[0], dict):
                keys = [set(v) for v in values]
                if any(k != keys[0] for k in keys):
                    raise ValueError(f"cannot join states whose {f.name} hold different entries: {keys}")
                joined[f.name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
            elif any(isinstance(v, Tensor) for v in values):
                joined[f.name] = _cat(values, sizes)
        return dataclasses.replace(first, **joined)

    def batch_size(self) -> int | None:
        """The number of streams (None before the first step)."""
        return next((v.shape[0] for v in self.tensors().values()), None)


def _map(value: Any, fn: Any) -> Any:
    """``fn`` applied to a tensor or to each tensor of a dict; other values unchanged."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _cat(values: list[Tensor | None], sizes: list[int | None]) -> Tensor:
    """Concatenate along the batch; a missing part becomes zeros of its batch size."""
    like = next(v for v in values if v is not None)
    parts = []
    for v, n in zip(values, sizes, strict=True):
        if v is None:
            if n is None:
                raise ValueError("cannot join a state that has not stepped yet")
            v = like.new_zeros((n, *like.shape[1:]))
        parts.append(v)
    return torch.cat(parts)


@dataclass
class RGTPState(StreamState):
    """What RGTP carries across the steps of one stream.

    Attributes:
        t: index of the next step.
        importance: (B, N) heatmap of step t-1, summing to 1 per stream (what guides step t).
        features: (B, N, C) patch embeddings of step t-1, before the position encoding (used for tracking).
        qkv: per block index, the (B, N, 3C) qkv buffer of grid models (rows of pruned tokens hold their last
            computed value).
        outputs: per block index, the (B, N, C) buffered output a model's outputs read (grid models: the last
            block's grid for the neck; class-token models with dense outputs: the last block's P + N tokens).
        attn_rows: per global block index, the (B, n, n) fused attention rows of grid models' rollout
            (n = N, or N / pool**2 for the pooled rollout).
        grid: the (h, w) token grid of step t-1 (a stream keeps one size between full steps).
        age: (B, N) steps since each token was last processed (staggered refresh only; None otherwise).
        drift: (B,) change of the patch embeddings accumulated since the last reset step (change-triggered resets
            only; None otherwise).
        since_reset: steps since the last reset step (adaptive schedules only).
        reference: (B, N, C) each token's patch embedding when it was last processed (the change prior only).
    """

    importance: Tensor | None = None
    features: Tensor | None = None
    qkv: dict[int, Tensor] = field(default_factory=dict)
    outputs: dict[int, Tensor] = field(default_factory=dict)
    attn_rows: dict[int, Tensor] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    age: Tensor | None = None
    drift: Tensor | None = None
    since_reset: int = 0
    reference: Tensor | None = None
