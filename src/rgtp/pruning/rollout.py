"""Attention rollout (method §5): which input tokens the output depended on, from the attention of selected blocks.

Conventions. ``fused`` matrices are (B, Q, K) head-fused attention probabilities (rows = queries = outputs,
columns = keys = inputs). Each contributing block enters the rollout as Ã = rownorm((F + I) / 2); the rollout is
R = Ã_L ... Ã_1 (first contributing block rightmost). The relevance of input j to a set of output tokens with weights
w (summing to 1) is (wᵀ R)_j, computed either by the *forward* form (matrix products, then one vector product)
or by the *backward* form (vector-matrix products only, N² instead of N³ per block); both give the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rgtp.config import pick

__all__ = [
    "HEAD_FUSIONS",
    "ROLLOUT_FORMS",
    "anchor_mask",
    "check_pool",
    "fuse_heads",
    "normalize_sum",
    "pool_anchors",
    "pool_key_columns",
    "pool_query_rows",
    "residual_normalized",
    "residual_vecmat",
    "restrict",
    "rollout_relevance",
    "upsample_grid",
]


def fuse_heads(attn: Tensor, how: str = "rms") -> Tensor:
    """Fuse attention heads: (B, heads, Q, K) -> (B, Q, K).

    ``mean``: the plain mean over heads. ``rms``: sqrt(mean over heads of P²) (the reference's ``root_mean_squares``,
    used by every reported configuration); its rows no longer sum to 1.
    """
    return pick(HEAD_FUSIONS, how, "head fusion")(attn)


def _mean_heads(attn: Tensor) -> Tensor:
    return attn.mean(dim=1)


def _rms_heads(attn: Tensor) -> Tensor:
    # accumulate head by head: several times faster than square().mean(1) over the strided head axis
    acc = attn[:, 0].square()  # (B, Q, K)
    for h in range(1, attn.shape[1]):
        acc.addcmul_(attn[:, h], attn[:, h])
    return acc.div_(attn.shape[1]).sqrt_()


#: Head fusions by ``RolloutConfig.head_fusion``: (B, heads, Q, K) -> (B, Q, K).
HEAD_FUSIONS: dict[str, Callable[[Tensor], Tensor]] = {"mean": _mean_heads, "rms": _rms_heads}


def residual_normalized(fused: Tensor) -> Tensor:
    """Ã = rownorm((F + I) / 2) for square (B, n, n) fused attention -> (B, n, n)."""
    a = fused.clone()
    a.diagonal(dim1=-2, dim2=-1).add_(1.0)  # F + I (the 1/2 cancels in the row normalisation)
    return a / a.sum(dim=-1, keepdim=True)


def residual_vecmat(weights: Tensor, fused: Tensor, row_sum: Tensor | None = None) -> Tensor:
    """wᵀ Ã without forming Ã: (B, n) x (B, n, n) -> (B, n).

    With r_i = Σ_j F_ij + 1, Ã_ij = (F_ij + δ_ij) / r_i, so (wᵀ Ã)_j = Σ_i (w_i / r_i) F_ij + w_j / r_j: one
    vector-matrix product (n² MACs). ``row_sum`` overrides r (needed when F was restricted after normalisation).
    """
    r = fused.sum(dim=-1) + 1.0 if row_sum is None else row_sum  # (B, n)
    u = weights / r  # (B, n)
    return torch.bmm(u[:, None, :], fused).squeeze(1) + u  # (B, 1, n) @ (B, n, n) -> (B, n)


def restrict(x: Tensor, idx: Tensor) -> Tensor:
    """Rows and columns ``idx`` of square matrices: (B, n, n), (B, k) -> (B, k, k)."""
    k = idx.shape[-1]
    rows = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # (B, k, n)
    return rows.gather(2, idx[:, None, :].expand(-1, k, -1))  # (B, k, k)


def rollout_relevance(
    fused: Sequence[Tensor], weights: Tensor, form: str = "backward", first_keep: Tensor | None = None
) -> Tensor:
    """Relevance wᵀ Ã_L ... Ã_1 of each input token for outputs weighted by ``weights``.

    Args:
        fused: the contributing blocks' square fused attention, first block first. Each is (B, n, n), except that
            with ``first_keep`` the first is (B, m, m) and is restricted (after normalisation) to the rows and
            columns ``first_keep``, the tokens that survived pruning after it (method §5.4).
        weights: (B, n) output weights (for example 1/|anchors| on anchor tokens, or one-hot on the class token).
        form: ``forward`` builds R with matrix products (the reference at 672 and for ViViT); ``backward`` propagates
            the vector (the reference's ``rollout_backward`` at 1024). Same result up to rounding.
        first_keep: (B, n) indices into the first block's tokens.

    Returns:
        (B, n) relevance of each input token (of the kept tokens, with ``first_keep``).
    """
    propagate = pick(ROLLOUT_FORMS, form, "rollout form")
    return weights if not fused else propagate(fused, weights, first_keep)


def _backward(fused: Sequence[Tensor], weights: Tensor, first_keep: Tensor | None) -> Tensor:
    first, rest = fused[0], fused[1:]
    w = weights
    for f in reversed(rest):
        w = residual_vecmat(w, f)
    if first_keep is None:
        return residual_vecmat(w, first)
    row_sum = (first.sum(dim=-1) + 1.0).gather(1, first_keep)  # (B, n): normaliser of the unrestricted rows
    return residual_vecmat(w, restrict(first, first_keep), row_sum)


def _forward(fused: Sequence[Tensor], weights: Tensor, first_keep: Tensor | None) -> Tensor:
    first, rest = fused[0], fused[1:]
    rollout = residual_normalized(first)  # (B, m, m); the product with I is skipped
    if first_keep is not None:
        rollout = restrict(rollout, first_keep)  # (B, n, n)
    for f in rest:
        rollout = torch.bmm(residual_normalized(f), rollout)  # (B, n, n)
    return torch.bmm(weights[:, None, :], rollout).squeeze(1)  # (B, n)


#: Rollout forms by ``RolloutConfig.form``: (fused rows, output weights, first_keep) -> relevance (B, n).
ROLLOUT_FORMS: dict[str, Callable[[Sequence[Tensor], Tensor, Tensor | None], Tensor]] = {
    "forward": _forward,
    "backward": _backward,
}


def normalize_sum(x: Tensor) -> Tensor:
    """Scale each row of (B, N) to sum 1 (a row summing to 0 becomes uniform)."""
    total = x.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[-1])
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), uniform)


def anchor_mask(
    boxes: Tensor,
    scores: Tensor,
    score_thr: float,
    grid: tuple[int, int],
    stride: float,
) -> Tensor:
    """Tokens covered by detections with score > ``score_thr``: -> (H, W) bool.

    Box corners are divided by ``stride`` (pixels per token), x1/y1 floored and x2/y2 ceiled, and every covered
    cell is an anchor. Unlike the reference, the far edge is clipped to the grid size (so the last row and column
    can be anchors) and every box covers at least one cell. If no box passes the threshold, every token is an anchor.

    Args:
        boxes: (M, 4) xyxy boxes in input pixels.
        scores: (M,) detection scores.
    """
    h, w = grid
    keep = scores > score_thr  # (M,)
    x1 = (boxes[:, 0] / stride).floor().clamp(0, w - 1)
    y1 = (boxes[:, 1] / stride).floor().clamp(0, h - 1)
    x2 = torch.maximum((boxes[:, 2] / stride).ceil().clamp(0, w), x1 + 1)
    y2 = torch.maximum((boxes[:, 3] / stride).ceil().clamp(0, h), y1 + 1)
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)[None, :, None]  # (1, H, 1)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)[None, None, :]  # (1, 1, W)
    inside = (
        (ys >= y1[:, None, None]) & (ys < y2[:, None, None]) & (xs >= x1[:, None, None]) & (xs < x2[:, None, None])
    )  # (M, H, W)
    mask = (inside & keep[:, None, None]).any(dim=0)  # (H, W)
    return torch.where(mask.any(), mask, torch.ones_like(mask))


def pool_key_columns(fused: Tensor, grid: tuple[int, int], pool: int) -> Tensor:
    """Sum key columns over pool x pool cells: (B, Q, H*W) -> (B, Q, H*W / pool²)."""
    b, q, _ = fused.shape
    h, w = grid
    x = fused.view(b, q, h // pool, pool, w // pool, pool)  # (B, Q, h', p, w', p)
    return x.sum(dim=(3, 5)).view(b, q, -1)


def pool_query_rows(rows: Tensor, query_idx: Tensor | None, grid: tuple[int, int], pool: int) -> tuple[Tensor, Tensor]:
    """Average query rows within pool x pool cells, over the queries that are present.

    Args:
        rows: (B, Q, M) rows of Q queries (all H*W when ``query_idx`` is None).
        query_idx: (B, Q) raster index of each row's query, or None for all queries in raster order.

    Returns:
        pooled: (B, H*W / pool², M) mean of the present queries of each cell (0 for cells without any).
        present: (B, H*W / pool²) bool, whether the cell had at least one query.
    """
    b, _q, m = rows.shape
    h, w = grid
    cells = (h // pool) * (w // pool)
    if query_idx is None:
        pooled = rows.view(b, h // pool, pool, w // pool, pool, m).mean(dim=(2, 4)).view(b, cells, m)
        return pooled, torch.ones(b, cells, dtype=torch.bool, device=rows.device)
    # scatter_add is deterministic (and ~10x faster) on the CPU only; elsewhere use the canvas form
    pooled_sums = _cell_sums_scatter_add if rows.device.type == "cpu" else _cell_sums_canvas
    sums, counts = pooled_sums(rows, query_idx, grid, pool)  # (B, cells, M), (B, cells)
    return sums / counts.clamp_min(1.0)[..., None], counts > 0


def _cell_sums_scatter_add(rows: Tensor, query_idx: Tensor, grid: tuple[int, int], pool: int) -> tuple[Tensor, Tensor]:
    """Per pooled cell, the sum of its queries' rows and their count: -> (B, cells, M), (B, cells)."""
    b, _, m = rows.shape
    h, w = grid
    ys = torch.arange(h, device=rows.device)[:, None] // pool
    xs = torch.arange(w, device=rows.device)[None, :] // pool
    cell_of = (ys * (w // pool) + xs).flatten()[query_idx]  # (B, Q) pooled cell of each query
    cells = (h // pool) * (w // pool)
    sums = rows.new_zeros(b, cells, m).scatter_add_(1, cell_of[..., None].expand(-1, -1, m), rows)
    counts = rows.new_zeros(b, cells).scatter_add_(1, cell_of, torch.ones_like(rows[..., 0]))
    return sums, counts


def _cell_sums_canvas(rows: Tensor, query_idx: Tensor, grid: tuple[int, int], pool: int) -> tuple[Tensor, Tensor]:
    """As :func:`_cell_sums_scatter_add`, deterministically on every device (scatter into the grid, sum cells)."""
    b, _, m = rows.shape
    h, w = grid
    cells = (h // pool) * (w // pool)
    canvas = rows.new_zeros(b, h * w, m).scatter_(1, query_idx[..., None].expand(-1, -1, m), rows)  # (B, N, M)
    mask = rows.new_zeros(b, h * w).scatter_(1, query_idx, 1.0)  # (B, N)
    sums = canvas.view(b, h // pool, pool, w // pool, pool, m).sum(dim=(2, 4)).view(b, cells, m)
    counts = mask.view(b, h // pool, pool, w // pool, pool).sum(dim=(2, 4)).view(b, cells)
    return sums, counts


def pool_anchors(mask: Tensor, pool: int) -> Tensor:
    """Pool a (B, H, W) anchor mask: a cell is an anchor if at least half of its tokens are -> (B, H*W / pool²).

    If that leaves a stream without anchors (small boxes), every cell touching an anchor token is used instead.
    """
    b, h, w = mask.shape
    frac = mask.float().view(b, h // pool, pool, w // pool, pool).mean(dim=(2, 4)).view(b, -1)  # (B, cells)
    pooled = frac >= 0.5
    return torch.where(pooled.any(dim=-1, keepdim=True), pooled, frac > 0)


def upsample_grid(x: Tensor, grid: tuple[int, int], pool: int) -> Tensor:
    """Bilinear upsampling (align_corners=False) of pooled maps: (B, H*W / pool²) -> (B, H*W)."""
    b = x.shape[0]
    h, w = grid
    small = x.view(b, 1, h // pool, w // pool)  # (B, 1, h', w')
    return F.interpolate(small, scale_factor=pool, mode="bilinear", align_corners=False).view(b, h * w)


def check_pool(grid: tuple[int, int], pool: int) -> None:
    """Raise ValueError unless ``pool`` divides both sides of ``grid``."""
    if pool < 1 or grid[0] % pool or grid[1] % pool:
        raise ValueError(f"rollout pool {pool} must divide the token grid {grid}")
