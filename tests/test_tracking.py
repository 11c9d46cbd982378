"""Tests for rgtp.pruning.tracking against a naive loop implementation of method §6."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rgtp.pruning.tracking import best_offsets, offset_sources, warp_importance

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _int_features(b: int, n: int, c: int, seed: int, low: int = -3, high: int = 4) -> torch.Tensor:
    """Small integer-valued features: exact dot products with many ties (and some non-positive scores)."""
    return torch.randint(low, high, (b, n, c), generator=_gen(seed)).to(DT)


def _unit_features(b: int, n: int, c: int, seed: int, norm: float = 10.0) -> torch.Tensor:
    """Distinct tokens of equal, high norm: each token's best match is itself (Cauchy-Schwarz)."""
    x = torch.randn(b, n, c, generator=_gen(seed), dtype=DT)
    return norm * x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------- naive


def _offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def naive_best_offsets(feat, prev, grid, radius, pct=None, mode="reference") -> torch.Tensor:
    """Raw dot products, first offset on ties, optional relative threshold. ``reference``: out-of-grid candidates
    score 0.0 and every score of exactly 0.0 becomes -100 (method §6 rules 2-4); ``exclude``: they are skipped."""
    h, w = grid
    b, n, _ = feat.shape
    offs = _offsets(radius)
    center = len(offs) // 2
    out = torch.zeros(b, n, dtype=torch.long)
    for bi in range(b):
        for p in range(n):
            y, x = divmod(p, w)
            best, best_score = None, None
            for o, (dy, dx) in enumerate(offs):
                sy, sx = y + dy, x + dx
                inside = 0 <= sy < h and 0 <= sx < w
                if not inside and mode == "exclude":
                    continue
                s = float(feat[bi, p] @ prev[bi, sy * w + sx]) if inside else 0.0
                if mode == "reference" and s == 0.0:
                    s = -100.0
                if best_score is None or s > best_score:  # strict: the first offset wins ties
                    best, best_score = o, s
            if pct is not None:
                zero = float(feat[bi, p] @ prev[bi, p])
                zero = -100.0 if mode == "reference" and zero == 0.0 else zero
                zero = zero if zero > 0 else 0.1
                if not best_score / zero >= (100.0 + pct) / 100.0:
                    best = center
            out[bi, p] = best
    return out


def naive_warp(importance, feat, prev, grid, radius, pct=None, mode="reference") -> torch.Tensor:
    """Pull warp H'(p) = H(p + o*(p)); an out-of-grid winner (reference only) copies cell 0."""
    h, w = grid
    best = naive_best_offsets(feat, prev, grid, radius, pct, mode)
    offs = _offsets(radius)
    out = torch.empty_like(importance)
    for bi in range(importance.shape[0]):
        for p in range(importance.shape[1]):
            y, x = divmod(p, w)
            dy, dx = offs[int(best[bi, p])]
            inside = 0 <= y + dy < h and 0 <= x + dx < w
            out[bi, p] = importance[bi, (y + dy) * w + (x + dx)] if inside else importance[bi, 0]
    return out


# -------------------------------------------------------------------------------------------------- offset_sources


@pytest.mark.parametrize(("h", "w", "radius"), [(4, 4, 1), (3, 5, 1), (5, 4, 2)])
def test_offset_sources_matches_loop(h: int, w: int, radius: int) -> None:
    sources, valid = offset_sources(h, w, radius)
    offs = _offsets(radius)
    assert sources.shape == valid.shape == (len(offs), h * w)
    assert valid.dtype == torch.bool
    for o, (dy, dx) in enumerate(offs):
        for p in range(h * w):
            y, x = divmod(p, w)
            sy, sx = y + dy, x + dx
            inside = 0 <= sy < h and 0 <= sx < w
            assert bool(valid[o, p]) == inside
            clamped = min(max(sy, 0), h - 1) * w + min(max(sx, 0), w - 1)
            assert int(sources[o, p]) == clamped
    center = len(offs) // 2
    assert torch.equal(sources[center], torch.arange(h * w)) and valid[center].all()


# --------------------------------------------------------------------------------------- best_offsets / warp loop


@pytest.mark.parametrize(("grid", "radius", "c"), [((4, 4), 1, 3), ((3, 5), 1, 2), ((5, 4), 2, 3), ((2, 6), 1, 4)])
def test_best_offsets_matches_loop_with_ties(grid: tuple[int, int], radius: int, c: int) -> None:
    n = grid[0] * grid[1]
    feat, prev = _int_features(2, n, c, 1), _int_features(2, n, c, 2)
    got = best_offsets(feat, prev, grid, radius)
    assert got.dtype == torch.long and got.shape == (2, n)
    assert torch.equal(got, naive_best_offsets(feat, prev, grid, radius))


