"""The unmodified model behind the runner contract: every token through every block, on every frame."""

from __future__ import annotations

import torch
from torch import Tensor

from rgtp.config import ExecutionConfig
from rgtp.models.protocol import ClassModel, GridModel, block_forward, with_position
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState
from rgtp.runtime.contract import ClassStep, GridStep
from rgtp.runtime.execution import Execution
from rgtp.runtime.grid_loop import DetectionHead, GridRunner

__all__ = ["DenseClass", "DenseGrid"]


class DenseGrid(GridRunner):
    """The dense grid model (the baseline presets): outputs and detections of every frame in full."""

    stateless = True

    def __init__(
        self, model: GridModel, head: DetectionHead | None = None, execution: ExecutionConfig | None = None
    ) -> None:
        super().__init__(model, head)
        self.execution = Execution(execution)
        self._run_body = self.execution.compiled(self._body)

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, images: Tensor, state: StreamState) -> GridStep:
        """(B, 3, H, W) preprocessed frames."""
        with self.execution.autocast(images.device):
            embeds, grid = self.model.embed(images)  # (B, N, C)
            x = with_position(embeds, self.model.position(grid))
            buffers = {-1: x} if -1 in self.model.output_blocks else {}
            buffers.update(self._run_body(x, grid))
            features, detections = self.outputs(buffers, grid)
        n = embeds.shape[1]
        out = GridStep(state.t, FrameKind.FULL, n, None, None, None, features, detections)
        state.t += 1
        return out

    def _body(self, x: Tensor, grid: tuple[int, int]) -> dict[int, Tensor]:
        """Every block on every token: (B, N, C) -> the outputs the model reads, by block."""
        read = {}
        for i, blk in enumerate(self.model.blocks):
            x = block_forward(blk, x, grid, self.execution.fused)
            if i in self.model.output_blocks:
                read[i] = x
        return read


class DenseClass:
    """The dense class-token model: every token through every block."""

    stateless = True

    def __init__(self, model: ClassModel, execution: ExecutionConfig | None = None) -> None:
        self.model = model
        self.execution = Execution(execution)
        self._run_body = self.execution.compiled(self._body)

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, inputs: Tensor, state: StreamState) -> ClassStep:
        """The model's inputs for one step of every stream (see :meth:`rgtp.runtime.cls_loop.RGTPClass.step`)."""
        with self.execution.autocast(inputs.device):
            embeds, grid = self.model.embed(inputs)  # (B, N, C)
            pooled, tokens = self.model.finish(self._run_body(self.model.tokens(embeds, grid)))  # (B, P + N, C)
        out = ClassStep(state.t, FrameKind.FULL, embeds.shape[1], None, None, None, pooled, tokens)
        state.t += 1
        return out

    def _body(self, x: Tensor) -> Tensor:
        """Every block on every token: (B, P + N, C) -> (B, P + N, C)."""
        for blk in self.model.blocks:
            x = block_forward(blk, x, None, self.execution.fused)
        return x
