"""Token selection: which tokens of a frame are kept.

Every function takes per-token scores of shape (B, N) over the patch grid (no class token) and returns kept indices
of shape (B, K) in ascending (raster) order. Shapes are static: K depends on N and the settings, never on the data,
so the same code runs on meta tensors (for compute accounting) and under CUDA graphs.

Ties are broken deterministically on every device: higher score first, then lower raster index (a stable sort).

Besides the method's own rule (:func:`select_fg_bg` on the warped rollout), the naive baselines of the benchmark live
here: :func:`uniform_subset` and :func:`random_subset` (same K, no guidance) and :func:`box_tokens` (MaskVD-style:
the tokens inside the previous frame's boxes; the one selection whose size depends on the data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache

import torch
from torch import Tensor

from rgtp.config import pick

__all__ = [
    "GRID_PATTERNS",
    "box_tokens",
    "complement",
    "fg_bg_count",
    "gilbert_curve",
    "gilbert_rank",
    "grid_pattern",
    "keep_count",
    "match_pruned",
    "random_subset",
    "rank_descending",
    "select_fg_bg",
    "select_topk",
    "uniform_subset",
]

#: Grid patterns by ``ScheduleConfig.grid_pattern``: (rows (H, 1), columns (1, W)) -> (H, W) kept mask.
GRID_PATTERNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "1in2": lambda y, x: (y + x) % 2 == 0,
    "1in4": lambda y, x: (y % 2 == 0) & (x % 2 == 0),
    "1in9": lambda y, x: (y % 3 == 0) & (x % 3 == 0),
}


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """K = round(keep_ratio * N) with Python's banker's rounding, as the reference does."""
    return round(keep_ratio * num_tokens)


def stride_of(ratio: float) -> int:
    """Sampling stride round(1 / ratio) of a sampling ratio in (0, 1]."""
    return round(1.0 / ratio)


def fg_bg_count(num_tokens: int, keep_ratio: float, fg_ratio: float = 1.0, bg_ratio: float = 0.0) -> int:
    """Number of tokens :func:`select_fg_bg` keeps: ceil(K_fg / s_f) + ceil((N - K_fg) / s_b)."""
    num_fg = keep_count(num_tokens, keep_ratio)
    kept = math.ceil(num_fg / stride_of(fg_ratio))
    if bg_ratio > 0:
        kept += math.ceil((num_tokens - num_fg) / stride_of(bg_ratio))
    return kept


def rank_descending(scores: Tensor, stable: bool = True) -> Tensor:
    """Token indices by descending score: (B, N) -> (B, N) long. Ties go by ascending index (``stable``), or as
    ``torch.argsort``'s default sort orders them (what the reference does; on CPU it is deterministic but its order
    of ties is the implementation's)."""
    if stable:
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.argsort(scores, dim=-1, descending=True)


def select_topk(scores: Tensor, k: int, stable: bool = True) -> Tensor:
    """The k highest-scoring tokens: (B, N) -> (B, k), ascending indices (ties: see :func:`rank_descending`)."""
    if not 0 < k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}], got {k}")
    return rank_descending(scores, stable)[:, :k].sort(dim=-1).values


def uniform_subset(num_tokens: int, k: int, t: int, device: torch.device | str | None = None) -> Tensor:
    """k tokens evenly spaced in raster order, the pattern shifted at every step: -> (1, k) ascending.

    Token i of the subset is floor((i + phase) * N / k), with phase = frac(t * 0.618...) in [0, 1): a stride of
    N / k >= 1 keeps the indices distinct, and the golden-ratio phase walks over the grid so that, over a few steps,
    every token is refreshed.
    """
    if not 0 < k <= num_tokens:
        raise ValueError(f"k must be in [1, {num_tokens}], got {k}")
    phase = (t * 0.6180339887498949) % 1.0
    idx = torch.floor((torch.arange(k, dtype=torch.float64) + phase) * (num_tokens / k)).long()
    return idx.clamp_(max=num_tokens - 1)[None].to(device)


