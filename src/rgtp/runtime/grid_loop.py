"""RGTP on grid models, frame by frame (method §3 and §5.3): our ViTDet, transformers' VitDetBackbone.

Per step: block 0 runs its attention on every token; on pruned steps the selector chooses the kept tokens (the
method: the previous heatmap warped onto this frame, then the top tokens) and everything after block 0's attention
runs on them only. Blocks 1.. keep a qkv buffer (windowed attention runs in full on it; global attention uses the
kept queries against all buffered keys and values), and the outputs the model reads are buffered so the neck and
detector always see the full grid. After detection, the rollout over the global blocks from the detected boxes gives
the heatmap for the next frame.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rgtp.config import ExecutionConfig, RGTPConfig
from rgtp.flops import scope
from rgtp.models.attention import attend
from rgtp.models.frcnn import Detections
from rgtp.models.protocol import GridModel, mlp_residual, with_position
from rgtp.pruning.rollout import (
    anchor_mask,
    check_pool,
    fuse_heads,
    normalize_sum,
    pool_anchors,
    pool_key_columns,
    pool_query_rows,
    rollout_relevance,
    upsample_grid,
)
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.selection import complement, match_pruned
from rgtp.pruning.state import RGTPState
from rgtp.runtime.common import (
    advance_state,
    check_stream,
    fill_pruned,
    gather_tokens,
    refresh,
    scatter_rows_,
    schedule_kind,
)
from rgtp.runtime.contract import GridStep
from rgtp.runtime.execution import Execution, full_precision
from rgtp.runtime.selectors import Guide, Selector, build_selector, plan_tokens

__all__ = ["DetectionHead", "GridRunner", "RGTPGrid", "anchors_of"]

#: A detection head: the model's outputs -> detections per image (boxes in input pixels).
DetectionHead = Callable[[dict[str, Tensor]], list[Detections]]


class GridRunner:
    """What every runner of a grid model shares: the model, an optional detection head, the step output."""

    stateless = False

    def __init__(self, model: GridModel, head: DetectionHead | None = None) -> None:
        self.model = model
        self.head = head

    def detect(self, features: dict[str, Tensor]) -> list[Detections] | None:
        """The attached head's detections (None without a head)."""
        if self.head is None:
            return None
        with scope("head"):
            return self.head(features)

    def outputs(
        self, buffers: dict[int, Tensor], grid: tuple[int, int]
    ) -> tuple[dict[str, Tensor], list[Detections] | None]:
        """(the model's outputs from its output blocks' (B, N, C) grids, the head's detections)."""
        features = self.model.outputs(buffers, grid)
        return features, self.detect(features)


def anchors_of(
    detections: list[Detections] | None,
    batch: int,
    grid: tuple[int, int],
    stride: float,
    score_thr: float,
    device: torch.device,
) -> Tensor:
    """(B, h, w) mask of the tokens inside boxes scoring above ``score_thr`` (every token without detections)."""
    if detections is None:
        return torch.ones(batch, *grid, dtype=torch.bool, device=device)
    masks = [anchor_mask(d.boxes, d.scores, score_thr, grid, stride) for d in detections]
    return torch.stack(masks).to(device)


