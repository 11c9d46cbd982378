"""Tests for rgtp.pruning.selection (method §7 and §15)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from rgtp.pruning.selection import (
    complement,
    fg_bg_count,
    gilbert_curve,
    gilbert_rank,
    grid_pattern,
    keep_count,
    match_pruned,
    select_fg_bg,
    select_topk,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tied_scores(b: int, n: int, seed: int, levels: int = 4) -> torch.Tensor:
    """Scores drawn from a few levels: large tie groups everywhere, including at the keep boundary."""
    return torch.randint(0, levels, (b, n), generator=_gen(seed)).float()


def _stride(ratio: float) -> int:
    return round(1.0 / ratio)


# ----------------------------------------------------------------------------------------------------------- naive


def naive_rank(scores: list[float]) -> list[int]:
    """Descending score, ties by ascending index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def naive_fg_bg(
    scores: list[float], num_fg: int, fg_stride: int, bg_stride: int | None, curve: list[int] | None = None
) -> list[int]:
    order = naive_rank(scores)
    fg, bg = order[:num_fg], order[num_fg:]
    if curve is None:
        bg = sorted(bg)  # background in raster order; foreground stays in rank order
    else:
        fg = sorted(fg, key=lambda i: curve[i])
        bg = sorted(bg, key=lambda i: curve[i])
    kept = fg[::fg_stride]
    if bg_stride is not None:
        kept += bg[::bg_stride]
    return sorted(kept)


# ------------------------------------------------------------------------------------------------------ keep_count


@pytest.mark.parametrize(
    ("n", "ratio", "want"),
    [
        (1764, 0.29, 512),
        (1764, 0.435, 767),
        (4096, 0.342, 1401),
        (4096, 0.097, 397),
        (5, 0.5, 2),  # 2.5 -> 2 (banker's: round half to even)
        (7, 0.5, 4),  # 3.5 -> 4
        (10, 0.25, 2),  # 2.5 -> 2
        (196, 0.49, 96),
        (196, 0.215, 42),
        (196, 0.066, 13),
    ],
)
def test_keep_count_bankers_rounding(n: int, ratio: float, want: int) -> None:
    got = keep_count(n, ratio)
    assert isinstance(got, int)
    assert got == want


# ------------------------------------------------------------------------------------------------------ select_topk


def test_select_topk_returns_ascending_unique_top_k() -> None:
    scores = torch.randn(3, 50, generator=_gen(0))
    got = select_topk(scores, 12)
    assert got.shape == (3, 12) and got.dtype == torch.long
    for bi in range(3):
        row = got[bi].tolist()
        assert row == sorted(set(row))
        assert row == sorted(naive_rank(scores[bi].tolist())[:12])
        assert scores[bi, row].min() >= scores[bi].topk(12).values.min()


def test_select_topk_ties_broken_by_lower_index() -> None:
    scores = torch.zeros(1, 40)
    assert select_topk(scores, 7).tolist() == [list(range(7))]
    scores = torch.zeros(1, 40)
    scores[0, [35, 20]] = 1.0  # two winners, then a 38-way tie at 0 for the remaining 3 slots
    assert select_topk(scores, 5).tolist() == [[0, 1, 2, 20, 35]]


def test_select_topk_many_ties_matches_naive_and_is_deterministic() -> None:
    scores = _tied_scores(4, 300, 1, levels=3)
    got = select_topk(scores, 130)
    for bi in range(4):
        assert got[bi].tolist() == sorted(naive_rank(scores[bi].tolist())[:130])
    for _ in range(3):
        assert torch.equal(select_topk(scores.clone(), 130), got)


def test_select_topk_invalid_k_raises() -> None:
    with pytest.raises(ValueError):
        select_topk(torch.zeros(1, 5), 0)
    with pytest.raises(ValueError):
        select_topk(torch.zeros(1, 5), 6)


# ----------------------------------------------------------------------------------------------------- select_fg_bg


@pytest.mark.parametrize(
    ("num_fg", "fg_stride", "bg_stride"), [(30, 1, None), (30, 2, None), (25, 1, 4), (17, 2, 3), (50, 3, 7), (80, 1, 1)]
)
def test_select_fg_bg_matches_naive_rule(num_fg: int, fg_stride: int, bg_stride: int | None) -> None:
    scores = _tied_scores(3, 80, 2, levels=6)
    got = select_fg_bg(scores, num_fg, fg_stride, bg_stride)
    for bi in range(3):
        assert got[bi].tolist() == naive_fg_bg(scores[bi].tolist(), num_fg, fg_stride, bg_stride)


