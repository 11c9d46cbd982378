"""The unmodified model behind the runner contract: every token through every block, on every frame."""

from __future__ import annotations

import torch
from torch import Tensor

from rgtp.models.protocol import ClassModel, GridModel, block_forward, with_position
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState
from rgtp.runtime.contract import ClassStep, GridStep
from rgtp.runtime.grid_loop import DetectionHead, GridRunner

__all__ = ["DenseClass", "DenseGrid"]


class DenseGrid(GridRunner):
    """The dense grid model (the baseline presets): outputs and detections of every frame in full."""

    stateless = True

    def __init__(self, model: GridModel, head: DetectionHead | None = None) -> None:
        super().__init__(model, head)

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, images: Tensor, state: StreamState) -> GridStep:
        """(B, 3, H, W) preprocessed frames."""
        embeds, grid = self.model.embed(images)  # (B, N, C)
        x = with_position(embeds, self.model.position(grid))
        wanted = self.model.output_blocks
        buffers = {-1: x} if -1 in wanted else {}
        for i, blk in enumerate(self.model.blocks):
            x = block_forward(blk, x, grid)
            if i in wanted:
                buffers[i] = x
        features, detections = self.outputs(buffers, grid)
        n = embeds.shape[1]
        out = GridStep(state.t, FrameKind.FULL, n, None, None, None, features, detections)
        state.t += 1
        return out


class DenseClass:
    """The dense class-token model: every token through every block."""

    stateless = True

    def __init__(self, model: ClassModel) -> None:
        self.model = model

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, inputs: Tensor, state: StreamState) -> ClassStep:
        """The model's inputs for one step of every stream (see :meth:`rgtp.runtime.cls_loop.RGTPClass.step`)."""
        embeds, grid = self.model.embed(inputs)  # (B, N, C)
        x = self.model.tokens(embeds, grid)  # (B, P + N, C)
        for blk in self.model.blocks:
            x = block_forward(blk, x, None)
        pooled, tokens = self.model.finish(x)
        out = ClassStep(state.t, FrameKind.FULL, embeds.shape[1], None, None, None, pooled, tokens)
        state.t += 1
        return out