def random_subset(batch: int, num_tokens: int, k: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """k tokens drawn uniformly without replacement for each stream, reproducibly from ``seed``: -> (B, k) ascending."""
    if not 0 < k <= num_tokens:
        raise ValueError(f"k must be in [1, {num_tokens}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.rand(batch, num_tokens, generator=gen)  # (B, N) on the CPU: the same draws on every device
    return draws.topk(k, dim=-1).indices.sort(dim=-1).values.to(device)


def box_tokens(anchors: Tensor, margin: int) -> Tensor:
    """Tokens inside boxes, grown by ``margin`` tokens on every side: (B, H, W) bool -> (B, N) bool."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    grown = anchors.float()[:, None]  # (B, 1, H, W)
    if margin:
        grown = torch.nn.functional.max_pool2d(grown, 2 * margin + 1, stride=1, padding=margin)
    return grown.flatten(1) > 0  # (B, N)


def select_fg_bg(
    scores: Tensor,
    num_fg: int,
    fg_stride: int = 1,
    bg_stride: int | None = None,
    curve_rank: Tensor | None = None,
    stable: bool = True,
) -> Tensor:
    """Foreground/background strided sampling (method §7.2): (B, N) -> (B, K), ascending indices.

    The ``num_fg`` top tokens form the foreground; every ``fg_stride``-th of them is kept, counting by rank. The other
    tokens form the background; every ``bg_stride``-th of them is kept, counting in raster order (none if
    ``bg_stride`` is None). With ``curve_rank`` ((N,) position of each raster cell on a space-filling curve), both
    strides count along the curve instead. ``stable``: how ties of the ranking go (see :func:`rank_descending`).
    """
    num_tokens = scores.shape[-1]
    if not 0 < num_fg <= num_tokens:
        raise ValueError(f"num_fg must be in [1, {num_tokens}], got {num_fg}")
    order = rank_descending(scores, stable)  # (B, N)
    fg, bg = order[:, :num_fg], order[:, num_fg:]  # (B, K_fg), (B, N - K_fg)
    if curve_rank is not None:
        fg = _sort_by(fg, curve_rank)
        bg = _sort_by(bg, curve_rank)
    else:
        bg = bg.sort(dim=-1).values  # raster order
    parts = [fg[:, ::fg_stride]]
    if bg_stride is not None and bg.shape[-1] > 0:
        parts.append(bg[:, ::bg_stride])
    return torch.cat(parts, dim=-1).sort(dim=-1).values


def _sort_by(idx: Tensor, key: Tensor) -> Tensor:
    """Reorder (B, M) token indices by key[idx] ascending."""
    order = key[idx].argsort(dim=-1, stable=True)  # (B, M)
    return idx.gather(-1, order)


def complement(keep_idx: Tensor, num_tokens: int) -> Tensor:
    """Pruned indices, ascending: (B, K) -> (B, N - K). Static shapes (no boolean indexing)."""
    kept = torch.zeros(keep_idx.shape[0], num_tokens, dtype=torch.int8, device=keep_idx.device)
    kept.scatter_(1, keep_idx, 1)
    order = kept.argsort(dim=-1, stable=True)  # pruned first (0), each group in ascending index
    return order[:, : num_tokens - keep_idx.shape[-1]]


def grid_pattern(height: int, width: int, name: str, device: torch.device | str | None = None) -> Tensor:
    """Kept raster indices of a fixed grid pattern (method §7.3): -> (K,) long, ascending.

    ``1in2``: checkerboard, (y + x) even. ``1in4``: y and x even. ``1in9``: y and x multiples of 3.
    """
    y = torch.arange(height)[:, None]  # (H, 1); built on the CPU: a constant pattern, also for meta tensors
    x = torch.arange(width)[None, :]  # (1, W)
    keep = pick(GRID_PATTERNS, name, "grid pattern")(y, x)  # (H, W) bool
    return torch.arange(height * width)[keep.flatten()].to(device)


def match_pruned(keys: Tensor, keep_idx: Tensor, prune_idx: Tensor) -> Tensor:
    """For each pruned token, the kept token whose key has the largest raw dot product with its key.

    Args:
        keys: (B, N, C) per-token keys (the reference uses block 0's head-averaged keys, C = 64).
        keep_idx: (B, K) kept indices.
        prune_idx: (B, P) pruned indices.

    Returns:
        (B, P) raster index of the matched kept token (first kept token in ``keep_idx`` order on ties).
    """
    c = keys.shape[-1]
    kept = keys.gather(1, keep_idx[..., None].expand(-1, -1, c))  # (B, K, C)
    pruned = keys.gather(1, prune_idx[..., None].expand(-1, -1, c))  # (B, P, C)
    sim = torch.bmm(pruned, kept.transpose(1, 2))  # (B, P, K)
    return keep_idx.gather(1, sim.argmax(dim=-1))  # (B, P)


def gilbert_curve(width: int, height: int) -> Iterator[tuple[int, int]]:
    """Cells (x, y) of a width x height rectangle along the generalised Hilbert ("gilbert") curve."""
    if width <= 0 or height <= 0:
        return
    if width >= height:
        yield from _gilbert(0, 0, width, 0, 0, height)
    else:
        yield from _gilbert(0, 0, 0, height, width, 0)  # major axis along y


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Curve over the parallelogram spanned by the major axis (ax, ay) and the minor axis (bx, by) from (x, y)."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if h == 1:  # a single row along the major axis
        for i in range(w):
            yield x + i * dax, y + i * day
        return
    if w == 1:  # a single column along the minor axis
        for i in range(h):
            yield x + i * dbx, y + i * dby
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:  # long case: split the major axis in two halves
        if w2 % 2 and w > 2:  # keep the halves' lengths even so the curve can turn
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        return
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    # standard case: up, across, down
    yield from _gilbert(x, y, bx2, by2, ax2, ay2)
    yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    yield from _gilbert(
        x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2)
    )


@lru_cache(maxsize=16)
def _gilbert_rank_list(height: int, width: int) -> tuple[int, ...]:
    rank = [0] * (height * width)
    for i, (x, y) in enumerate(gilbert_curve(width, height)):
        rank[(height - 1 - y) * width + x] = i  # the curve's y runs from the bottom row upwards (method §7.4)
    return tuple(rank)


def gilbert_rank(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(N,) position on the gilbert curve of each raster cell: cell (row, col) gets gilbert(col, H - 1 - row)."""
    return torch.tensor(_gilbert_rank_list(height, width), dtype=torch.long, device=device)