def test_select_fg_bg_fg_counts_by_rank_bg_by_raster() -> None:
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]])
    # rank order: 1 (9), 3 (8), 5 (7), 7 (6), 9 (5), 8 (4), 6, 4, 2, 0
    # fg = top 4 by rank [1, 3, 5, 7], stride 2 -> [1, 5]; bg raster [0, 2, 4, 6, 8, 9], stride 4 -> [0, 8]
    assert select_fg_bg(scores, 4, fg_stride=2, bg_stride=4).tolist() == [[0, 1, 5, 8]]


@pytest.mark.parametrize(
    ("n", "keep", "fg_ratio", "bg_ratio", "want"),
    [
        (400, 0.75, 1.0, 0.25, 325),
        (400, 0.45, 1.0, 0.16666, 217),
        (400, 0.30, 1.0, 0.05, 134),
        (400, 0.40, 0.5, 0.09, 102),
        (400, 0.24, 0.5, 0.03, 58),
        (400, 0.14, 0.5, 0.0, 28),
        (196, 0.49, 1.0, 0.0, 96),
        (196, 0.215, 1.0, 0.0, 42),
        (196, 0.066, 1.0, 0.0, 13),
    ],
)
def test_kept_counts_of_spec_table(n: int, keep: float, fg_ratio: float, bg_ratio: float, want: int) -> None:
    assert fg_bg_count(n, keep, fg_ratio, bg_ratio) == want
    scores = torch.rand(2, n, generator=_gen(n))
    bg_stride = _stride(bg_ratio) if bg_ratio > 0 else None
    got = select_fg_bg(scores, keep_count(n, keep), _stride(fg_ratio), bg_stride)
    assert got.shape == (2, want)
    for bi in range(2):
        assert len(set(got[bi].tolist())) == want


# ------------------------------------------------------------------------------------------------------- complement


def test_complement_disjoint_union_ascending() -> None:
    g = _gen(3)
    n = 37
    keep = torch.stack([torch.randperm(n, generator=g)[:15] for _ in range(3)])  # unsorted kept indices
    pruned = complement(keep, n)
    assert pruned.shape == (3, n - 15)
    for bi in range(3):
        k, p = set(keep[bi].tolist()), pruned[bi].tolist()
        assert p == sorted(p)
        assert not k & set(p)
        assert k | set(p) == set(range(n))


# ----------------------------------------------------------------------------------------------------- grid_pattern


@pytest.mark.parametrize(
    ("name", "g", "want"),
    [
        ("1in2", 14, 98),
        ("1in2", 20, 200),
        ("1in4", 14, 49),
        ("1in4", 20, 100),
        ("1in4", 42, 441),
        ("1in9", 14, 25),
        ("1in9", 42, 196),
    ],
)
def test_grid_pattern_counts(name: str, g: int, want: int) -> None:
    got = grid_pattern(g, g, name)
    assert got.shape == (want,) and got.dtype == torch.long


def naive_grid(h: int, w: int, name: str) -> list[int]:
    keep = []
    for y in range(h):
        for x in range(w):
            ok = {"1in2": (y + x) % 2 == 0, "1in4": y % 2 == 0 and x % 2 == 0, "1in9": y % 3 == 0 and x % 3 == 0}
            if ok[name]:
                keep.append(y * w + x)
    return keep


@pytest.mark.parametrize("name", ["1in2", "1in4", "1in9"])
@pytest.mark.parametrize(("h", "w"), [(5, 7), (7, 5), (6, 6), (3, 10)])
def test_grid_pattern_matches_loop_on_non_square_grids(name: str, h: int, w: int) -> None:
    assert grid_pattern(h, w, name).tolist() == naive_grid(h, w, name)


def test_grid_pattern_unknown_name_raises() -> None:
    with pytest.raises(ValueError):
        grid_pattern(4, 4, "odd_even")


# ----------------------------------------------------------------------------------------------------- match_pruned


def naive_match(keys: torch.Tensor, keep: list[int], pruned: list[int]) -> list[int]:
    out = []
    for j in pruned:
        best, best_score = None, None
        for i in keep:
            s = float(keys[j] @ keys[i])
            if best_score is None or s > best_score:  # first kept token (in keep order) wins ties
                best, best_score = i, s
        out.append(best)
    return out


def test_match_pruned_matches_loop_with_ties() -> None:
    g = _gen(4)
    n, c = 30, 3
    keys = torch.randint(-2, 3, (2, n, c), generator=g).float()  # many exact ties
    keep = torch.stack([torch.randperm(n, generator=g)[:11] for _ in range(2)])  # kept order, unsorted
    pruned = complement(keep, n)
    got = match_pruned(keys, keep, pruned)
    assert got.shape == pruned.shape
    for bi in range(2):
        assert got[bi].tolist() == naive_match(keys[bi], keep[bi].tolist(), pruned[bi].tolist())


