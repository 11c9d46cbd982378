"""Token merging (ToMe, Bolya et al. 2023) as a per-frame baseline on any model of the block protocol.

Every frame is processed on its own (no temporal state). In each block, after attention, ``r`` tokens are merged into
their most similar partners (:func:`~rgtp.pruning.merge.bipartite_soft_matching` on the block's head-averaged keys,
size-weighted averages) and the MLP runs on the merged set; the merges are counted in the ``rgtp`` scope.

Class-token models (:class:`ToMeClass`: ViViT's spatial encoder, ViT, DINOv2, CLIP): standard ToMe in each block,
with proportional attention (log(size) added to the logits of each key) and the prefix tokens protected; models with
dense outputs get every patch token's output by unmerging.

Grid models (:class:`ToMeGrid`: ViTDet-style): the linear layers (qkv, projection, MLP) run on the merged tokens,
which is where the savings are, but windowed attention and relative positions are defined on the grid. So in windowed
blocks the merged qkv is *unmerged* (copied to every original position a merged token holds), windowed attention runs
at full size (as it does in RGTP's buffered windows), and its output is averaged back onto the merged tokens (size-
weighted: the mean over the positions each holds) before the projection. A merged key then appears once per position
it covers, which is proportional attention by construction, with exact relative positions. Global blocks do the same
by default (``global_attn="unmerge"``: full N x N attention, exact); ``global_attn="merged"`` instead runs
proportional attention on the merged tokens, with relative positions taken at each merged token's centroid (rounded to
a grid cell): cheaper (quadratic in the merged count) but approximate. The tokens of the output blocks are unmerged to
the (B, N, C) grid for the neck.

How many tokens each block merges comes from :func:`~rgtp.pruning.merge.merge_schedule`: a constant ``r`` (ToMe),
or a final ``keep_ratio`` spread evenly or front-loaded (half the tokens per block at most, as in ToMe). Since
attention on the full grid and block 0's qkv and projection do not shrink, ViTDet's MACs cannot go much below a
third of dense in ``unmerge`` mode, however many tokens are merged.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rgtp.config import ToMeConfig
from rgtp.flops import scope
from rgtp.models.attention import AttentionSpec, attend, rel_pos_table, split_heads
from rgtp.models.protocol import ClassModel, GridModel, mlp_residual, with_position
from rgtp.pruning.merge import (
    TokenGroups,
    bipartite_soft_matching,
    group_centroids,
    init_groups,
    merge_groups,
    merge_schedule,
    merge_tokens,
    unmerge_tokens,
)
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState
from rgtp.runtime.contract import ClassStep, GridStep
from rgtp.runtime.grid_loop import DetectionHead, GridRunner

__all__ = ["ToMeClass", "ToMeGrid", "merged_attention"]

logger = logging.getLogger(__name__)


def merged_attention(
    spec: AttentionSpec,
    qkv: Tensor,
    sizes: Tensor | None,
    positions: Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Global attention among merged tokens, with proportional attention and relative positions at given cells.

    Args:
        spec: the block's attention (its heads, scale and relative-position tables).
        qkv: (B, n, 3C) projected merged tokens.
        sizes: (B, n) original tokens per merged token; log(size) is added to each key's logits (None: not added).
        positions: (B, n, 2) (row, col) grid cell of each merged token, for the relative positions (needed iff the
            attention has relative positions).
        grid: (H, W) grid the positions index.

    Returns:
        (B, n, C) attention output before the projection.
    """
    q, k, v = split_heads(qkv, spec.num_heads)  # (B, h, n, d) each
    logits = (q * spec.scale) @ k.transpose(-2, -1)  # (B, h, n, n)
    b, h, n, d = q.shape
    if spec.use_rel_pos:
        assert spec.rel_pos_h is not None and spec.rel_pos_w is not None
        if positions is None or grid is None:
            raise ValueError("relative positions need the merged tokens' grid positions")
        rows, cols = positions[..., 0], positions[..., 1]  # (B, n) each
        rh = rel_pos_table(spec.rel_pos_h, grid[0], spec.rel_pos_resize)  # (H, H, d)
        rw = rel_pos_table(spec.rel_pos_w, grid[1], spec.rel_pos_resize)  # (W, W, d)
        rel_h = torch.einsum("bhqd,bqkd->bhqk", q, rh[rows])  # (B, h, n, H): query row vs every row (unscaled q)
        rel_w = torch.einsum("bhqd,bqkd->bhqk", q, rw[cols])  # (B, h, n, W)
        logits = logits + rel_h.gather(-1, rows[:, None, None, :].expand(b, h, n, n))  # (B, h, n, n) at key rows
        logits = logits + rel_w.gather(-1, cols[:, None, None, :].expand(b, h, n, n))  # (B, h, n, n) at key cols
    if sizes is not None:
        with scope("rgtp"):
            logits = logits + sizes.log().to(logits.dtype)[:, None, None, :]  # (B, h, n, n)
    out = logits.softmax(dim=-1) @ v  # (B, h, n, d)
    return out.transpose(1, 2).reshape(b, n, h * d)  # (B, n, C)


