"""Tests for rgtp.pruning.rollout against naive loop references (method §5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rgtp.pruning.rollout import (
    anchor_mask,
    fuse_heads,
    normalize_sum,
    pool_anchors,
    pool_key_columns,
    pool_query_rows,
    residual_normalized,
    residual_vecmat,
    rollout_relevance,
    upsample_grid,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_fused(b: int, n: int, seed: int) -> torch.Tensor:
    """(B, n, n) non-negative 'fused attention' (rows do not sum to 1, like rms fusion)."""
    return torch.rand(b, n, n, generator=_gen(seed), dtype=DT)


# ----------------------------------------------------------------------------------------------------------- naive


def naive_fuse(attn: torch.Tensor, how: str) -> torch.Tensor:
    b, h, q, k = attn.shape
    out = torch.zeros(b, q, k, dtype=attn.dtype)
    for bi in range(b):
        for i in range(q):
            for j in range(k):
                vals = [float(attn[bi, hi, i, j]) for hi in range(h)]
                if how == "mean":
                    out[bi, i, j] = sum(vals) / h
                else:
                    out[bi, i, j] = math.sqrt(sum(v * v for v in vals) / h)
    return out


def naive_residual_normalized(f: torch.Tensor) -> torch.Tensor:
    """rownorm((F + I) / 2) with explicit loops, for one (n, n) matrix."""
    n = f.shape[0]
    a = [[(float(f[i, j]) + (1.0 if i == j else 0.0)) / 2.0 for j in range(n)] for i in range(n)]
    out = torch.zeros(n, n, dtype=DT)
    for i in range(n):
        s = sum(a[i])
        for j in range(n):
            out[i, j] = a[i][j] / s
    return out


def naive_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, m = a.shape
    p = b.shape[1]
    out = torch.zeros(n, p, dtype=DT)
    for i in range(n):
        for j in range(p):
            out[i, j] = sum(float(a[i, k]) * float(b[k, j]) for k in range(m))
    return out


def naive_vecmat(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    n, m = a.shape
    return torch.tensor([sum(float(w[i]) * float(a[i, j]) for i in range(n)) for j in range(m)], dtype=DT)


def naive_rollout(fused: list[torch.Tensor], weights: torch.Tensor, first_keep: torch.Tensor | None) -> torch.Tensor:
    """Per batch: R = I; R <- Ã_l R; after the first block optionally restrict rows and columns; then wᵀ R."""
    out = []
    for bi in range(weights.shape[0]):
        r = naive_residual_normalized(fused[0][bi])
        if first_keep is not None:
            keep = [int(v) for v in first_keep[bi]]
            r = torch.tensor([[float(r[i, j]) for j in keep] for i in keep], dtype=DT)
        for f in fused[1:]:
            r = naive_matmul(naive_residual_normalized(f[bi]), r)
        out.append(naive_vecmat(weights[bi], r))
    return torch.stack(out)


def naive_anchor_mask(boxes, scores, thr, grid, stride) -> torch.Tensor:
    h, w = grid
    mask = torch.zeros(h, w, dtype=torch.bool)
    any_box = False
    for (bx1, by1, bx2, by2), s in zip(boxes.tolist(), scores.tolist(), strict=True):
        if not s > thr:
            continue
        any_box = True
        x1 = min(max(math.floor(bx1 / stride), 0), w - 1)
        y1 = min(max(math.floor(by1 / stride), 0), h - 1)
        x2 = max(min(max(math.ceil(bx2 / stride), 0), w), x1 + 1)
        y2 = max(min(max(math.ceil(by2 / stride), 0), h), y1 + 1)
        for y in range(y1, y2):
            for x in range(x1, x2):
                mask[y, x] = True
    if not any_box or not mask.any():
        mask[:] = True
    return mask


def naive_bilinear_up2(small: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with align_corners=False (half-pixel centres, edge clamped), one (h, w) map."""
    h, w = small.shape

    def taps(o: int, n: int) -> list[tuple[int, float]]:
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = math.floor(src)
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        return [(i0, 1.0 - lam), (i1, lam)]

    out = torch.zeros(2 * h, 2 * w, dtype=small.dtype)
    for oy in range(2 * h):
        for ox in range(2 * w):
            out[oy, ox] = sum(wy * wx * float(small[iy, ix]) for iy, wy in taps(oy, h) for ix, wx in taps(ox, w))
    return out