def test_match_pruned_uses_raw_dot_product_not_cosine() -> None:
    keys = torch.tensor([[[1.0, 0.0], [0.0, 10.0], [1.0, 0.1], [0.7, 0.7]]])
    # token 3 is closest in angle to token 2 ([1, 0.1]), but the dot product is largest with the long token 1
    got = match_pruned(keys, torch.tensor([[0, 1, 2]]), torch.tensor([[3]]))
    assert got.tolist() == [[1]]


# ---------------------------------------------------------------------------------------------------------- gilbert


@pytest.mark.parametrize(
    ("width", "height"), [(5, 3), (3, 5), (14, 14), (7, 10), (10, 7), (1, 4), (4, 1), (8, 6), (6, 8), (9, 9)]
)
def test_gilbert_curve_visits_every_cell_once(width: int, height: int) -> None:
    cells = list(gilbert_curve(width, height))
    assert len(cells) == width * height
    assert set(cells) == {(x, y) for x in range(width) for y in range(height)}
    assert cells[0] == (0, 0)


@pytest.mark.parametrize(
    ("width", "height"), [(5, 3), (3, 5), (14, 14), (7, 10), (10, 7), (5, 4), (4, 5), (8, 6), (6, 8), (9, 9)]
)
def test_gilbert_curve_steps_are_unit_with_at_most_one_diagonal(width: int, height: int) -> None:
    cells = list(gilbert_curve(width, height))
    steps = [(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in pairwise(cells)]
    assert all(max(s) == 1 for s in steps)  # always a (king-move) neighbour
    assert sum(1 for s in steps if s == (1, 1)) <= 1  # the generalised curve needs at most one diagonal step


@pytest.mark.parametrize(("width", "height"), [(2, 2), (4, 4), (14, 14), (8, 6), (6, 8), (4, 10), (10, 4)])
def test_gilbert_curve_even_rectangles_are_4_connected(width: int, height: int) -> None:
    cells = list(gilbert_curve(width, height))
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in pairwise(cells))


@pytest.mark.parametrize(("height", "width"), [(14, 14), (3, 5), (5, 3), (10, 7), (7, 10)])
def test_gilbert_rank_is_permutation_with_bottom_up_rows(height: int, width: int) -> None:
    rank = gilbert_rank(height, width)
    assert rank.shape == (height * width,) and rank.dtype == torch.long
    assert sorted(rank.tolist()) == list(range(height * width))
    position = {cell: i for i, cell in enumerate(gilbert_curve(width, height))}
    for row in range(height):
        for col in range(width):
            assert int(rank[row * width + col]) == position[(col, height - 1 - row)]
    assert int(rank[(height - 1) * width]) == 0  # the curve starts at the bottom-left cell


@pytest.mark.parametrize(("num_fg", "fg_stride", "bg_stride"), [(20, 2, 3), (36, 1, None), (9, 3, 5)])
def test_select_fg_bg_with_curve_rank(num_fg: int, fg_stride: int, bg_stride: int | None) -> None:
    h = w = 6
    scores = _tied_scores(2, h * w, 5, levels=5)
    for curve in (gilbert_rank(h, w), torch.randperm(h * w, generator=_gen(6))):
        got = select_fg_bg(scores, num_fg, fg_stride, bg_stride, curve_rank=curve)
        for bi in range(2):
            want = naive_fg_bg(scores[bi].tolist(), num_fg, fg_stride, bg_stride, curve.tolist())
            assert got[bi].tolist() == want
    # the curve order changes the result (compared with rank/raster order)
    plain = select_fg_bg(scores, 20, 2, 3)
    assert not torch.equal(select_fg_bg(scores, 20, 2, 3, curve_rank=gilbert_rank(h, w)), plain)


def test_reference_tie_break_is_torch_argsort_and_changes_only_the_order_of_ties() -> None:
    from rgtp.pruning.selection import rank_descending, select_fg_bg

    scores = torch.tensor([[0.5, 0.2, 0.5, 0.9, 0.2, 0.5, 0.1, 0.5]] * 2)
    assert torch.equal(rank_descending(scores, stable=False), torch.argsort(scores, dim=-1, descending=True))
    stable = rank_descending(scores)
    assert stable[0].tolist() == [3, 0, 2, 5, 7, 1, 4, 6]  # ties by ascending index
    for s in (True, False):  # the same set whenever the cut does not split a tie
        assert select_fg_bg(scores, 5, stable=s).tolist() == [[0, 2, 3, 5, 7]] * 2
