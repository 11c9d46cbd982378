"""One driver for every per-frame loop: :func:`stream` steps a runner over a stream of frames.

The video runner (``rgtp run``), the evaluations, the benchmark and compute accounting all drive a runner through
:func:`stream`, which optionally times each step (device synchronised before each clock read) and counts its MACs.
:func:`run_clip` does the same for the tubelet steps of a ViViT clip and classifies the clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rgtp.adapters.native import ViViTAdapter
from rgtp.flops import MacCounter
from rgtp.pruning.state import StreamState
from rgtp.runtime.contract import ClassStep
from rgtp.timing import stopwatch

__all__ = ["ClipOutput", "Tick", "run_clip", "stream"]


@dataclass
class Tick:
    """One step of a stream.

    Attributes:
        index: position of the frame in the stream (0-based, as given to :func:`stream`).
        output: the runner's step output.
        seconds: wall-clock of the step (device synchronised), when timed.
        macs: MACs per scope of the step, when counted.
        state_nbytes: bytes the stream's state holds after the step.
    """

    index: int
    output: Any
    seconds: float | None
    macs: dict[str, int] | None
    state_nbytes: int


def stream(
    runner: Any,
    frames: Iterable[Tensor],
    state: StreamState | None = None,
    timed: bool = False,
    count: bool = False,
) -> Iterator[Tick]:
    """Step ``runner`` over ``frames`` (each the runner's step input for every stream of a batch).

    Args:
        runner: any runner (:class:`~rgtp.runtime.contract.Runner`).
        frames: step inputs, in order.
        state: the stream's state to continue; a new one (t = 0) if None.
        timed: time each step, synchronising the inputs' device before each clock read.
        count: count each step's MACs per scope (:class:`~rgtp.flops.MacCounter`; slows the step down, so do not
            combine with ``timed`` for figures).
    """
    state = runner.new_state() if state is None else state
    with torch.no_grad():
        for index, x in enumerate(frames):
            seconds = macs = None
            if count:
                with MacCounter() as counter:
                    out = runner.step(x, state)
                macs = counter.by_scope()
            elif timed:
                with stopwatch(x.device) as elapsed:
                    out = runner.step(x, state)
                seconds = elapsed[0]
            else:
                out = runner.step(x, state)
            yield Tick(index, out, seconds, macs, state.nbytes())


@dataclass
class ClipOutput:
    """A classified clip: logits (B, classes + nouns) and the spatial encoder's steps (one per tubelet step, the
    streams of the batch together)."""

    logits: Tensor
    steps: list[ClassStep]
    state_nbytes: int  # the streams' state at the end of the clip (the whole batch)
    step_seconds: list[float] | None = None  # per step (all views), when timed
    step_macs: list[dict[str, int]] | None = None  # per step (all views), by scope, when counted

    @property
    def pooled(self) -> Tensor:
        """(B, steps, C) the spatial class token of every step."""
        return torch.stack([s.pooled for s in self.steps], dim=1)


@torch.no_grad()
def run_clip(runner: Any, clip: Tensor, timed: bool = False, count: bool = False) -> ClipOutput:
    """Run a runner of a ViViT (:class:`~rgtp.adapters.native.ViViTAdapter`) over every tubelet step of ``clip``
    (B, 3, T, H, W), each view a stream from a fresh state, then the temporal encoder and the classifier.

    Runners without temporal state (dense, ToMe) step every tubelet of every view as one batch (their per-step
    figures are then the batch's split evenly over the steps). ``timed`` / ``count``: per-step seconds / MACs.
    """
    model = runner.model
    if not isinstance(model, ViViTAdapter):
        raise TypeError(f"run_clip needs a runner of a ViViT, got one of {type(model).__name__}")
    tokens = model.embed_clip(clip)  # (B, steps, N, C)
    b, s, n, c = tokens.shape
    state = runner.new_state()
    if runner.stateless:
        ticks = list(stream(runner, [tokens.reshape(b * s, n, c)], state, timed, count))  # one step of B * steps
        steps = [_slice_step(ticks[0].output, t, s) for t in range(s)]
        seconds = None if ticks[0].seconds is None else [ticks[0].seconds / s] * s
        macs = None if ticks[0].macs is None else [{k: v // s for k, v in ticks[0].macs.items()}] * s
    else:
        ticks = list(stream(runner, (tokens[:, t] for t in range(s)), state, timed, count))
        steps = [tick.output for tick in ticks]
        seconds = [t.seconds for t in ticks] if timed else None  # type: ignore[misc]
        macs = [t.macs for t in ticks] if count else None  # type: ignore[misc]
    logits = model.classify(torch.stack([o.pooled for o in steps], dim=1))  # (B, steps, C) -> (B, classes)
    return ClipOutput(logits, steps, state.nbytes(), seconds, macs)


def _slice_step(out: ClassStep, t: int, steps: int) -> ClassStep:
    """Step t of a batched stateless step over (B * steps) streams (index = b * steps + t)."""
    pooled = out.pooled.view(-1, steps, *out.pooled.shape[1:])[:, t]  # (B, C)
    return ClassStep(t, out.kind, out.num_kept, None, None, None, pooled, None)
