"""RGTP on ViTDet, frame by frame (spec §3 and §5.3).

Per step: block 0 runs its attention on every token; on pruned steps the previous heatmap is warped onto this
frame, the top tokens are kept, and everything after block 0's attention runs on them only. Blocks 1.. keep a qkv
buffer (windowed attention runs in full on it; global attention uses the kept queries against all buffered keys and
values) and the last block's output is buffered so the neck and detector always see the full grid. After
detection, the rollout over the global blocks from the detected boxes gives the heatmap for the next frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rgtp.config import RGTPConfig
from rgtp.flops import scope
from rgtp.models.vitdet import Detections, ViTDet
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
from rgtp.pruning.schedule import FrameKind, frame_kind
from rgtp.pruning.selection import box_tokens, complement, match_pruned
from rgtp.pruning.state import StreamState
from rgtp.runtime.common import choose_tokens, fill_pruned, gather_tokens, scatter_rows_

__all__ = ["DenseViTDet", "Detections", "FrameResult", "RGTPViTDet"]


DetectionHead = Callable[[dict[str, Tensor]], list[Detections]]


@dataclass
class FrameResult:
    """What one step produced."""

    t: int  # step index within the stream
    kind: FrameKind
    num_kept: int  # tokens processed after block 0's attention
    keep_idx: Tensor | None  # (B, K) tokens kept after block 0, ascending; None when all were processed
    scores: Tensor | None  # (B, N) the warped importance that chose them (ROLLOUT steps)
    importance: Tensor | None  # (B, N) heatmap of this step, which guides the next (None for the dense model)
    features: dict[str, Tensor]  # pyramid features "p2".."p6"
    detections: list[Detections] | None  # per image, when a detection head is attached


class DenseViTDet:
    """The unpruned model behind the ``step`` interface of :class:`RGTPViTDet` (the baseline presets)."""

    def __init__(self, model: ViTDet, head: DetectionHead | None = None) -> None:
        self.model = model
        self.head = head

    def new_state(self) -> StreamState:
        return StreamState()

    def detect(self, features: dict[str, Tensor]) -> list[Detections] | None:
        """The attached head's detections (None without a head)."""
        if self.head is None:
            return None
        with scope("head"):
            return self.head(features)

    @torch.no_grad()
    def step(self, images: Tensor, state: StreamState) -> FrameResult:
        features = self.model(images)
        n = self.model.cfg.num_tokens
        result = FrameResult(state.t, FrameKind.FULL, n, None, None, None, features, self.detect(features))
        state.t += 1
        return result