def _head_keys(spec: AttentionSpec, qkv: Tensor) -> Tensor:
    """The matching metric: keys averaged over heads, (B, n, 3C) -> (B, n, d)."""
    return split_heads(qkv, spec.num_heads)[1].mean(dim=1)


def _merge(x: Tensor, keys: Tensor, r: int, groups: TokenGroups | None, protect: int) -> tuple[Tensor, TokenGroups]:
    """Match on ``keys``, merge ``x`` (size-weighted) and update the groups; counted as method overhead."""
    with scope("rgtp"):
        assign, m = bipartite_soft_matching(keys, r, protect)  # (B, n), m = n - r
        if groups is None:
            groups = init_groups(x.shape[0], x.shape[1], x.device, x.dtype)
        x = merge_tokens(x, assign, m, groups.sizes)  # (B, m, C)
        return x, merge_groups(groups, assign, m)


class _Schedules:
    """Merges per block for each token count met (a runner serves any input size)."""

    def __init__(self, cfg: ToMeConfig, depth: int) -> None:
        self.cfg, self.depth = cfg, depth
        self.plans: dict[int, list[int]] = {}

    def __call__(self, num_tokens: int) -> list[int]:
        if num_tokens not in self.plans:
            cfg = self.cfg
            plan = merge_schedule(num_tokens, self.depth, cfg.r, cfg.keep_ratio, cfg.spread)
            logger.debug("ToMe: merges per block %s, %d of %d tokens left", plan, num_tokens - sum(plan), num_tokens)
            self.plans[num_tokens] = plan
        return self.plans[num_tokens]


def _kind(plan: list[int]) -> FrameKind:
    return FrameKind.MERGED if sum(plan) else FrameKind.FULL


