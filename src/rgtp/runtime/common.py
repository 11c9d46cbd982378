"""Pieces shared by the runtimes: gathers and scatters of token rows, buffers, filling pruned importance."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rgtp.config import RGTPConfig, ScheduleConfig, pick
from rgtp.pruning.schedule import FrameKind, adaptive_kind, embedding_change, frame_kind
from rgtp.pruning.selection import fg_bg_count, grid_pattern
from rgtp.pruning.state import RGTPState

__all__ = [
    "advance_state",
    "check_stream",
    "fill_pruned",
    "gather_tokens",
    "kept_count",
    "one_hot_first",
    "prefix_rows",
    "refresh",
    "scatter_rows_",
    "schedule_kind",
]


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of each batch item: (B, N, C), (B, K) -> (B, K, C)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def scatter_rows_(buffer: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """In place, buffer[b, idx[b, k]] = rows[b, k]: (B, N, C), (B, K), (B, K, C) -> buffer."""
    return buffer.scatter_(1, idx[..., None].expand(-1, -1, buffer.shape[-1]), rows)


def kept_count(kind: FrameKind, num_tokens: int, grid: tuple[int, int], cfg: RGTPConfig) -> int:
    """Tokens kept after block 0 at a step of this kind (N on FULL steps). Selectors whose count depends on the data
    (``boxes``) may keep another number; for them this is the count their keep ratio would give."""
    if kind is FrameKind.FULL:
        return num_tokens
    if kind is FrameKind.GRID:
        return int(grid_pattern(grid[0], grid[1], cfg.schedule.grid_pattern).numel())
    sel = cfg.selection
    return fg_bg_count(num_tokens, sel.keep_ratio, sel.fg_ratio, sel.bg_ratio)


def fill_pruned(values: Tensor, prune_idx: Tensor, mode: str, previous: Tensor | None, match: Tensor | None) -> Tensor:
    """Importance of the tokens pruned at this step (method §5.3-5.4): (B, N) -> (B, N).

    ``previous``: the stream's previous heatmap (the reference at 1024). ``match``: the value of the kept token whose
    key matched best ((B, P) raster indices; the reference for ViViT). ``none``: leave ``values`` as they are.
    """
    source = pick(_FILLS, mode, "pruned_fill")(values, prune_idx, previous, match)  # (B, P), or None: no fill
    return values if source is None else values.scatter(1, prune_idx, source)


def _fill_previous(values: Tensor, prune_idx: Tensor, previous: Tensor | None, match: Tensor | None) -> Tensor:
    if previous is None:
        raise RuntimeError("pruned_fill='previous' needs the previous heatmap")
    return previous.gather(1, prune_idx)  # (B, P)


def _fill_match(values: Tensor, prune_idx: Tensor, previous: Tensor | None, match: Tensor | None) -> Tensor:
    if match is None:
        raise RuntimeError("pruned_fill='match' needs the key matches of pruned tokens")
    return values.gather(1, match)  # (B, P)


#: Pruned-token fills by ``RolloutConfig.pruned_fill``: the values of the pruned tokens (None: leave them).
_FILLS: dict[str, Callable[[Tensor, Tensor, Tensor | None, Tensor | None], Tensor | None]] = {
    "none": lambda *_: None,
    "previous": _fill_previous,
    "match": _fill_match,
}


def one_hot_first(b: int, n: int, like: Tensor) -> Tensor:
    """(B, n) weights selecting token 0 (the class token)."""
    w = torch.zeros(b, n, dtype=like.dtype, device=like.device)
    w[:, 0] = 1.0
    return w


def refresh(buffer: Tensor | None, keep: Tensor | None, rows: Tensor, inplace: bool = True) -> Tensor:
    """A (B, N, C) buffer with the rows just computed: all of them ((B, N, C), keep None) or (B, K, C) rows at
    ``keep`` (B, K), written in place or into a copy (``inplace=False``: captured graphs must not mutate inputs)."""
    if keep is None:
        return rows
    if buffer is None:
        raise RuntimeError("a buffer is empty: the stream must start with a full step (reset())")
    if inplace:
        return scatter_rows_(buffer, keep, rows.to(buffer.dtype))
    return buffer.scatter(1, keep[..., None].expand(-1, -1, buffer.shape[-1]), rows.to(buffer.dtype))


def prefix_rows(keep: Tensor, num_prefix: int) -> Tensor:
    """Rows of the prefix tokens and the kept patch tokens in a (B, P + N, C) sequence: (B, K) -> (B, P + K)."""
    prefix = torch.arange(num_prefix, device=keep.device).expand(keep.shape[0], -1)  # (B, P)
    return torch.cat([prefix, keep + num_prefix], dim=1)


def check_stream(state: RGTPState, embeds: Tensor, grid: tuple[int, int], kind: FrameKind) -> None:
    """A step that reuses the stream's buffers must have the previous step's batch and token grid."""
    if kind is FrameKind.FULL or state.features is None:
        return
    if state.features.shape != embeds.shape or state.grid != grid:
        raise ValueError(
            f"the frame's tokens {tuple(embeds.shape)} on a {grid} grid differ from the stream's previous frame "
            f"({tuple(state.features.shape)} on {state.grid}): one stream has one batch and frame size "
            "(reset() between videos)"
        )


def schedule_kind(cfg: ScheduleConfig, state: RGTPState, embeds: Tensor) -> tuple[FrameKind, Tensor | None]:
    """The scheduled kind of this step and the embedding drift it would leave (None without a trigger).

    The paper's schedule (:func:`~rgtp.pruning.schedule.frame_kind`) unless ``cfg.adaptive``; then
    :func:`~rgtp.pruning.schedule.adaptive_kind` from the stream's steps since its last reset and its accumulated
    embedding change (embeds: (B, N, C) patch embeddings of this step before positions).
    """
    if not cfg.adaptive:
        return frame_kind(state.t, cfg.reset_every, cfg.reset_mode), None
    drift = None
    peak = step = 0.0
    previous = state.features
    if (cfg.trigger or cfg.cut) and previous is not None and previous.shape == embeds.shape:
        change = embedding_change(embeds, previous)  # (B,)
        drift = change if state.drift is None else state.drift + change
        peak, step = float(drift.max()), float(change.max())
    since = state.since_reset + 1
    kind = adaptive_kind(state.t, since, peak, cfg.reset_every, cfg.reset_mode, cfg.refresh, cfg.trigger, step, cfg.cut)
    return kind, drift if cfg.trigger is not None else None


def advance_state(
    cfg: RGTPConfig, state: RGTPState, kind: FrameKind, keep: Tensor | None, drift: Tensor | None, embeds: Tensor
) -> None:
    """After a step of ``kind`` that processed ``keep`` ((B, K); None: every token of embeds (B, N, C)), update what
    the options beyond the paper carry: steps since the last reset, the accumulated drift, each token's age
    (staggered refresh) and the embeddings of the processed tokens (the change prior's reference)."""
    sched = cfg.schedule
    if sched.adaptive:
        reset = kind in (FrameKind.FULL, FrameKind.GRID)  # (GRID: the kept pattern of a grid reset)
        state.since_reset = 0 if reset else state.since_reset + 1
        if sched.trigger is not None:
            state.drift = None if reset else drift
        if sched.refresh == "staggered":
            if keep is None or state.age is None:
                state.age = torch.zeros(embeds.shape[:2], dtype=torch.int32, device=embeds.device)  # (B, N)
            if keep is not None:
                state.age += 1
                state.age.scatter_(1, keep, 0)
    if cfg.selection.change_weight > 0:
        if keep is None or state.reference is None:
            state.reference = embeds.clone()  # (B, N, C)
        else:
            scatter_rows_(state.reference, keep, gather_tokens(embeds, keep))