class RGTPViTDet(DenseViTDet):
    """Rollout-guided token pruning for a :class:`~rgtp.models.vitdet.ViTDet`.

    The object holds the model, the method's settings and an optional detection head; all per-video state lives in
    the :class:`~rgtp.pruning.state.StreamState` passed to :meth:`step`, so one instance serves any number of
    streams. Without a head every token is an anchor of the rollout (as when no detection passes the threshold).

    Example::

        rgtp = RGTPViTDet(model, preset.rgtp, head=detector)
        state = rgtp.new_state()
        for frame in video:
            result = rgtp.step(frame[None], state)
    """

    def __init__(self, model: ViTDet, cfg: RGTPConfig, head: DetectionHead | None = None) -> None:
        check_pool(model.cfg.grid, cfg.rollout.pool)
        super().__init__(model, head)
        self.cfg = cfg

    @torch.no_grad()
    def step(self, images: Tensor, state: StreamState) -> FrameResult:
        """Process one frame of each stream in the batch: (B, 3, S, S) padded, normalised images."""
        net, cfg, grid = self.model.net, self.cfg, self.model.cfg.grid
        kind = frame_kind(state.t, cfg.schedule.reset_every, cfg.schedule.reset_mode)
        embeds = net.embed(images)  # (B, N, C)
        x = embeds + net.position()

        # Block 0: attention on every token, then prune, then the MLP on the kept tokens.
        blk = net.blocks[0]
        guided = cfg.selection.policy == "rollout"  # the other policies need no attention rows
        need_keys = guided and kind is not FrameKind.FULL and cfg.rollout.pruned_fill == "match"
        att = blk.attn.attend(
            blk.attn.qkv(blk.norm1(x)), grid, need_probs=blk.is_global and guided, need_keys=need_keys
        )
        keys0 = att.keys  # (B, N, d) head-averaged keys of block 0, to match pruned tokens to kept ones
        x = x + blk.attn.proj(att.out)
        with scope("rgtp"):
            if blk.is_global and guided:
                self._record_rows(state, 0, att.probs, None)
            keep, scores = choose_tokens(kind, state, embeds, grid, cfg)
        if keep is not None:
            x = gather_tokens(x, keep)  # (B, K, C)
        x = blk.mlp_residual(x)

        # Blocks 1..: kept tokens only, with buffered qkv for the others.
        for i in range(1, len(net.blocks)):
            blk = net.blocks[i]
            qkv = _buffered(state.qkv, i, blk.attn.qkv(blk.norm1(x)), keep)  # (B, N, 3C)
            att = blk.attn.attend(qkv, grid, query_idx=keep, need_probs=blk.is_global and guided)
            if blk.is_global and guided:
                with scope("rgtp"):
                    self._record_rows(state, i, att.probs, keep)
            x = blk.mlp_residual(x + blk.attn.proj(att.out))

        state.output = x if keep is None else scatter_rows_(state.output, keep, x)
        features = self.model.features(state.output)
        detections = self.detect(features)
        with scope("rgtp"):
            importance = self._next_importance(state, detections, keep, keys0)
        num_kept = embeds.shape[1] if keep is None else keep.shape[1]
        result = FrameResult(state.t, kind, num_kept, keep, scores, importance, features, detections)
        state.importance, state.features, state.t = importance, embeds, state.t + 1
        return result

    def _record_rows(self, state: StreamState, block: int, probs: Tensor | None, keep: Tensor | None) -> None:
        """Fuse heads and store this block's attention rows for the rollout (pooled at pool > 1)."""
        assert probs is not None
        fused = fuse_heads(probs, self.cfg.rollout.head_fusion)  # (B, Q, N)
        pool, grid = self.cfg.rollout.pool, self.model.cfg.grid
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

    def _next_importance(
        self, state: StreamState, detections: list[Detections] | None, keep: Tensor | None, keys0: Tensor | None
    ) -> Tensor | None:
        """What guides the next frame: the rollout heatmap, the box tokens (policy boxes), or nothing."""
        policy = self.cfg.selection.policy
        if policy == "rollout":
            return self._importance(state, detections, keep, keys0)
        if policy == "boxes":
            anchors = self._anchors(detections, state.output.shape[0], state.output.device)  # (B, H, W)
            inside = box_tokens(anchors, self.cfg.selection.box_margin).float()  # (B, N)
            return normalize_sum(inside)
        return None

    def _importance(
        self, state: StreamState, detections: list[Detections] | None, keep: Tensor | None, keys0: Tensor | None
    ) -> Tensor:
        """Heatmap H_t (B, N): rollout over the global blocks from the detected boxes, normalised to sum 1."""
        cfg, grid = self.cfg.rollout, self.model.cfg.grid
        b = state.output.shape[0]
        anchors = self._anchors(detections, b, state.output.device)  # (B, H, W) bool
        fused = [state.attn_rows[i] for i in sorted(state.attn_rows)]
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

    def _anchors(self, detections: list[Detections] | None, batch: int, device: torch.device) -> Tensor:
        h, w = self.model.cfg.grid
        if detections is None:
            return torch.ones(batch, h, w, dtype=torch.bool, device=device)
        stride = float(self.model.cfg.patch_size)
        masks = [anchor_mask(d.boxes, d.scores, self.cfg.rollout.score_thr, (h, w), stride) for d in detections]
        return torch.stack(masks).to(device)


def _buffered(buffers: dict[int, Tensor], block: int, rows: Tensor, keep: Tensor | None) -> Tensor:
    """Refresh a block's (B, N, C) buffer with the rows just computed and return the full buffer."""
    if keep is None:
        buffers[block] = rows
    else:
        if block not in buffers:
            raise RuntimeError(f"block {block} has no buffer: the stream must start with a full step (reset())")
        scatter_rows_(buffers[block], keep, rows)
    return buffers[block]
