"""Token merging (ToMe, Bolya et al. 2023) as a per-frame baseline for ViTDet and ViViT, behind the RGTP interfaces.

Every frame is processed on its own (no temporal state). In each block, after attention, ``r`` tokens are merged into
their most similar partners (:func:`~rgtp.pruning.merge.bipartite_soft_matching` on the block's head-averaged keys,
size-weighted averages) and the MLP runs on the merged set; the merges are counted in the ``rgtp`` scope.

ViViT (:class:`ToMeViViT`): standard ToMe in each spatial block, with proportional attention (log(size) added to the
logits of each key) and the class token protected.

ViTDet (:class:`ToMeViTDet`): the linear layers (qkv, projection, MLP) run on the merged tokens, which is where the
savings are, but windowed attention and relative positions are defined on the grid. So in windowed blocks the merged
qkv is *unmerged* (copied to every original position a merged token holds), windowed attention runs at full size (as
it does in RGTP's buffered windows), and its output is averaged back onto the merged tokens (size-weighted: the mean
over the positions each holds) before the projection. A merged key then appears once per position it covers, which
is proportional attention by construction, with exact relative positions. Global blocks do the same by default
(``global_attn="unmerge"``: full N x N attention, exact); ``global_attn="merged"`` instead runs proportional attention
on the merged tokens, with relative positions taken at each merged token's centroid (rounded to a grid cell): cheaper
(quadratic in the merged count) but approximate. The final tokens are unmerged to the (B, N, C) grid for the neck.

How many tokens each block merges comes from :func:`~rgtp.pruning.merge.merge_schedule`: a constant ``r`` (ToMe),
or a final ``keep_ratio`` spread evenly or front-loaded (half the tokens per block at most, as in ToMe). Since
attention on the full grid and block 0's qkv and projection do not shrink, ViTDet's MACs cannot go much below a
third of dense in ``unmerge`` mode, however many tokens are merged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from rgtp.config import ToMeConfig
from rgtp.flops import scope
from rgtp.models.layers import Attention, Block, rel_pos_table
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
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
from rgtp.runtime.vitdet import DenseViTDet, DetectionHead, FrameResult

__all__ = ["ToMeState", "ToMeViTDet", "ToMeViViT", "merged_attention"]

logger = logging.getLogger(__name__)


@dataclass
class ToMeState:
    """The per-stream state of a method without temporal state: only the step index (holds no tensors)."""

    t: int = 0

    def reset(self) -> None:
        """The next step is step 0 of a new video."""
        self.t = 0

    def tensors(self) -> dict[str, Tensor]:
        return {}

    def nbytes(self) -> int:
        return 0

    def to(self, device: torch.device | str) -> ToMeState:
        return self


def merged_attention(
    attn: Attention,
    qkv: Tensor,
    sizes: Tensor | None,
    positions: Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Global attention among merged tokens, with proportional attention and relative positions at given cells.

    Args:
        attn: the block's attention (its heads, scale and relative-position tables).
        qkv: (B, n, 3C) projected merged tokens.
        sizes: (B, n) original tokens per merged token; log(size) is added to each key's logits (None: not added).
        positions: (B, n, 2) (row, col) grid cell of each merged token, for the relative positions (needed iff the
            attention has relative positions).
        grid: (H, W) grid the positions index.

    Returns:
        (B, n, C) attention output before the projection.
    """
    q, k, v = attn.split_heads(qkv)  # (B, h, n, d) each
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, h, n, n)
    b, h, n, d = q.shape
    if attn.use_rel_pos:
        if positions is None or grid is None:
            raise ValueError("relative positions need the merged tokens' grid positions")
        rows, cols = positions[..., 0], positions[..., 1]  # (B, n) each
        rh = rel_pos_table(attn.rel_pos_h, grid[0], attn.rel_pos_resize)  # (H, H, d)
        rw = rel_pos_table(attn.rel_pos_w, grid[1], attn.rel_pos_resize)  # (W, W, d)
        rel_h = torch.einsum("bhqd,bqkd->bhqk", q, rh[rows])  # (B, h, n, H): query row vs every row (unscaled q)
        rel_w = torch.einsum("bhqd,bqkd->bhqk", q, rw[cols])  # (B, h, n, W)
        logits = logits + rel_h.gather(-1, rows[:, None, None, :].expand(b, h, n, n))  # (B, h, n, n) at key rows
        logits = logits + rel_w.gather(-1, cols[:, None, None, :].expand(b, h, n, n))  # (B, h, n, n) at key cols
    if sizes is not None:
        with scope("rgtp"):
            logits = logits + sizes.log().to(logits.dtype)[:, None, None, :]  # (B, h, n, n)
    out = logits.softmax(dim=-1) @ v  # (B, h, n, d)
    return out.transpose(1, 2).reshape(b, n, h * d)  # (B, n, C)