def test_best_offsets_excludes_out_of_grid_even_if_all_scores_negative() -> None:
    # All in-grid scores are negative: a zero-padded neighbour (score 0) would win if it were not excluded.
    grid = (3, 3)
    feat = torch.ones(1, 9, 2, dtype=DT)
    prev = -torch.arange(1, 10, dtype=DT)[None, :, None].expand(1, 9, 2).clone()
    got = best_offsets(feat, prev, grid, 1)
    sources, valid = offset_sources(3, 3, 1)
    assert valid.gather(0, got).all()
    # best = the least negative in-grid neighbour, i.e. the one with the smallest raster index
    src = sources.gather(0, got)[0]
    for p in range(9):
        y, x = divmod(p, 3)
        assert int(src[p]) == max(y - 1, 0) * 3 + max(x - 1, 0)
    assert torch.equal(got, naive_best_offsets(feat, prev, grid, 1))


def test_best_offsets_ties_go_to_first_offset() -> None:
    grid = (3, 3)
    feat = torch.ones(1, 9, 2, dtype=DT)
    prev = torch.ones(1, 9, 2, dtype=DT)  # every candidate scores 2
    got = best_offsets(feat, prev, grid, 1)
    # the first valid offset in row-major (dy, dx) order
    _, valid = offset_sources(3, 3, 1)
    want = valid.to(torch.int8).argmax(dim=0)
    assert torch.equal(got[0], want)
    assert int(got[0, 4]) == 0 and int(got[0, 0]) == 4  # centre cell -> (-1, -1); corner (0, 0) -> zero offset


@pytest.mark.parametrize(("grid", "radius"), [((4, 4), 1), ((3, 5), 1), ((5, 6), 2)])
def test_warp_importance_matches_loop(grid: tuple[int, int], radius: int) -> None:
    n = grid[0] * grid[1]
    feat, prev = _int_features(2, n, 3, 3), _int_features(2, n, 3, 4)
    imp = torch.rand(2, n, generator=_gen(5), dtype=DT)
    got = warp_importance(imp, feat, prev, grid, radius)
    assert_close(got, naive_warp(imp, feat, prev, grid, radius), rtol=0, atol=0)


def test_warp_importance_batch_larger_than_offset_count() -> None:
    grid, b = (3, 3), 12  # more streams than the 9 offsets of radius 1
    feat, prev = _int_features(b, 9, 3, 6), _int_features(b, 9, 3, 7)
    imp = torch.rand(b, 9, generator=_gen(8), dtype=DT)
    assert_close(warp_importance(imp, feat, prev, grid, 1), naive_warp(imp, feat, prev, grid, 1), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- motion cases


def test_zero_motion_gives_identity() -> None:
    grid = (5, 6)
    feat = _unit_features(2, 30, 32, 10)
    imp = torch.rand(2, 30, generator=_gen(11), dtype=DT)
    assert torch.equal(best_offsets(feat, feat.clone(), grid, 1), torch.full((2, 30), 4))
    assert torch.equal(warp_importance(imp, feat, feat.clone(), grid, 1), imp)


@pytest.mark.parametrize(("shift", "radius"), [((0, 1), 1), ((1, 1), 1), ((-1, 0), 1), ((2, -1), 2)])
def test_shift_within_radius_is_recovered(shift: tuple[int, int], radius: int) -> None:
    h, w = 7, 8
    sy, sx = shift
    prev = _unit_features(1, h * w, 48, 20)
    # content moves by (sy, sx): cur(y, x) = prev(y - sy, x - sx); uncovered cells get new content
    cur = _unit_features(1, h * w, 48, 21).view(1, h, w, -1).clone()
    prev_grid = prev.view(1, h, w, -1)
    inside = torch.zeros(h, w, dtype=torch.bool)
    for y in range(h):
        for x in range(w):
            if 0 <= y - sy < h and 0 <= x - sx < w:
                cur[0, y, x] = prev_grid[0, y - sy, x - sx]
                inside[y, x] = True
    cur = cur.view(1, h * w, -1)
    imp = torch.rand(1, h * w, generator=_gen(22), dtype=DT)

    best = best_offsets(cur, prev, (h, w), radius)
    want_offset = (-sy + radius) * (2 * radius + 1) + (-sx + radius)
    assert (best[0][inside.flatten()] == want_offset).all()

    warped = warp_importance(imp, cur, prev, (h, w), radius).view(h, w)
    imp_grid = imp.view(h, w)
    for y in range(h):
        for x in range(w):
            if inside[y, x]:
                assert warped[y, x] == imp_grid[y - sy, x - sx]  # the heatmap follows the motion


def test_radius_zero_returns_input() -> None:
    imp = torch.rand(1, 12, generator=_gen(30), dtype=DT)
    feat, prev = _int_features(1, 12, 3, 31), _int_features(1, 12, 3, 32)
    assert torch.equal(warp_importance(imp, feat, prev, (3, 4), radius=0), imp)
    assert not torch.equal(warp_importance(imp, feat, prev, (3, 4), radius=1), imp)  # radius 1 does move here


# ------------------------------------------------------------------------------------------- relative threshold


@pytest.mark.parametrize("pct", [0.0, 25.0, 50.0, 200.0])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_rel_threshold_matches_loop(pct: float, grid: tuple[int, int]) -> None:
    n = grid[0] * grid[1]
    feat, prev = _int_features(2, n, 3, 40), _int_features(2, n, 3, 41)
    got = best_offsets(feat, prev, grid, 1, rel_threshold_pct=pct)
    assert torch.equal(got, naive_best_offsets(feat, prev, grid, 1, pct))
    imp = torch.rand(2, n, generator=_gen(42), dtype=DT)
    assert_close(warp_importance(imp, feat, prev, grid, 1, pct), naive_warp(imp, feat, prev, grid, 1, pct))


def test_rel_threshold_forces_zero_offset_and_clamps_non_positive_centre() -> None:
    grid = (1, 3)
    # token 1: centre score 10, left neighbour 12 -> ratio 1.2
    # token 2: centre score -5 (clamped to 0.1), left neighbour 1 -> ratio 10
    feat = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=DT)
    prev = torch.tensor([[[12.0, 1.0], [10.0, 1.0], [0.0, -5.0]]], dtype=DT)
    plain = best_offsets(feat, prev, grid, 1)
    assert plain[0, 1] == 3 and plain[0, 2] == 3  # (0, -1) without a threshold
    got = best_offsets(feat, prev, grid, 1, rel_threshold_pct=25.0)  # needs ratio >= 1.25
    assert got[0, 1] == 4  # 1.2 < 1.25: forced to stay
    assert got[0, 2] == 3  # 1 / 0.1 = 10 >= 1.25: moves
    assert best_offsets(feat, prev, grid, 1, rel_threshold_pct=1000.0)[0, 2] == 4  # 10 < 11


