"""Many independent streams stepped together: :class:`MultiStream`.

A runner's step already processes a batch of streams in lockstep (one state, one schedule). :class:`MultiStream` adds
what serving many sources needs on top: each slot of the batch can start a new video at any step (``reset``), slots
can be added (more frames than slots) and removed (:meth:`MultiStream.drop`), and each slot gets its own step output.

A slot that resets is stepped from a fresh state on its own (a FULL step, batched with the other slots that reset at
the same step), then joins the others and follows their schedule: the batch keeps one kept count per step (static
shapes), and the only extra work is that slot's FULL step. Everything else runs as one batched step. So a slot's
outputs are those of its stream run alone when the schedule has no periodic reset (``reset_every=None``); with one,
the slot's periodic FULL steps come at the batch's times rather than its own. Data-triggered resets (RGTP+'s
``schedule.cut`` / ``trigger``) fire for the whole batch when any slot's embeddings change past the threshold.

Example (a serving loop over N live sources)::

    streams = MultiStream(rgtp.adapt(model, keep_ratio=0.3))
    while True:
        frames, new = next_frames()                # (N, 3, H, W); new[i]: source i just started (or changed)
        outs = streams.step(frames, reset=new)     # one step output per source
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rgtp.pruning.state import StreamState
from rgtp.runtime.contract import StepOutput

__all__ = ["MultiStream", "slot_output"]


class MultiStream:
    """Independent streams stepped together through one runner, with per-slot resets.

    Attributes:
        runner: any runner (:class:`~rgtp.runtime.contract.Runner`).
        state: the slots' batched state (None before the first step).
        steps: per slot, the index of its next frame within its current video.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.state: StreamState | None = None
        self.steps: list[int] = []

    @property
    def slots(self) -> int:
        return len(self.steps)

    @torch.no_grad()
    def step(self, frames: Tensor, reset: Sequence[bool] | None = None) -> list[StepOutput]:
        """One frame of every slot: ``frames`` (S, ...) with S >= the current slot count (new slots are appended and
        start fresh); ``reset[i]``: slot i starts a new video with this frame. Returns S step outputs (batch 1 each,
        ``t`` the slot's frame index within its video)."""
        s = frames.shape[0]
        if s < self.slots:
            raise ValueError(f"{s} frames for {self.slots} slots: drop() the slots that have ended")
        fresh = [bool(r) for r in reset] if reset is not None else [False] * s
        if len(fresh) != s:
            raise ValueError(f"reset has {len(fresh)} entries for {s} frames")
        fresh[self.slots :] = [True] * (s - self.slots)
        new = [i for i in range(s) if fresh[i]]
        if self.state is None or len(new) == s:  # every slot starts now: one batch from a fresh state
            self.state = self.runner.new_state()
            outs = [(list(range(s)), self.runner.step(frames, self.state))]
        elif not new:
            outs = [(list(range(s)), self.runner.step(frames, self.state))]
        else:
            old = [i for i in range(s) if not fresh[i]]
            main = self.state.take(torch.tensor(old, device=frames.device))
            started = self.runner.new_state()
            outs = [
                (old, self.runner.step(frames[old], main)),
                (new, self.runner.step(frames[new], started)),
            ]
            grids = getattr(main, "grid", None), getattr(started, "grid", None)
            if grids[0] != grids[1]:
                raise ValueError(
                    f"slots {new} start videos on a {grids[1]} token grid, the others are on {grids[0]}: one batch "
                    "has one frame size"
                )
            order = torch.tensor(old + new).argsort()  # batch position of each slot in the joined state
            self.state = type(main).join([main, started]).take(order.to(frames.device))
        self.steps = [0 if fresh[i] else self.steps[i] for i in range(s)]
        results: list[StepOutput | None] = [None] * s
        for slots, out in outs:
            for row, slot in enumerate(slots):
                results[slot] = dataclasses.replace(slot_output(out, row, len(slots)), t=self.steps[slot])
        self.steps = [t + 1 for t in self.steps]
        return results  # type: ignore[return-value]

    def drop(self, slots: Sequence[int]) -> None:
        """Remove ``slots`` (their videos ended); the others keep their state and move up in order."""
        gone = set(slots)
        keep = [i for i in range(self.slots) if i not in gone]
        if self.state is not None:
            device = next(iter(self.state.tensors().values()), torch.empty(0)).device
            self.state = self.state.take(torch.tensor(keep, dtype=torch.long, device=device)) if keep else None
        self.steps = [self.steps[i] for i in keep]


def slot_output(out: StepOutput, row: int, batch: int) -> StepOutput:
    """Stream ``row`` of a step output of ``batch`` streams: every per-stream value sliced to batch 1."""
    return dataclasses.replace(
        out, **{f.name: _slice(getattr(out, f.name), row, batch) for f in dataclasses.fields(out)}
    )


def _slice(value: Any, row: int, batch: int) -> Any:
    if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
        return value[row : row + 1]
    if isinstance(value, dict):
        return {k: _slice(v, row, batch) for k, v in value.items()}
    if isinstance(value, list) and len(value) == batch:
        return [value[row]]
    return value
