"""Token tracking: carry the importance heatmap of frame t-1 to frame t by a local offset search (method §6)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OUT_OF_GRID", "REFERENCE_SENTINEL", "best_offsets", "offset_sources", "warp_importance"]

#: How candidates outside the grid are treated. ``reference``: as the reference code (method §6, rules 3-5) does, every
#: score of exactly 0.0 (out-of-grid neighbours, which meet zero padding, and genuine zeros) becomes -100, so an
#: out-of-grid candidate wins only when every in-grid score is below -100, and then the token takes the heatmap value
#: of grid cell 0. ``exclude``: out-of-grid candidates never win (ours; a token always takes an in-grid neighbour).
OUT_OF_GRID = ("reference", "exclude")
REFERENCE_SENTINEL = -100.0


@lru_cache(maxsize=32)
def _offset_sources_cpu(height: int, width: int, radius: int) -> tuple[Tensor, Tensor]:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")  # (H, W) each
    sources, valid = [], []
    for dy in range(-radius, radius + 1):  # row-major offset order: dy outer, dx inner
        for dx in range(-radius, radius + 1):
            sy, sx = ys + dy, xs + dx
            inside = (sy >= 0) & (sy < height) & (sx >= 0) & (sx < width)
            sources.append((sy.clamp(0, height - 1) * width + sx.clamp(0, width - 1)).flatten())
            valid.append(inside.flatten())
    return torch.stack(sources), torch.stack(valid)  # (O, N) long, (O, N) bool


def offset_sources(
    height: int, width: int, radius: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Source cell of every (offset, cell) pair and whether it lies inside the grid.

    Returns:
        sources: (O, N) raster index of cell p + o (clamped into the grid where it lies outside),
            with O = (2 * radius + 1) ** 2 offsets in row-major order (dy outer, dx inner); the zero offset is O // 2.
        valid: (O, N) True where p + o lies inside the grid.
    """
    src, valid = _offset_sources_cpu(height, width, radius)
    return src.to(device), valid.to(device)


def best_offsets(
    features: Tensor,
    prev_features: Tensor,
    grid: tuple[int, int],
    radius: int = 1,
    rel_threshold_pct: float | None = None,
    out_of_grid: str = "reference",
) -> Tensor:
    """For each current token, the offset to the best-matching token of the previous frame within ``radius``.

    The match score is the raw dot product of the two tokens' features (the reference uses 768-d patch embeddings
    before the position encoding). Candidates outside the grid are handled as ``out_of_grid`` says (see
    :data:`OUT_OF_GRID`); ties go to the first offset in row-major order. With ``rel_threshold_pct`` = P, a non-zero
    offset wins only if its score is at least (100 + P)% of the zero-offset score (clamped to 0.1 when not
    positive); otherwise the token stays in place.

    Args:
        features: (B, N, C) features of frame t.
        prev_features: (B, N, C) features of frame t-1.
        grid: (H, W) token grid, N = H * W.
        out_of_grid: ``reference`` or ``exclude``.

    Returns:
        (B, N) long, the winning offset index in [0, (2 * radius + 1) ** 2).
    """
    b, n, c = features.shape
    h, w = grid
    if n != h * w or prev_features.shape != features.shape:
        raise ValueError(f"features {tuple(features.shape)} / {tuple(prev_features.shape)} do not match grid {grid}")
    prev = F.pad(prev_features.view(b, h, w, c), (0, 0, radius, radius, radius, radius))  # (B, H+2r, W+2r, C)
    cur = features.reshape(b * n, 1, c)  # (B*N, 1, C)
    scores = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            shifted = prev[:, dy : dy + h, dx : dx + w].reshape(b * n, c, 1)  # (B*N, C, 1)
            scores.append(torch.bmm(cur, shifted).view(b, n))  # (B, N): N*C MACs per offset
    score = torch.stack(scores, dim=1)  # (B, O, N)
    if out_of_grid == "reference":  # zero padding scores exactly 0.0, as do genuine zeros: all become the sentinel
        score = score.masked_fill(score == 0.0, REFERENCE_SENTINEL)
    elif out_of_grid == "exclude":
        _, valid = offset_sources(h, w, radius, features.device)
        score = score.masked_fill(~valid, float("-inf"))
    else:
        raise ValueError(f"out_of_grid must be one of {OUT_OF_GRID}, got {out_of_grid!r}")
    best = score.argmax(dim=1)  # (B, N), first maximum on ties
    if rel_threshold_pct is not None:
        center = score.shape[1] // 2
        zero_score = score[:, center]  # (B, N)
        zero_score = torch.where(zero_score > 0, zero_score, torch.full_like(zero_score, 0.1))
        moves = score.amax(dim=1) / zero_score >= (100.0 + rel_threshold_pct) / 100.0
        best = torch.where(moves, best, torch.full_like(best, center))
    return best


def warp_importance(
    importance: Tensor,
    features: Tensor,
    prev_features: Tensor,
    grid: tuple[int, int],
    radius: int = 1,
    rel_threshold_pct: float | None = None,
    out_of_grid: str = "reference",
) -> Tensor:
    """Pull-warp the previous heatmap onto the current frame: H'(p) = H(p + o*(p)).

    Args:
        importance: (B, N) heatmap of frame t-1.
        features: (B, N, C) tracking features of frame t (as in :func:`best_offsets`).
        prev_features: (B, N, C) tracking features of frame t-1.
        grid: (h, w) token grid.
        radius: search radius in tokens.
        rel_threshold_pct: as in :func:`best_offsets`.
        out_of_grid: as in :func:`best_offsets`; a token whose winner lies outside the grid (``reference`` only) takes
            the value of cell 0, as the reference does.

    Returns:
        (B, N) warped heatmap (not renormalised; it is only used for ranking). ``radius=0`` returns ``importance``.
    """
    if radius == 0:
        return importance
    best = best_offsets(features, prev_features, grid, radius, rel_threshold_pct, out_of_grid)  # (B, N)
    sources, valid = offset_sources(grid[0], grid[1], radius, importance.device)  # (O, N) each
    src = sources.gather(0, best)  # (B, N): (O, N) gathered by row index per (b, n)
    src = torch.where(valid.gather(0, best), src, torch.zeros_like(src))  # an out-of-grid winner copies cell 0
    return importance.gather(1, src)