def test_rel_threshold_negative_best_never_moves() -> None:
    grid = (1, 2)
    feat = torch.tensor([[[1.0], [1.0]]], dtype=DT)
    prev = torch.tensor([[[-1.0], [-3.0]]], dtype=DT)  # token 1: centre -3 (clamped 0.1), best -1 -> ratio < 0
    assert best_offsets(feat, prev, grid, 1)[0, 1] == 3
    assert best_offsets(feat, prev, grid, 1, rel_threshold_pct=0.0)[0, 1] == 4


# ------------------------------------------------------------------------------------------------------- errors


def test_shape_mismatch_raises() -> None:
    feat = torch.zeros(1, 12, 3)
    with pytest.raises(ValueError):
        best_offsets(feat, torch.zeros(1, 12, 3), (3, 5))  # N != H * W
    with pytest.raises(ValueError):
        best_offsets(feat, torch.zeros(1, 12, 4), (3, 4))  # feature widths differ
    with pytest.raises(ValueError):
        warp_importance(torch.zeros(1, 12), feat, torch.zeros(2, 12, 3), (3, 4))  # batch differs


@pytest.mark.parametrize("mode", ["reference", "exclude"])
@pytest.mark.parametrize(("grid", "radius"), [((3, 5), 1), ((4, 4), 2)])
def test_both_out_of_grid_rules_match_their_loops(grid: tuple[int, int], radius: int, mode: str) -> None:
    n = grid[0] * grid[1]
    feat, prev = _int_features(2, n, 2, 5), _int_features(2, n, 2, 6)  # many exact zeros and negative scores
    imp = torch.rand(2, n, generator=_gen(7), dtype=DT)
    assert torch.equal(
        best_offsets(feat, prev, grid, radius, out_of_grid=mode),
        naive_best_offsets(feat, prev, grid, radius, mode=mode),
    )
    assert_close(
        warp_importance(imp, feat, prev, grid, radius, out_of_grid=mode),
        naive_warp(imp, feat, prev, grid, radius, mode=mode),
        rtol=0,
        atol=0,
    )


def test_the_reference_rule_copies_cell_0_when_every_in_grid_score_is_below_the_sentinel() -> None:
    """A token whose every in-grid neighbour scores below -100 takes cell 0's value under the reference rule (its
    first out-of-grid candidate wins with -100), and its best in-grid neighbour's under ours."""
    grid = (2, 3)
    feat = torch.zeros(1, 6, 1, dtype=DT)
    prev = torch.ones(1, 6, 1, dtype=DT)
    feat[0, 5] = -200.0  # the bottom-right token: every neighbour scores -200 (in grid) or 0 -> -100 (outside)
    feat[0, :5] = 1.0
    prev[0, 4] = 0.5  # its in-grid neighbours differ, so ours picks one: cell 4 scores -100 ... -200 * 0.5
    imp = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.4, 0.5]], dtype=DT)
    ours = warp_importance(imp, feat, prev, grid, 1, out_of_grid="exclude")
    reference = warp_importance(imp, feat, prev, grid, 1, out_of_grid="reference")
    assert reference[0, 5] == 0.9 and ours[0, 5] == 0.4
    with pytest.raises(ValueError, match="out_of_grid"):
        best_offsets(feat, prev, grid, 1, out_of_grid="clamp")
