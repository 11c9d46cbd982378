"""RGTP on the ViViT factorised encoder (spec §4 and §5.4).

Each view is a stream of tubelet steps through the spatial encoder. At step t, block 0 attends over every token;
then tokens are pruned (ROLLOUT steps: the warped heatmap of step t-1 with foreground/background sampling; GRID
steps: a fixed pattern) and discarded for the rest of the step, since only the class token's output is needed. The
class-token rollout over all spatial blocks, restricted to the kept tokens after block 0, gives the heatmap for step
t+1; pruned tokens take the value of the kept token whose block-0 key matches theirs best. The temporal encoder and
classifier are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rgtp.config import RGTPConfig
from rgtp.flops import scope
from rgtp.models.vivit import ViViT
from rgtp.pruning.rollout import fuse_heads, normalize_sum, rollout_relevance
from rgtp.pruning.schedule import FrameKind, frame_kind
from rgtp.pruning.selection import complement, match_pruned
from rgtp.pruning.state import StreamState
from rgtp.runtime.common import choose_tokens, fill_pruned, gather_tokens, one_hot_first

__all__ = ["ClipResult", "RGTPViViT", "StepResult"]


@dataclass
class StepResult:
    """One tubelet step of the spatial encoder."""

    t: int
    kind: FrameKind
    num_kept: int  # patch tokens processed after block 0's attention
    keep_idx: Tensor | None  # (B, K) ascending, None on FULL steps
    scores: Tensor | None  # (B, N) warped importance that chose them (ROLLOUT steps)
    importance: Tensor | None  # (B, N) heatmap of this step (guides the next); None for unguided policies
    cls: Tensor  # (B, C) spatial class token after the final LayerNorm


@dataclass
class ClipResult:
    logits: Tensor  # (B, classes)
    steps: list[StepResult]


class RGTPViViT:
    """Rollout-guided token pruning for a :class:`~rgtp.models.vivit.ViViT`; views of a batch are independent streams.

    ``rgtp(clip)`` returns logits; :meth:`run_clip` also returns every step's kept tokens and heatmap.
    """

    def __init__(self, model: ViViT, cfg: RGTPConfig) -> None:
        if cfg.rollout.pool != 1:
            raise ValueError("the ViViT rollout is not pooled (rollout.pool must be 1)")
        if cfg.selection.policy == "boxes":
            raise ValueError("selection policy 'boxes' needs detections: it is for ViTDet only")
        self.model = model
        self.cfg = cfg
        self.last_state_nbytes = 0  # bytes of the per-stream state at the end of the last clip (whole batch)

    def __call__(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised views -> (B, classes) logits."""
        return self.run_clip(clip).logits

    @torch.no_grad()
    def run_clip(self, clip: Tensor) -> ClipResult:
        steps = self.run_spatial(clip)
        logits = self.model.classify(torch.stack([s.cls for s in steps], dim=1))  # (B, steps, C) -> (B, classes)
        return ClipResult(logits, steps)

    @torch.no_grad()
    def run_spatial(self, clip: Tensor) -> list[StepResult]:
        """The pruned spatial encoder over every step of fresh streams (one per view)."""
        tokens = self.model.embed(clip)  # (B, steps, N, C)
        state = StreamState()
        steps = [self.step(tokens[:, t], state) for t in range(tokens.shape[1])]
        self.last_state_nbytes = state.nbytes()
        return steps

    def spatial_features(self, clip: Tensor) -> Tensor:
        """The pruned spatial encoder's class token per step: (B, 3, T, H, W) -> (B, steps, C)."""
        return torch.stack([s.cls for s in self.run_spatial(clip)], dim=1)

    @torch.no_grad()
    def step(self, embeds: Tensor, state: StreamState) -> StepResult:
        """One step of the spatial encoder for each stream: (B, N, C) tubelet embeddings before positions."""
        enc, cfg, grid = self.model.spatial, self.cfg, self.model.grid
        kind = frame_kind(state.t, cfg.schedule.reset_every, cfg.schedule.reset_mode)
        x = enc.tokens(embeds)  # (B, 1 + N, C)
        blk = enc.blocks[0]
        guided = cfg.selection.policy == "rollout"  # uniform / random subsets need no rollout
        need_keys = guided and kind is not FrameKind.FULL and cfg.rollout.pruned_fill == "match"
        att = blk.attn.attend(blk.attn.qkv(blk.norm1(x)), None, need_probs=guided, need_keys=need_keys)
        x = x + blk.attn.proj(att.out)
        prune = match = None
        fused: list[Tensor] = []
        with scope("rgtp"):
            if guided:
                fused.append(fuse_heads(att.probs, cfg.rollout.head_fusion))  # (B, 1 + N, 1 + N)
            keep, scores = choose_tokens(kind, state, embeds, grid, cfg)
            if keep is not None and guided:
                prune = complement(keep, embeds.shape[1])  # (B, P)
                match = match_pruned(att.keys[:, 1:], keep, prune) if need_keys else None
        if keep is not None:
            x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], keep)], dim=1)  # (B, 1 + K, C)
        x = blk.mlp_residual(x)
        for blk in enc.blocks[1:]:
            att = blk.attn.attend(blk.attn.qkv(blk.norm1(x)), None, need_probs=guided)
            if guided:
                with scope("rgtp"):
                    fused.append(fuse_heads(att.probs, cfg.rollout.head_fusion))  # (B, 1 + K, 1 + K)
            x = blk.mlp_residual(x + blk.attn.proj(att.out))
        cls = enc.norm(x[:, 0])

        importance = None
        if guided:
            with scope("rgtp"):
                importance = self._importance(fused, keep, prune, state, match)
        num_kept = embeds.shape[1] if keep is None else keep.shape[1]
        result = StepResult(state.t, kind, num_kept, keep, scores, importance, cls)
        state.importance, state.features, state.t = importance, embeds, state.t + 1
        return result

    def _importance(
        self,
        fused: list[Tensor],
        keep: Tensor | None,
        prune: Tensor | None,
        state: StreamState,
        match: Tensor | None,
    ) -> Tensor:
        """Class-token rollout restricted to the kept tokens, placed on the grid, pruned tokens filled: (B, N)."""
        b, n = fused[0].shape[0], fused[0].shape[-1] - 1
        first_keep = None
        if keep is not None:
            first_keep = torch.cat([keep.new_zeros(b, 1), keep + 1], dim=1)  # (B, 1 + K): class token, kept tokens
        weights = one_hot_first(b, fused[-1].shape[-1], fused[0])
        relevance = rollout_relevance(fused, weights, self.cfg.rollout.form, first_keep)[:, 1:]  # (B, K)
        if keep is None:
            return normalize_sum(relevance)
        heat = relevance.new_zeros(b, n).scatter(1, keep, relevance)  # (B, N)
        heat = fill_pruned(heat, prune, self.cfg.rollout.pruned_fill, state.importance, match)
        return normalize_sum(heat)