def _head_keys(attn: Attention, qkv: Tensor) -> Tensor:
    """The matching metric: keys averaged over heads, (B, n, 3C) -> (B, n, d)."""
    return attn.split_heads(qkv)[1].mean(dim=1)


def _merge(
    x: Tensor, keys: Tensor, r: int, groups: TokenGroups | None, protect_first: bool
) -> tuple[Tensor, TokenGroups]:
    """Match on ``keys``, merge ``x`` (size-weighted) and update the groups; counted as method overhead."""
    with scope("rgtp"):
        assign, m = bipartite_soft_matching(keys, r, protect_first)  # (B, n), m = n - r
        if groups is None:
            groups = init_groups(x.shape[0], x.shape[1], x.device, x.dtype)
        x = merge_tokens(x, assign, m, groups.sizes)  # (B, m, C)
        return x, merge_groups(groups, assign, m)


class ToMeViTDet(DenseViTDet):
    """ToMe on a :class:`~rgtp.models.vitdet.ViTDet`, frame by frame, behind the ``new_state`` / ``step`` interface.

    Attributes:
        schedule: tokens merged after each block's attention.
        num_kept: tokens left after the last merge (the same for every frame and image).

    Example::

        tome = ToMeViTDet(model, ToMeConfig(keep_ratio=0.5), head=detector)
        state = tome.new_state()
        for frame in video:
            result = tome.step(frame[None], state)
    """

    def __init__(self, model: ViTDet, cfg: ToMeConfig, head: DetectionHead | None = None) -> None:
        super().__init__(model, head)
        self.cfg = cfg
        n = model.cfg.num_tokens
        self.schedule = merge_schedule(n, len(model.net.blocks), cfg.r, cfg.keep_ratio, cfg.spread)
        self.num_kept = n - sum(self.schedule)
        logger.debug("ToMe ViTDet: merges per block %s, %d of %d tokens left", self.schedule, self.num_kept, n)

    def new_state(self) -> ToMeState:  # type: ignore[override]
        return ToMeState()

    @torch.no_grad()
    def step(self, images: Tensor, state: ToMeState) -> FrameResult:  # type: ignore[override]
        """Process one frame of each stream in the batch: (B, 3, S, S) padded, normalised images."""
        tokens = self.backbone(images)  # (B, N, C)
        features = self.model.features(tokens)
        result = FrameResult(state.t, FrameKind.FULL, self.num_kept, None, None, None, features, self.detect(features))
        state.t += 1
        return result

    def backbone(self, images: Tensor) -> Tensor:
        """The merged backbone, unmerged at the end: (B, 3, S, S) -> (B, N, C) grid tokens."""
        tokens, groups = self.encode(images)
        return tokens if groups is None else unmerge_tokens(tokens, groups.source)  # (B, N, C)

    def encode(self, images: Tensor) -> tuple[Tensor, TokenGroups | None]:
        """The merged backbone: (B, 3, S, S) -> ((B, n, C) merged tokens, their groups; None if nothing merged)."""
        net = self.model.net
        x = net.embed(images) + net.position()  # (B, N, C)
        groups: TokenGroups | None = None
        for blk, r in zip(net.blocks, self.schedule, strict=True):
            qkv = blk.attn.qkv(blk.norm1(x))  # (B, n, 3C): linear layers on the merged tokens
            x = x + blk.attn.proj(self._attention(blk, qkv, groups))
            if r:
                x, groups = _merge(x, _head_keys(blk.attn, qkv), r, groups, protect_first=False)
            x = blk.mlp_residual(x)
        return x, groups

    def _attention(self, blk: Block, qkv: Tensor, groups: TokenGroups | None) -> Tensor:
        """Attention output of the merged tokens: (B, n, 3C) -> (B, n, C)."""
        attn, grid = blk.attn, self.model.cfg.grid
        if groups is None:
            return attn.attend(qkv, grid).out  # nothing merged yet: the dense block
        if attn.window_size or self.cfg.global_attn == "unmerge":
            full = unmerge_tokens(qkv, groups.source)  # (B, N, 3C) every position gets its merged token's qkv
            out = attn.attend(full, grid).out  # (B, N, C) at full size
            with scope("rgtp"):
                return merge_tokens(out, groups.source, groups.sizes.shape[1])  # (B, n, C) mean over positions
        with scope("rgtp"):
            positions = group_centroids(groups, grid)  # (B, n, 2)
        return merged_attention(attn, qkv, groups.sizes if self.cfg.prop_attn else None, positions, grid)


