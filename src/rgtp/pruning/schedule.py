"""Frame schedule: which steps are processed in full, pruned with a fixed grid, or pruned by rollout."""

from __future__ import annotations

from enum import Enum

__all__ = ["FrameKind", "frame_kind"]


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