class RGTPGrid(GridRunner):
    """Rollout-guided token pruning for a grid model (ViTDet-style).

    The object holds the model, the method's settings, an optional detection head and the selector; all per-video
    state lives in the :class:`~rgtp.pruning.state.RGTPState` passed to :meth:`step`, so one instance serves any
    number of streams. Without a head every token is an anchor of the rollout (as when no detection passes the
    threshold).

    Example::

        rgtp = RGTPGrid(ViTDetAdapter(model), preset.rgtp, head=model.detect)
        state = rgtp.new_state()
        for frame in video:
            out = rgtp.step(frame[None], state)
    """

    def __init__(
        self,
        model: GridModel,
        cfg: RGTPConfig,
        head: DetectionHead | None = None,
        selector: Selector | None = None,
        execution: ExecutionConfig | None = None,
    ) -> None:
        super().__init__(model, head)
        self.cfg = cfg
        self.selector = build_selector(cfg) if selector is None else selector
        if self.selector.needs_anchors and head is None:
            raise ValueError("box-token selection needs the previous frame's detections: attach a detection head")
        self.execution = Execution(execution)
        self._run_body = self.execution.compiled(self._body)

    def new_state(self) -> RGTPState:
        return RGTPState()

    @torch.no_grad()
    def step(self, images: Tensor, state: RGTPState) -> GridStep:
        """Process one frame of each stream in the batch: (B, 3, H, W) preprocessed images."""
        with self.execution.autocast(images.device):
            return self._step(images, state)

    def _step(self, images: Tensor, state: RGTPState) -> GridStep:
        cfg, blk = self.cfg, self.model.blocks[0]
        embeds, grid = self.model.embed(images)  # (B, N, C)
        track = self.execution.upcast(embeds)  # the tracking features, float32 under autocast
        kind, drift = schedule_kind(cfg.schedule, state, embeds)
        check_pool(grid, cfg.rollout.pool)
        check_stream(state, embeds, grid, kind)
        x = with_position(embeds, self.model.position(grid))
        buffers = {-1: x} if -1 in self.model.output_blocks else {}

        # Block 0: attention on every token (with the rows the rollout reads), then choose the kept tokens.
        rollout = self.selector.uses_rollout
        need_keys = rollout and kind is not FrameKind.FULL and cfg.rollout.pruned_fill == "match"
        need_probs = blk.spec.is_global and rollout
        qkv0 = blk.qkv(blk.norm1(x))  # (B, N, 3C)
        att = attend(blk.spec, qkv0, grid, need_probs=need_probs, need_keys=need_keys, fused=self.execution.fused)
        keys0 = att.keys  # (B, N, d) head-averaged keys of block 0, to match pruned tokens to kept ones
        x = x + blk.proj(att.out)
        base = x if cfg.pruned_output == "fresh" else None  # (B, N, C): every token's stream after attention 0
        with scope("rgtp"), full_precision(x):
            if need_probs:
                self._record_rows(state, 0, self._fuse(att.probs), None, grid)
            keep, scores, kind = plan_tokens(kind, self.selector, state, track, grid, cfg)
        if keep is not None:
            x = gather_tokens(x, keep)  # (B, K, C)

        # The rest (block 0's MLP, blocks 1..) on the kept tokens only, with buffered qkv and outputs for the others.
        read, rows = self._run_body(x, keep, base, state.qkv, state.outputs, grid)
        buffers.update(read)
        with scope("rgtp"), full_precision(x):
            for i in sorted(rows):
                self._record_rows(state, i, rows[i], keep, grid)

        features, detections = self.outputs(buffers, grid)
        with scope("rgtp"), full_precision(x):
            guide = Guide(
                lambda: self._importance(state, detections, keep, keys0, grid),
                lambda: self._anchors(detections, embeds.shape[0], grid, embeds.device),
            )
            importance = self.selector.guide(guide)
        num_kept = embeds.shape[1] if keep is None else keep.shape[1]
        out = GridStep(state.t, kind, num_kept, keep, scores, importance, features, detections)
        advance_state(cfg, state, kind, keep, drift, embeds)
        state.importance, state.features, state.grid, state.t = (
            importance,
            track,
            grid,
            state.t + 1,
        )
        return out

    def _body(
        self,
        x: Tensor,
        keep: Tensor | None,
        base: Tensor | None,
        qkv: dict[int, Tensor],
        outputs: dict[int, Tensor],
        grid: tuple[int, int],
    ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Block 0's MLP and blocks 1.. on the tokens ``keep`` ((B, K); None: all), x (B, K, C) after block 0's
        attention; refreshes the stream's qkv and output buffers (the dicts, by block). Returns (the whole-grid
        outputs the model reads, by block; the head-fused attention rows (B, K, N) of the global blocks the rollout
        reads, fused as soon as computed so that no two blocks' probabilities are held at once)."""
        blocks, rollout, inplace = self.model.blocks, self.selector.uses_rollout, self.execution.inplace
        read: dict[int, Tensor] = {}
        rows: dict[int, Tensor] = {}
        x = self._output(read, outputs, 0, mlp_residual(blocks[0], x), keep, base)
        for i in range(1, len(blocks)):
            blk = blocks[i]
            need_probs = blk.spec.is_global and rollout
            qkv[i] = refresh(qkv.get(i), keep, blk.qkv(blk.norm1(x)), inplace)  # (B, N, 3C)
            att = attend(blk.spec, qkv[i], grid, query_idx=keep, need_probs=need_probs, fused=self.execution.fused)
            if need_probs:
                rows[i] = self._fuse(att.probs)  # (B, K, N)
            x = self._output(read, outputs, i, mlp_residual(blk, x + blk.proj(att.out)), keep, base)
        return read, rows

    def _fuse(self, probs: Tensor | None) -> Tensor:
        """Attention probabilities (B, heads, Q, N) fused over heads in float32 (B, Q, N), counted as RGTP's."""
        assert probs is not None
        with scope("rgtp"):
            return fuse_heads(self.execution.upcast(probs), self.cfg.rollout.head_fusion)

    def _output(
        self,
        read: dict[int, Tensor],
        outputs: dict[int, Tensor],
        i: int,
        x: Tensor,
        keep: Tensor | None,
        base: Tensor | None = None,
    ) -> Tensor:
        """Buffer block i's output when the model reads it (whole grid, into ``read``); returns x unchanged.

        With ``base`` (fresh outputs: (B, N, C) every token's stream after block 0's attention), the buffer holds
        each token's output minus its base when it was last processed, and the model reads this step's base plus
        that change (exactly the output for the tokens processed now)."""
        if i in self.model.output_blocks:
            inplace = self.execution.inplace
            if base is None:
                outputs[i] = read[i] = refresh(outputs.get(i), keep, x, inplace)
            else:
                delta = x - (base if keep is None else gather_tokens(base, keep))  # (B, K, C)
                outputs[i] = refresh(outputs.get(i), keep, delta, inplace)
                read[i] = base + outputs[i]
        return x

    def _record_rows(
        self, state: RGTPState, block: int, fused: Tensor, keep: Tensor | None, grid: tuple[int, int]
    ) -> None:
        """Store this block's head-fused attention rows (B, Q, N) for the rollout (pooled at pool > 1)."""
        pool = self.cfg.rollout.pool
        if pool > 1:
            fused = pool_key_columns(fused, grid, pool)  # (B, Q, N / p²)
            rows, present = pool_query_rows(fused, keep, grid, pool)  # (B, N / p², N / p²), (B, N / p²)
            if keep is None:
                state.attn_rows[block] = rows
            else:
                state.attn_rows[block] = torch.where(present[..., None], rows, state.attn_rows[block])
        elif keep is None:
            state.attn_rows[block] = fused  # (B, N, N)
        else:
            scatter_rows_(state.attn_rows[block], keep, fused)

    def _importance(
        self,
        state: RGTPState,
        detections: list[Detections] | None,
        keep: Tensor | None,
        keys0: Tensor | None,
        grid: tuple[int, int],
    ) -> Tensor:
        """Heatmap H_t (B, N): rollout over the global blocks from the detected boxes, normalised to sum 1."""
        cfg = self.cfg.rollout
        fused = [state.attn_rows[i] for i in sorted(state.attn_rows)]
        anchors = self._anchors(detections, fused[0].shape[0], grid, fused[0].device)  # (B, H, W) bool
        if cfg.pool > 1:
            cells = pool_anchors(anchors, cfg.pool).to(fused[0].dtype)  # (B, N / p²)
            relevance = rollout_relevance(fused, cells / cells.sum(-1, keepdim=True), cfg.form)
            relevance = upsample_grid(relevance, grid, cfg.pool)  # (B, N)
        else:
            tokens = anchors.flatten(1).to(fused[0].dtype)  # (B, N)
            relevance = rollout_relevance(fused, tokens / tokens.sum(-1, keepdim=True), cfg.form)
        if keep is not None and cfg.pruned_fill != "none":
            prune = complement(keep, relevance.shape[-1])
            match = match_pruned(keys0, keep, prune) if keys0 is not None else None
            relevance = fill_pruned(relevance, prune, cfg.pruned_fill, state.importance, match)
        return normalize_sum(relevance)

    def _anchors(
        self, detections: list[Detections] | None, batch: int, grid: tuple[int, int], device: torch.device
    ) -> Tensor:
        return anchors_of(detections, batch, grid, float(self.model.patch_size), self.cfg.rollout.score_thr, device)