class ToMeViViT:
    """ToMe in the spatial encoder of a :class:`~rgtp.models.vivit.ViViT` (class token protected); every step is
    independent, so all steps of all views run as one batch. ``tome(clip)`` returns logits.

    Attributes:
        schedule: patch tokens merged after each spatial block's attention.
        num_kept: patch tokens left after the last merge (plus the class token).
        last_state_nbytes: bytes of per-stream state after the last call (always 0: no temporal state).
    """

    def __init__(self, model: ViViT, cfg: ToMeConfig) -> None:
        self.model = model
        self.cfg = cfg
        n = model.cfg.num_tokens
        self.schedule = merge_schedule(n, len(model.spatial.blocks), cfg.r, cfg.keep_ratio, cfg.spread)
        self.num_kept = n - sum(self.schedule)
        self.last_state_nbytes = 0
        logger.debug("ToMe ViViT: merges per block %s, %d of %d patch tokens left", self.schedule, self.num_kept, n)

    @torch.no_grad()
    def __call__(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised views -> (B, classes) logits."""
        return self.model.classify(self.spatial_features(clip))

    @torch.no_grad()
    def spatial_features(self, clip: Tensor) -> Tensor:
        """The merged spatial encoder's class token per step: (B, 3, T, H, W) -> (B, steps, C)."""
        tokens = self.model.embed(clip)  # (B, steps, N, C)
        b, s, n, c = tokens.shape
        cls, _ = self.encode(tokens.reshape(b * s, n, c))  # (B * steps, C)
        self.last_state_nbytes = 0
        return cls.view(b, s, c)  # (B, steps, C)

    @torch.no_grad()
    def encode(self, embeds: Tensor) -> tuple[Tensor, TokenGroups | None]:
        """(B, N, C) tubelet embeddings -> ((B, C) class token after the final norm, groups of the 1 + N tokens)."""
        enc = self.model.spatial
        x = enc.tokens(embeds)  # (B, 1 + N, C)
        groups: TokenGroups | None = None
        for blk, r in zip(enc.blocks, self.schedule, strict=True):
            qkv = blk.attn.qkv(blk.norm1(x))  # (B, 1 + n, 3C)
            if groups is None:
                out = blk.attn.attend(qkv, None).out  # nothing merged yet: the dense block
            else:
                out = merged_attention(blk.attn, qkv, groups.sizes if self.cfg.prop_attn else None)
            x = x + blk.attn.proj(out)
            if r:
                x, groups = _merge(x, _head_keys(blk.attn, qkv), r, groups, protect_first=True)
            x = blk.mlp_residual(x)
        return enc.norm(x[:, 0]), groups
