"""Pieces shared by the ViTDet and ViViT runtimes: token choice per step, buffers, filling pruned importance."""

from __future__ import annotations

import torch
from torch import Tensor

from rgtp.config import RGTPConfig
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.selection import (
    fg_bg_count,
    gilbert_rank,
    grid_pattern,
    keep_count,
    random_subset,
    select_fg_bg,
    select_topk,
    stride_of,
    uniform_subset,
)
from rgtp.pruning.state import StreamState
from rgtp.pruning.tracking import warp_importance

__all__ = ["choose_tokens", "fill_pruned", "gather_tokens", "kept_count", "scatter_rows_"]


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of each batch item: (B, N, C), (B, K) -> (B, K, C)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def scatter_rows_(buffer: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """In place, buffer[b, idx[b, k]] = rows[b, k]: (B, N, C), (B, K), (B, K, C) -> buffer."""
    return buffer.scatter_(1, idx[..., None].expand(-1, -1, buffer.shape[-1]), rows)


def kept_count(kind: FrameKind, num_tokens: int, grid: tuple[int, int], cfg: RGTPConfig) -> int:
    """Tokens kept after block 0 at a step of this kind (N on FULL steps). Policy ``boxes`` keeps a number that
    depends on the detections; for it this is only the count its keep ratio would give."""
    if kind is FrameKind.FULL:
        return num_tokens
    if kind is FrameKind.GRID:
        return int(grid_pattern(grid[0], grid[1], cfg.schedule.grid_pattern).numel())
    sel = cfg.selection
    return fg_bg_count(num_tokens, sel.keep_ratio, sel.fg_ratio, sel.bg_ratio)


def choose_tokens(
    kind: FrameKind, state: StreamState, embeds: Tensor, grid: tuple[int, int], cfg: RGTPConfig
) -> tuple[Tensor | None, Tensor | None]:
    """Kept tokens of this step and the scores that chose them.

    Args:
        embeds: (B, N, C) patch embeddings of this step, before positions (tracking features).

    Returns:
        (keep_idx (B, K) ascending or None on FULL steps, warped importance (B, N) on ROLLOUT steps or None).
    """
    b, n, _ = embeds.shape
    if kind is FrameKind.FULL:
        return None, None
    if kind is FrameKind.GRID:
        keep = grid_pattern(grid[0], grid[1], cfg.schedule.grid_pattern, embeds.device)
        return keep.expand(b, -1), None
    sel = cfg.selection
    num_fg = keep_count(n, sel.keep_ratio)
    if num_fg < 1:
        raise ValueError(f"keep_ratio {sel.keep_ratio} keeps no token of {n}")
    k = fg_bg_count(n, sel.keep_ratio, sel.fg_ratio, sel.bg_ratio)
    if sel.policy == "uniform":
        return uniform_subset(n, k, state.t, embeds.device).expand(b, -1), None
    if sel.policy == "random":
        return random_subset(b, n, k, sel.seed * 1_000_003 + state.t, embeds.device), None
    if state.importance is None or state.features is None:
        raise RuntimeError(f"step {state.t} is a rollout step but the stream has no previous step; call reset()")
    if sel.policy == "boxes":  # the previous frame's box tokens (state.importance > 0), no warp; the largest set
        inside = state.importance > 0  # (B, N)
        return select_topk(inside.to(state.importance.dtype), int(inside.sum(-1).max())), None
    scores = warp_importance(
        state.importance, embeds, state.features, grid, cfg.tracking.radius, cfg.tracking.rel_threshold_pct
    )
    keep = select_fg_bg(
        scores,
        num_fg,
        stride_of(sel.fg_ratio),
        stride_of(sel.bg_ratio) if sel.bg_ratio > 0 else None,
        gilbert_rank(grid[0], grid[1], embeds.device) if sel.curve_order else None,
    )
    return keep, scores


def fill_pruned(values: Tensor, prune_idx: Tensor, mode: str, previous: Tensor | None, match: Tensor | None) -> Tensor:
    """Importance of the tokens pruned at this step (spec §5.3-5.4): (B, N) -> (B, N).

    ``previous``: the stream's previous heatmap (the reference at 1024). ``match``: the value of the kept token whose
    key matched best ((B, P) raster indices; the reference for ViViT). ``none``: leave ``values`` as they are.
    """
    if mode == "none":
        return values
    if mode == "previous":
        if previous is None:
            raise RuntimeError("pruned_fill='previous' needs the previous heatmap")
        source = previous.gather(1, prune_idx)  # (B, P)
    elif mode == "match":
        if match is None:
            raise RuntimeError("pruned_fill='match' needs the key matches of pruned tokens")
        source = values.gather(1, match)  # (B, P)
    else:
        raise ValueError(f"unknown pruned_fill {mode!r}")
    return values.scatter(1, prune_idx, source)


def one_hot_first(b: int, n: int, like: Tensor) -> Tensor:
    """(B, n) weights selecting token 0 (the class token)."""
    w = torch.zeros(b, n, dtype=like.dtype, device=like.device)
    w[:, 0] = 1.0
    return w