class ToMeGrid(GridRunner):
    """ToMe on a grid model (ViTDet-style), frame by frame, behind the runner contract (no temporal state).

    Steps report :attr:`FrameKind.MERGED` (FULL when the schedule merges nothing) and ``num_kept``, the tokens left
    after the last merge.

    Example::

        tome = ToMeGrid(ViTDetAdapter(model), ToMeConfig(keep_ratio=0.5), head=model.detect)
        state = tome.new_state()
        for frame in video:
            out = tome.step(frame[None], state)
    """

    stateless = True

    def __init__(self, model: GridModel, cfg: ToMeConfig, head: DetectionHead | None = None) -> None:
        super().__init__(model, head)
        self.cfg = cfg
        self.schedule = _Schedules(cfg, len(model.blocks))

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, images: Tensor, state: StreamState) -> GridStep:
        """Process one frame of each stream in the batch: (B, 3, H, W) preprocessed images."""
        embeds, grid = self.model.embed(images)  # (B, N, C)
        plan = self.schedule(embeds.shape[1])
        buffers = self._encode(with_position(embeds, self.model.position(grid)), grid, plan)
        features, detections = self.outputs(buffers, grid)
        n = embeds.shape[1]
        out = GridStep(state.t, _kind(plan), n - sum(plan), None, None, None, features, detections)
        state.t += 1
        return out

    def _encode(self, x: Tensor, grid: tuple[int, int], plan: list[int]) -> dict[int, Tensor]:
        """The merged blocks: (B, N, C) -> the output blocks' tokens unmerged to the (B, N, C) grid."""
        wanted = self.model.output_blocks
        buffers = {-1: x} if -1 in wanted else {}
        groups: TokenGroups | None = None
        for i, (blk, r) in enumerate(zip(self.model.blocks, plan, strict=True)):
            qkv = blk.qkv(blk.norm1(x))  # (B, n, 3C): linear layers on the merged tokens
            x = x + blk.proj(self._attention(blk.spec, qkv, groups, grid))
            if r:
                x, groups = _merge(x, _head_keys(blk.spec, qkv), r, groups, protect=0)
            x = mlp_residual(blk, x)
            if i in wanted:
                buffers[i] = x if groups is None else unmerge_tokens(x, groups.source)  # (B, N, C)
        return buffers

    def _attention(self, spec: AttentionSpec, qkv: Tensor, groups: TokenGroups | None, grid: tuple[int, int]) -> Tensor:
        """Attention output of the merged tokens: (B, n, 3C) -> (B, n, C)."""
        if groups is None:
            return attend(spec, qkv, grid).out  # nothing merged yet: the dense block
        if spec.window_size or self.cfg.global_attn == "unmerge":
            full = unmerge_tokens(qkv, groups.source)  # (B, N, 3C) every position gets its merged token's qkv
            out = attend(spec, full, grid).out  # (B, N, C) at full size
            with scope("rgtp"):
                return merge_tokens(out, groups.source, groups.sizes.shape[1])  # (B, n, C) mean over positions
        with scope("rgtp"):
            positions = group_centroids(groups, grid)  # (B, n, 2)
        return merged_attention(spec, qkv, groups.sizes if self.cfg.prop_attn else None, positions, grid)


class ToMeClass:
    """ToMe on a class-token model (prefix tokens protected); every step is independent, so the steps of a clip may
    run as one batch."""

    stateless = True

    def __init__(self, model: ClassModel, cfg: ToMeConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.schedule = _Schedules(cfg, len(model.blocks))

    def new_state(self) -> StreamState:
        return StreamState()

    @torch.no_grad()
    def step(self, inputs: Tensor, state: StreamState) -> ClassStep:
        """One step of every stream in the batch (the model's inputs, as :meth:`RGTPClass.step`)."""
        embeds, grid = self.model.embed(inputs)  # (B, N, C)
        plan = self.schedule(embeds.shape[1])
        x, groups = self._encode(self.model.tokens(embeds, grid), plan)
        if self.model.dense_output and groups is not None:
            x = unmerge_tokens(x, groups.source)  # (B, P + N, C)
        pooled, tokens = self.model.finish(x)
        n = embeds.shape[1]
        out = ClassStep(state.t, _kind(plan), n - sum(plan), None, None, None, pooled, tokens)
        state.t += 1
        return out

    def _encode(self, x: Tensor, plan: list[int]) -> tuple[Tensor, TokenGroups | None]:
        """(B, P + N, C) tokens -> ((B, P + n, C) after the last block, groups of the P + N tokens)."""
        p = self.model.num_prefix
        groups: TokenGroups | None = None
        for blk, r in zip(self.model.blocks, plan, strict=True):
            qkv = blk.qkv(blk.norm1(x))  # (B, P + n, 3C)
            if groups is None:
                out = attend(blk.spec, qkv, None).out  # nothing merged yet: the dense block
            else:
                out = merged_attention(blk.spec, qkv, groups.sizes if self.cfg.prop_attn else None)
            x = x + blk.proj(out)
            if r:
                x, groups = _merge(x, _head_keys(blk.spec, qkv), r, groups, protect=p)
            x = mlp_residual(blk, x)
        return x, groups
