"""Frame schedule: which steps are processed in full, pruned with a fixed grid, or pruned by rollout.

:func:`frame_kind` is the paper's fixed schedule. Beyond the paper (opt-in through ``ScheduleConfig``):
:func:`adaptive_kind` resets when the patch embeddings have changed enough (:func:`embedding_change`), and
:func:`stalest_tokens` picks the tokens a staggered refresh adds to a pruned step.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor

__all__ = ["FrameKind", "adaptive_kind", "embedding_change", "frame_kind", "staggered_count", "stalest_tokens"]


class FrameKind(str, Enum):
    """How step t of a stream was processed (every method reports one of these)."""

    FULL = "full"  # every token runs through every block; buffers are refreshed
    GRID = "grid"  # a fixed grid pattern of tokens is kept (ViViT reset steps)
    ROLLOUT = "rollout"  # the warped importance of step t-1 chooses the kept tokens
    PRUNED = "pruned"  # another selector (uniform, random, box tokens, a caller's) chooses the kept tokens
    GATED = "gated"  # Eventful-style gates recompute the most changed tokens; the others reuse buffers
    MERGED = "merged"  # ToMe-style merging leaves fewer tokens in later blocks


def frame_kind(t: int, reset_every: int | None, reset_mode: str) -> FrameKind:
    """Kind of step ``t`` (0-based) in a stream.

    Step 0 is always FULL (there is no previous importance). Steps with ``t % reset_every == 0`` are reset steps:
    FULL when ``reset_mode == "full"`` (the reference's ``reset_full_process: true``, ViTDet) or GRID when
    ``reset_mode == "grid"`` (ViViT). Every other step is a ROLLOUT step. ``reset_every=None`` never resets.
    """
    if t < 0:
        raise ValueError(f"step index must be >= 0, got {t}")
    if t == 0:
        return FrameKind.FULL
    if reset_every is not None and t % reset_every == 0:
        return FrameKind.FULL if reset_mode == "full" else FrameKind.GRID
    return FrameKind.ROLLOUT


def embedding_change(embeds: Tensor, previous: Tensor) -> Tensor:
    """How much each stream's frame changed: (B, N, C), (B, N, C) -> (B,).

    The mean over tokens of ``||e_t - e_{t-1}||``, relative to the mean ``||e_{t-1}||``: about 0 on a static
    camera, about 1.4 across a scene cut (two unrelated frames), in between under camera motion. It costs one pass
    over the patch embeddings, which every method computes anyway.
    """
    diff = (embeds.float() - previous.float()).norm(dim=-1).mean(-1)  # (B,)
    return diff / previous.float().norm(dim=-1).mean(-1).clamp_min(1e-12)


def adaptive_kind(
    t: int,
    since_reset: int,
    drift: float,
    reset_every: int | None,
    reset_mode: str,
    refresh: str,
    trigger: float | None,
    change: float = 0.0,
    cut: float | None = None,
) -> FrameKind:
    """Kind of step ``t`` under an adaptive schedule (``ScheduleConfig.adaptive``).

    Args:
        since_reset: steps since the stream's last reset (or full) step, this one included (1 right after it).
        drift: the change of the patch embeddings accumulated since then, this step's included (the largest of
            the batch's streams).
        refresh: ``reset`` (reset steps every ``reset_every`` steps at most) or ``staggered`` (no periodic reset;
            the pruned steps refresh the stalest tokens instead).
        trigger: reset as soon as ``drift`` reaches it (None: never).
        change: this step's change alone (the largest of the batch's streams).
        cut: reset when ``change`` reaches it (None: never).

    Step 0 is FULL. A reset step is FULL or GRID by ``reset_mode``, as in :func:`frame_kind`; with ``refresh ==
    "reset"``, no trigger and no drift this is :func:`frame_kind`'s schedule.
    """
    if t < 0 or since_reset < 1:
        raise ValueError(f"need t >= 0 and since_reset >= 1, got {t}, {since_reset}")
    if t == 0:
        return FrameKind.FULL
    reset = (trigger is not None and drift >= trigger) or (cut is not None and change >= cut)
    if refresh == "reset" and reset_every is not None and since_reset >= reset_every:
        reset = True
    if reset:
        return FrameKind.FULL if reset_mode == "full" else FrameKind.GRID
    return FrameKind.ROLLOUT


def staggered_count(num_tokens: int, reset_every: int) -> int:
    """Tokens a staggered refresh adds to each pruned step so that none waits more than ``reset_every`` steps."""
    return math.ceil(num_tokens / reset_every)


def stalest_tokens(age: Tensor, keep: Tensor, count: int) -> Tensor:
    """The ``count`` tokens outside ``keep`` processed longest ago: (B, N) steps since each token was last
    processed, (B, K) kept indices -> (B, count) indices (ties: the lower index first).

    With ``count = staggered_count(N, f)`` added to every pruned step, no token goes more than f steps unprocessed.
    """
    if count <= 0:
        return keep.new_zeros(keep.shape[0], 0)
    n = age.shape[-1]
    order = age.to(torch.float64) * n - torch.arange(n, device=age.device)  # (B, N): by age, then lowest index
    order = order.scatter(1, keep, float("-inf"))
    return order.topk(min(count, n - keep.shape[1]), dim=-1, sorted=False).indices