# ----------------------------------------------------------------------------------------------------- fuse_heads


@pytest.mark.parametrize("how", ["mean", "rms"])
def test_fuse_heads_matches_loop(how: str) -> None:
    attn = torch.rand(2, 3, 4, 5, generator=_gen(0), dtype=DT).softmax(dim=-1)
    got = fuse_heads(attn, how)
    assert got.shape == (2, 4, 5)
    assert_close(got, naive_fuse(attn, how))


def test_fuse_heads_rms_differs_from_mean_and_rows_do_not_sum_to_one() -> None:
    attn = torch.rand(1, 4, 3, 6, generator=_gen(1), dtype=DT).softmax(dim=-1)
    rms, mean = fuse_heads(attn, "rms"), fuse_heads(attn, "mean")
    assert_close(mean.sum(-1), torch.ones(1, 3, dtype=DT))
    assert (rms.sum(-1) > 1.0 + 1e-9).all()  # rms >= mean elementwise, strictly here (heads differ)


def test_fuse_heads_unknown_name_raises() -> None:
    with pytest.raises(ValueError):
        fuse_heads(torch.rand(1, 2, 3, 3), "max")


# ----------------------------------------------------------------------------------------------- residual + norm


def test_residual_normalized_matches_loop_and_is_row_stochastic() -> None:
    f = _random_fused(2, 5, 2)
    got = residual_normalized(f)
    assert_close(got.sum(-1), torch.ones(2, 5, dtype=DT))
    for bi in range(2):
        assert_close(got[bi], naive_residual_normalized(f[bi]))
    assert_close(f, _random_fused(2, 5, 2))  # input not modified in place


def test_residual_vecmat_equals_w_times_residual_normalized() -> None:
    f = _random_fused(3, 6, 3)
    w = torch.rand(3, 6, generator=_gen(4), dtype=DT)
    got = residual_vecmat(w, f)
    for bi in range(3):
        assert_close(got[bi], naive_vecmat(w[bi], naive_residual_normalized(f[bi])))


# --------------------------------------------------------------------------------------------- rollout_relevance


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_rollout_relevance_matches_loop_product(form: str) -> None:
    fused = [_random_fused(2, 5, s) for s in (10, 11, 12, 13)]
    w = torch.rand(2, 5, generator=_gen(14), dtype=DT)
    w = w / w.sum(-1, keepdim=True)
    got = rollout_relevance(fused, w, form=form)
    assert_close(got, naive_rollout(fused, w, None))
    assert_close(got.sum(-1), torch.ones(2, dtype=DT))  # row-stochastic product keeps the mass


def test_rollout_forward_equals_backward() -> None:
    fused = [_random_fused(2, 7, s) for s in (20, 21, 22)]
    w = torch.rand(2, 7, generator=_gen(23), dtype=DT)
    assert_close(rollout_relevance(fused, w, "forward"), rollout_relevance(fused, w, "backward"))


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_rollout_first_keep_restricts_after_normalisation_with_larger_first(form: str) -> None:
    m, n = 7, 4
    first = _random_fused(2, m, 30)  # larger than the others
    rest = [_random_fused(2, n, s) for s in (31, 32)]
    keep = torch.tensor([[6, 0, 3, 2], [1, 5, 4, 0]])  # kept order, not sorted
    w = torch.zeros(2, n, dtype=DT)
    w[:, 0] = 1.0  # one-hot output (like the CLS token)
    got = rollout_relevance([first, *rest], w, form=form, first_keep=keep)
    want = naive_rollout([first, *rest], w, keep)
    assert got.shape == (2, n)
    assert_close(got, want)
    assert (got.sum(-1) < 1.0 - 1e-6).all()  # mass that flowed to dropped tokens is lost (method §5.4)


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_rollout_first_keep_single_block(form: str) -> None:
    first = _random_fused(1, 6, 40)
    keep = torch.tensor([[5, 1, 2]])
    w = torch.tensor([[0.2, 0.5, 0.3]], dtype=DT)
    assert_close(rollout_relevance([first], w, form=form, first_keep=keep), naive_rollout([first], w, keep))


