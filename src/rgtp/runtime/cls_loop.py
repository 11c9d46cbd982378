"""RGTP on class-token models (method §4 and §5.4): ViViT's spatial encoder, ViT, DINOv2, CLIP's vision tower.

Each stream is a sequence of frames (ViViT: the tubelet steps of one view). At step t, block 0 attends over every
token; then patch tokens are pruned (ROLLOUT steps: the warped heatmap of step t-1 with foreground/background
sampling; GRID steps: a fixed pattern) and leave the step: the prefix tokens (class token, registers) and the kept
patch tokens run through the other blocks among themselves. The class-token rollout over all blocks, restricted to
the kept tokens after block 0, gives the heatmap for step t+1; pruned tokens take the value of the kept token whose
block-0 key matches theirs best. Models with dense outputs (DINOv2 features for depth or segmentation heads) get every
token's output: pruned tokens from a buffer of their last computed output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgtp.config import ExecutionConfig, RGTPConfig
from rgtp.flops import scope
from rgtp.models.attention import attend
from rgtp.models.protocol import ClassModel, mlp_residual
from rgtp.pruning.rollout import fuse_heads, normalize_sum, rollout_relevance
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.selection import complement, match_pruned
from rgtp.pruning.state import RGTPState
from rgtp.runtime.common import (
    advance_state,
    check_stream,
    fill_pruned,
    gather_tokens,
    one_hot_first,
    prefix_rows,
    refresh,
    scatter_rows_,
    schedule_kind,
)
from rgtp.runtime.contract import ClassStep
from rgtp.runtime.execution import Execution, full_precision
from rgtp.runtime.selectors import Guide, Selector, build_selector, plan_tokens

__all__ = ["RGTPClass"]


class RGTPClass:
    """Rollout-guided token pruning for a class-token model; the streams of a batch are independent.

    Example (one stream of frames through a Hugging Face DINOv2, see :func:`rgtp.adapt`)::

        runner = rgtp.adapt(dinov2, keep_ratio=0.5)
        state = runner.new_state()
        for frame in video:
            out = runner.step(frame[None], state)  # out.pooled, out.tokens (every token, buffers for pruned)
    """

    stateless = False

    def __init__(
        self,
        model: ClassModel,
        cfg: RGTPConfig,
        selector: Selector | None = None,
        execution: ExecutionConfig | None = None,
    ) -> None:
        if cfg.rollout.pool != 1:
            raise ValueError("the class-token rollout is not pooled (rollout.pool must be 1)")
        self.model = model
        self.cfg = cfg
        self.selector = build_selector(cfg) if selector is None else selector
        if self.selector.needs_anchors:
            raise ValueError(f"selection policy {cfg.selection.policy!r} needs detections: it is for grid models")
        self.execution = Execution(execution)
        self._run_body = self.execution.compiled(self._body)

    def new_state(self) -> RGTPState:
        return RGTPState()

    @torch.no_grad()
    def step(self, inputs: Tensor, state: RGTPState) -> ClassStep:
        """One step of every stream in the batch (the model's inputs: ViViT, (B, N, C) tubelet embeddings before
        positions; image models, (B, 3, H, W) preprocessed frames)."""
        with self.execution.autocast(inputs.device):
            return self._step(inputs, state)

    def _step(self, inputs: Tensor, state: RGTPState) -> ClassStep:
        cfg, model, p = self.cfg, self.model, self.model.num_prefix
        embeds, grid = model.embed(inputs)  # (B, N, C)
        track, up = self.execution.upcast(embeds), self.execution.upcast  # the rollout's inputs: float32
        kind, drift = schedule_kind(cfg.schedule, state, embeds)
        check_stream(state, embeds, grid, kind)
        x = model.tokens(embeds, grid)  # (B, P + N, C)
        blk, rollout = model.blocks[0], self.selector.uses_rollout
        need_keys = rollout and kind is not FrameKind.FULL and cfg.rollout.pruned_fill == "match"
        att = attend(
            blk.spec, blk.qkv(blk.norm1(x)), None, need_probs=rollout, need_keys=need_keys, fused=self.execution.fused
        )
        x = x + blk.proj(att.out)
        base = x if cfg.pruned_output == "fresh" and model.dense_output else None  # (B, P + N, C)
        prune = match = None
        fused: list[Tensor] = []
        with scope("rgtp"), full_precision(x):
            if rollout:
                fused.append(fuse_heads(up(att.probs), cfg.rollout.head_fusion))  # (B, P + N, P + N)
            keep, scores, kind = plan_tokens(kind, self.selector, state, track, grid, cfg)
            if keep is not None and rollout:
                prune = complement(keep, embeds.shape[1])  # (B, N - K)
                match = match_pruned(up(att.keys[:, p:]), keep, prune) if need_keys else None
        if keep is not None:
            x = torch.cat([x[:, :p], gather_tokens(x[:, p:], keep)], dim=1)  # (B, P + K, C)
        rows = None if keep is None else prefix_rows(keep, p)  # (B, P + K) rows of the kept tokens
        x, heads = self._run_body(x, rows, state.qkv)
        with scope("rgtp"), full_precision(x):
            for i in sorted(heads):
                attn = heads[i]  # (B, P + K, P + K or P + N)
                if cfg.pruned_context == "buffered" and rows is not None:
                    attn = attn.gather(2, rows[:, None, :].expand(-1, attn.shape[1], -1))  # (B, P + K, P + K)
                fused.append(attn)
        pooled, tokens = model.finish(self._whole(state, x, keep, base) if model.dense_output else x)

        with scope("rgtp"), full_precision(x):
            importance = self.selector.guide(Guide(lambda: self._importance(fused, keep, prune, state, match), None))
        num_kept = embeds.shape[1] if keep is None else keep.shape[1]
        out = ClassStep(state.t, kind, num_kept, keep, scores, importance, pooled, tokens)
        advance_state(cfg, state, kind, keep, drift, embeds)
        state.importance, state.features, state.grid, state.t = (
            importance,
            track,
            grid,
            state.t + 1,
        )
        return out

    def _body(self, x: Tensor, rows: Tensor | None, qkv: dict[int, Tensor]) -> tuple[Tensor, dict[int, Tensor]]:
        """Block 0's MLP and blocks 1.. on the prefix and kept tokens x (B, P + K, C) after block 0's attention
        (``rows``: their rows among all P + N tokens; None: all). With buffered context, the kept queries attend to
        every token's keys and values (pruned ones: their last computed; the stream's qkv buffers, by block).
        Returns (the last block's tokens (B, P + K, C), the head-fused attention rows the rollout reads, by block)."""
        blocks, rollout, fused = self.model.blocks, self.selector.uses_rollout, self.execution.fused
        context = self.cfg.pruned_context == "buffered"
        probs: dict[int, Tensor] = {}
        x = mlp_residual(blocks[0], x)
        for i in range(1, len(blocks)):
            blk = blocks[i]
            h = blk.qkv(blk.norm1(x))  # (B, P + K, 3C)
            if context:  # the kept queries against every token's keys and values (pruned ones: last computed)
                qkv[i] = refresh(qkv.get(i), rows, h, self.execution.inplace)  # (B, P + N, 3C)
                att = attend(blk.spec, qkv[i], None, query_idx=rows, need_probs=rollout, fused=fused)
            else:
                att = attend(blk.spec, h, None, need_probs=rollout, fused=fused)
            if rollout:
                assert att.probs is not None
                with scope("rgtp"):
                    probs[i] = fuse_heads(self.execution.upcast(att.probs), self.cfg.rollout.head_fusion)
            x = mlp_residual(blk, x + blk.proj(att.out))
        return x, probs

    def _whole(self, state: RGTPState, x: Tensor, keep: Tensor | None, base: Tensor | None = None) -> Tensor:
        """Every token's output (B, P + N, C): the kept ones from x (B, P + K, C), the pruned ones from the buffer.

        With ``base`` ((B, P + N, C) every token after block 0's attention; fresh outputs) the buffer holds the
        change from the base, and a pruned token's output is this step's base plus its last change."""
        last = len(self.model.blocks) - 1
        rows = None if keep is None else prefix_rows(keep, self.model.num_prefix)  # (B, P + K)
        if base is not None:
            x = x - (base if rows is None else gather_tokens(base, rows))  # the change (B, P + K, C)
        if rows is None:
            state.outputs[last] = x.clone()  # the buffer is updated in place later; x is returned
            return x if base is None else base + x
        if last not in state.outputs:
            raise RuntimeError("the output buffer is empty: the stream must start with a full step (reset())")
        whole = scatter_rows_(state.outputs[last], rows, x)  # (B, P + N, C)
        return whole.clone() if base is None else base + whole  # not the buffer itself

    def _importance(
        self,
        fused: list[Tensor],
        keep: Tensor | None,
        prune: Tensor | None,
        state: RGTPState,
        match: Tensor | None,
    ) -> Tensor:
        """Class-token rollout restricted to the kept tokens, placed on the grid, pruned tokens filled: (B, N)."""
        p = self.model.num_prefix
        b, n = fused[0].shape[0], fused[0].shape[-1] - p
        first_keep = None if keep is None else prefix_rows(keep, p)  # (B, P + K): prefix tokens, kept tokens
        rows = fused[-1].shape[-1]
        # the class token's output; without prefix tokens (a model pooling the mean of its tokens), every token's
        weights = one_hot_first(b, rows, fused[0]) if p else fused[0].new_full((b, rows), 1.0 / rows)
        relevance = rollout_relevance(fused, weights, self.cfg.rollout.form, first_keep)[:, p:]  # (B, K)
        if keep is None:
            return normalize_sum(relevance)
        heat = relevance.new_zeros(b, n).scatter(1, keep, relevance)  # (B, N)
        heat = fill_pruned(heat, prune, self.cfg.rollout.pruned_fill, state.importance, match)
        return normalize_sum(heat)