def test_rollout_first_keep_forward_equals_backward() -> None:
    first = _random_fused(2, 9, 50)
    rest = [_random_fused(2, 5, s) for s in (51, 52, 53)]
    keep = torch.stack([torch.randperm(9, generator=_gen(54))[:5], torch.randperm(9, generator=_gen(55))[:5]])
    w = torch.rand(2, 5, generator=_gen(56), dtype=DT)
    fw = rollout_relevance([first, *rest], w, "forward", keep)
    bw = rollout_relevance([first, *rest], w, "backward", keep)
    assert_close(fw, bw)


def test_rollout_unknown_form_raises() -> None:
    with pytest.raises(ValueError):
        rollout_relevance([_random_fused(1, 3, 0)], torch.ones(1, 3, dtype=DT), form="sideways")


# ----------------------------------------------------------------------------------------------------- anchor_mask


def test_anchor_mask_floor_ceil_of_box_over_stride() -> None:
    boxes = torch.tensor([[17.0, 33.0, 50.0, 60.0]])  # x: 1.06..3.125 -> [1, 4); y: 2.06..3.75 -> [2, 4)
    got = anchor_mask(boxes, torch.tensor([0.9]), 0.1, (6, 8), 16.0)
    want = torch.zeros(6, 8, dtype=torch.bool)
    want[2:4, 1:4] = True
    assert got.dtype == torch.bool
    assert torch.equal(got, want)


def test_anchor_mask_score_threshold_is_strict() -> None:
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 48.0, 48.0], [64.0, 0.0, 80.0, 16.0]])
    scores = torch.tensor([0.1, 0.11, 0.05])  # only the second passes "> 0.1"
    got = anchor_mask(boxes, scores, 0.1, (5, 5), 16.0)
    want = torch.zeros(5, 5, dtype=torch.bool)
    want[2, 2] = True
    assert torch.equal(got, want)


def test_anchor_mask_empty_set_is_all_true() -> None:
    assert anchor_mask(torch.zeros(0, 4), torch.zeros(0), 0.1, (3, 4), 16.0).all()
    low = anchor_mask(torch.tensor([[0.0, 0.0, 30.0, 30.0]]), torch.tensor([0.05]), 0.1, (3, 4), 16.0)
    assert low.shape == (3, 4) and low.all()


def test_anchor_mask_box_touching_last_row_and_column_marks_them() -> None:
    # Deliberate difference from the reference (which clips x2, y2 to G-1 and so never marks the last row/column).
    h, w, s = 4, 6, 16.0
    boxes = torch.tensor([[w * s - 20.0, h * s - 20.0, w * s, h * s]])
    got = anchor_mask(boxes, torch.tensor([1.0]), 0.1, (h, w), s)
    want = torch.zeros(h, w, dtype=torch.bool)
    want[h - 2 :, w - 2 :] = True
    assert torch.equal(got, want)
    assert got[-1].any() and got[:, -1].any()


def test_anchor_mask_box_beyond_the_grid_is_clipped() -> None:
    boxes = torch.tensor([[-40.0, -40.0, 500.0, 20.0]])
    got = anchor_mask(boxes, torch.tensor([1.0]), 0.1, (4, 6), 16.0)
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[0:2, :] = True
    assert torch.equal(got, want)


@pytest.mark.parametrize("box", [[20.0, 20.0, 20.5, 20.5], [32.0, 32.0, 32.0, 32.0], [95.9, 63.9, 96.0, 64.0]])
def test_anchor_mask_tiny_box_covers_at_least_one_cell(box: list[float]) -> None:
    got = anchor_mask(torch.tensor([box]), torch.tensor([1.0]), 0.1, (4, 6), 16.0)
    assert 1 <= int(got.sum()) <= 4
    assert not got.all()
    assert torch.equal(got, naive_anchor_mask(torch.tensor([box]), torch.tensor([1.0]), 0.1, (4, 6), 16.0))


def test_anchor_mask_degenerate_box_gives_finite_normalised_weights() -> None:
    mask = anchor_mask(torch.tensor([[33.0, 33.0, 33.0, 33.0]]), torch.tensor([1.0]), 0.1, (4, 4), 16.0)
    pooled = pool_anchors(mask[None], 2)  # one token in a 2x2 cell: the fallback must keep it
    weights = normalize_sum(pooled.to(DT))
    assert pooled.any()
    assert torch.isfinite(weights).all()
    assert_close(weights.sum(-1), torch.ones(1, dtype=DT))


def test_anchor_mask_random_boxes_match_loop() -> None:
    g = _gen(60)
    for _ in range(5):
        xy = torch.rand(6, 2, generator=g) * 120 - 10
        wh = torch.rand(6, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + wh], dim=1)
        scores = torch.rand(6, generator=g)
        got = anchor_mask(boxes, scores, 0.3, (7, 9), 13.0)
        assert torch.equal(got, naive_anchor_mask(boxes, scores, 0.3, (7, 9), 13.0))


# -------------------------------------------------------------------------------------------------------- pooling


def _cell_members(h: int, w: int, pool: int) -> list[list[int]]:
    cells = []
    for cy in range(h // pool):
        for cx in range(w // pool):
            cells.append([(cy * pool + dy) * w + cx * pool + dx for dy in range(pool) for dx in range(pool)])
    return cells


def test_pool_key_columns_sums_over_cells() -> None:
    h, w, pool = 4, 6, 2
    f = torch.rand(2, 3, h * w, generator=_gen(70), dtype=DT)
    got = pool_key_columns(f, (h, w), pool)
    cells = _cell_members(h, w, pool)
    want = torch.zeros(2, 3, len(cells), dtype=DT)
    for bi in range(2):
        for q in range(3):
            for c, members in enumerate(cells):
                want[bi, q, c] = sum(float(f[bi, q, j]) for j in members)
    assert got.shape == (2, 3, 6)
    assert_close(got, want)
    assert_close(got.sum(-1), f.sum(-1))


def test_pool_query_rows_full_is_mean_over_cells() -> None:
    h, w, pool, m = 4, 6, 2, 5
    rows = torch.rand(2, h * w, m, generator=_gen(71), dtype=DT)
    pooled, present = pool_query_rows(rows, None, (h, w), pool)
    cells = _cell_members(h, w, pool)
    want = torch.zeros(2, len(cells), m, dtype=DT)
    for bi in range(2):
        for c, members in enumerate(cells):
            for k in range(m):
                want[bi, c, k] = sum(float(rows[bi, i, k]) for i in members) / len(members)
    assert_close(pooled, want)
    assert present.dtype == torch.bool and present.shape == (2, 6) and present.all()


def test_pool_query_rows_partial_means_only_present_queries() -> None:
    h, w, pool, m, q = 4, 6, 2, 3, 9
    # unsorted; cells with 4, 3, 1 and 0 present queries in each stream
    query_idx = torch.tensor([[7, 0, 1, 9, 23, 16, 17, 22, 13], [4, 5, 10, 11, 20, 2, 19, 18, 12]])
    rows = torch.rand(2, q, m, generator=_gen(72), dtype=DT)
    pooled, present = pool_query_rows(rows, query_idx, (h, w), pool)
    cells = _cell_members(h, w, pool)
    want = torch.zeros(2, len(cells), m, dtype=DT)
    want_present = torch.zeros(2, len(cells), dtype=torch.bool)
    for bi in range(2):
        for c, members in enumerate(cells):
            hits = [r for r in range(q) if int(query_idx[bi, r]) in members]
            if hits:
                want_present[bi, c] = True
                for k in range(m):
                    want[bi, c, k] = sum(float(rows[bi, r, k]) for r in hits) / len(hits)
    assert torch.equal(present, want_present)
    assert want_present.sum() == 8  # two absent cells per stream
    assert_close(pooled, want)


def naive_pool_anchors(mask: torch.Tensor, pool: int) -> torch.Tensor:
    b, h, w = mask.shape
    cells = _cell_members(h, w, pool)
    out = torch.zeros(b, len(cells), dtype=torch.bool)
    for bi in range(b):
        flat = mask[bi].flatten().tolist()
        counts = [sum(flat[i] for i in members) for members in cells]
        strict = [cnt * 2 >= len(members) for cnt, members in zip(counts, cells, strict=True)]
        chosen = strict if any(strict) else [cnt > 0 for cnt in counts]
        out[bi] = torch.tensor(chosen)
    return out


def test_pool_anchors_half_of_the_cell_and_fallback() -> None:
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # cell 0: 2 of 4 -> anchor
    mask[0, 0, 2] = True  # cell 1: 1 of 4 -> not an anchor (another cell passes)
    mask[1, 3, 3] = True  # stream 1: only single tokens -> fallback: every touched cell
    mask[1, 0, 1] = True
    got = pool_anchors(mask, 2)
    want = torch.tensor([[True, False, False, False], [True, False, False, True]])
    assert torch.equal(got, want)
    assert torch.equal(got, naive_pool_anchors(mask, 2))


def test_pool_anchors_random_masks_match_loop() -> None:
    g = _gen(73)
    for density in (0.1, 0.3, 0.6):
        mask = torch.rand(3, 6, 8, generator=g) < density
        assert torch.equal(pool_anchors(mask, 2), naive_pool_anchors(mask, 2))


# ------------------------------------------------------------------------------------------ upsample / normalise


def test_upsample_grid_shape_and_constant_map() -> None:
    x = torch.full((2, 6), 0.25, dtype=DT)  # (2, 3) pooled grid of a (4, 6) grid
    up = upsample_grid(x, (4, 6), 2)
    assert up.shape == (2, 24)
    assert_close(up, torch.full((2, 24), 0.25, dtype=DT))


def test_upsample_grid_matches_loop_bilinear_on_non_square_grid() -> None:
    h, w = 4, 6
    x = torch.rand(2, (h // 2) * (w // 2), generator=_gen(74), dtype=DT)
    up = upsample_grid(x, (h, w), 2)
    for bi in range(2):
        want = naive_bilinear_up2(x[bi].view(h // 2, w // 2))
        assert_close(up[bi].view(h, w), want)
    assert_close(up.mean(-1), x.mean(-1))  # bilinear x2 with edge clamping preserves the mean


def test_normalize_sum_sums_to_one_and_zero_row_is_uniform() -> None:
    x = torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=DT)
    got = normalize_sum(x)
    assert torch.isfinite(got).all()
    assert_close(got, torch.tensor([[0.125, 0.375, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25]], dtype=DT))
    got32 = normalize_sum(torch.rand(3, 10, generator=_gen(75)))
    assert_close(got32.sum(-1), torch.ones(3))


def test_pooled_cell_sums_agree_between_cpu_and_deterministic_forms() -> None:
    from rgtp.pruning.rollout import _cell_sums_canvas, _cell_sums_scatter_add

    gen = torch.Generator().manual_seed(5)
    rows = torch.rand(2, 7, 9, generator=gen)
    idx = torch.stack([torch.randperm(36, generator=gen)[:7].sort().values for _ in range(2)])
    a, b = _cell_sums_scatter_add(rows, idx, (6, 6), 2), _cell_sums_canvas(rows, idx, (6, 6), 2)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[1].sum() == 14
