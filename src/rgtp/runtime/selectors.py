"""Token selectors: what chooses the tokens an RGTP loop keeps after block 0, registered by name.

A selector answers two questions for the per-frame loops (:mod:`rgtp.runtime.grid_loop`, :mod:`rgtp.runtime.cls_loop`):
which tokens a pruned step keeps (:meth:`Selector.choose`), and what it leaves to guide the next step
(:meth:`Selector.guide`). The loops ask nothing else, so the method (``rollout``) and its baselines and ablations run
through exactly the same buffers and schedule:

* ``rollout``: the method. The previous step's rollout heatmap, warped onto this frame by token tracking, then
  foreground/background sampling (method §5-7).
* ``uniform`` / ``random``: subsets of the same size, evenly spaced (shifted every step) or drawn per step.
* ``rollout_boxes`` (grid models with a detection head; beyond the paper): the method, with the previous frame's box
  tokens ranked first.
* ``boxes`` (grid models with a detection head): the tokens inside the previous frame's boxes, grown by a margin
  (MaskVD-style; no rollout). How many depends on the detections.
* :class:`ForcedSelector`: a caller's function returning the kept indices, e.g. to replay another implementation's
  kept sets in parity tests.

``SelectionConfig.policy`` names a registered selector (:data:`SELECTORS`); :func:`register_selector` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rgtp.config import RGTPConfig
from rgtp.pruning.rollout import normalize_sum
from rgtp.pruning.schedule import FrameKind, staggered_count, stalest_tokens
from rgtp.pruning.selection import (
    box_tokens,
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
from rgtp.pruning.state import RGTPState
from rgtp.pruning.tracking import warp_importance

__all__ = [
    "SELECTORS",
    "Choice",
    "ForcedSelector",
    "Guide",
    "Selector",
    "build_selector",
    "plan_tokens",
    "register_selector",
    "selection_counts",
]


@dataclass(frozen=True)
class Choice:
    """What a selector may read to choose the kept tokens of a pruned step.

    Attributes:
        state: the stream's state before this step (``importance`` and ``features`` of the previous step).
        embeds: (B, N, C) patch embeddings of this step, before positions (the tracking features).
        grid: (h, w) token grid of this step.
        num_fg: K_fg = round(keep_ratio * N), the foreground count of the fg/bg rule.
        k: tokens the rule keeps in all (foreground and background samples).
    """

    state: RGTPState
    embeds: Tensor
    grid: tuple[int, int]
    num_fg: int
    k: int


@dataclass(frozen=True)
class Guide:
    """What a selector may read to leave guidance for the next step (called after the step's outputs).

    ``rollout()`` computes this step's rollout heatmap (B, N) (only selectors with ``uses_rollout`` may call it:
    the loop records attention rows only for them); ``anchors()`` the (B, h, w) mask of the detected boxes' tokens,
    or None for models without detections.
    """

    rollout: Callable[[], Tensor]
    anchors: Callable[[], Tensor] | None


class Selector:
    """The base: a selector keeps ``Choice.k`` tokens and leaves no guidance. Subclasses override :meth:`choose`.

    Attributes:
        kind: the kind its pruned steps report.
        uses_rollout: the loop must record attention rows and :meth:`Guide.rollout` may be called.
        needs_anchors: it reads the previous frame's detections (grid models with a detection head only).
        data_dependent: how many tokens it keeps depends on the data (compute accounting then counts a nominal set
            of ``Choice.k`` tokens).
    """

    kind: FrameKind = FrameKind.PRUNED
    uses_rollout: bool = False
    needs_anchors: bool = False
    data_dependent: bool = False

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        """(kept indices (B, K) ascending, the (B, N) scores that chose them or None)."""
        raise NotImplementedError

    def guide(self, guide: Guide) -> Tensor | None:
        """The (B, N) importance that guides the next step, or None."""
        return None


def _previous(state: RGTPState) -> tuple[Tensor, Tensor]:
    if state.importance is None or state.features is None:
        raise RuntimeError(f"step {state.t} is a rollout step but the stream has no previous step; call reset()")
    return state.importance, state.features


class RolloutSelector(Selector):
    """The method: the previous heatmap warped onto this frame, then foreground/background sampling (method §6-7)."""

    kind = FrameKind.ROLLOUT
    uses_rollout = True

    def __init__(self, cfg: RGTPConfig) -> None:
        self.cfg = cfg

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        importance, features = _previous(choice.state)
        sel, track, grid = self.cfg.selection, self.cfg.tracking, choice.grid
        scores = warp_importance(
            importance, choice.embeds, features, grid, track.radius, track.rel_threshold_pct, track.out_of_grid
        )
        if sel.change_weight > 0 and choice.state.reference is not None:
            change = normalize_sum((choice.embeds - choice.state.reference).norm(dim=-1))  # (B, N)
            scores = (1 - sel.change_weight) * scores + sel.change_weight * change
        keep = select_fg_bg(
            scores,
            choice.num_fg,
            stride_of(sel.fg_ratio),
            stride_of(sel.bg_ratio) if sel.bg_ratio > 0 else None,
            gilbert_rank(grid[0], grid[1], choice.embeds.device) if sel.curve_order else None,
            stable=sel.tie_break == "stable",
        )
        return keep, scores

    def guide(self, guide: Guide) -> Tensor | None:
        return guide.rollout()


class UniformSelector(Selector):
    """k tokens evenly spaced in raster order, the pattern shifted every step (a naive baseline)."""

    def __init__(self, cfg: RGTPConfig) -> None:
        del cfg

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        b, n, _ = choice.embeds.shape
        return uniform_subset(n, choice.k, choice.state.t, choice.embeds.device).expand(b, -1), None


class RandomSelector(Selector):
    """k tokens drawn per stream and step, reproducibly from (``selection.seed``, t) (a naive baseline)."""

    def __init__(self, cfg: RGTPConfig) -> None:
        self.seed = cfg.selection.seed

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        b, n, _ = choice.embeds.shape
        seed = self.seed * 1_000_003 + choice.state.t
        return random_subset(b, n, choice.k, seed, choice.embeds.device), None


class BoxSelector(Selector):
    """The previous frame's box tokens grown by ``selection.box_margin`` (MaskVD-style; no warp, no rollout).

    Streams of a batch keep the same count: the largest box set of the batch (the others take their best-ranked
    tokens outside their boxes to fill it)."""

    needs_anchors = True
    data_dependent = True

    def __init__(self, cfg: RGTPConfig) -> None:
        self.margin = cfg.selection.box_margin

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        importance, _ = _previous(choice.state)
        inside = importance > 0  # (B, N): the box tokens this selector left at the previous step
        return select_topk(inside.to(importance.dtype), int(inside.sum(-1).max())), None

    def guide(self, guide: Guide) -> Tensor | None:
        assert guide.anchors is not None, "box selection needs detections"
        return normalize_sum(box_tokens(guide.anchors(), self.margin).float())  # (B, N)


class RolloutBoxSelector(RolloutSelector):
    """The method with the previous frame's boxes as a prior (detection; beyond the paper): the tokens inside the
    boxes (grown by ``selection.box_margin``) rank above every other token of the warped heatmap, so they are kept
    first, and the rollout chooses the rest of the same budget. The box tokens are carried to this frame by the same
    tracking as the heatmap."""

    needs_anchors = True

    def guide(self, guide: Guide) -> Tensor | None:
        assert guide.anchors is not None, "the box prior needs detections"
        heat = guide.rollout()  # (B, N), sums to 1: every value <= 1
        boxes = box_tokens(guide.anchors(), self.cfg.selection.box_margin).to(heat.dtype)  # (B, N) 0/1
        return normalize_sum(heat + boxes)


class ForcedSelector(Selector):
    """Kept tokens chosen by a caller: ``fn(t, embeds, grid)`` returns (B, K) or (K,) distinct indices of the patch
    tokens.

    For parity tests against other implementations (replaying their kept sets) and for experiments. It chooses the
    tokens of the schedule's pruned steps; FULL and GRID reset steps stay as the schedule says (``reset_every=None``
    for none). The indices are sorted ascending; every stream of the batch keeps the same count.
    """

    def __init__(self, fn: Callable[[int, Tensor, tuple[int, int]], Tensor]) -> None:
        self.fn = fn

    def choose(self, choice: Choice) -> tuple[Tensor, Tensor | None]:
        b, n, _ = choice.embeds.shape
        idx = torch.as_tensor(self.fn(choice.state.t, choice.embeds, choice.grid), device=choice.embeds.device)
        idx = idx.long().expand(b, -1) if idx.dim() == 1 else idx.long()
        if idx.dim() != 2 or idx.shape[0] != b or idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"a forced selection must give (K,) or ({b}, K) indices in [0, {n}), got {idx.shape}")
        idx = idx.sort(dim=-1).values
        if bool((idx[:, 1:] == idx[:, :-1]).any()):
            raise ValueError("a forced selection must not repeat an index")
        return idx, None


#: Selector builders by the name ``SelectionConfig.policy`` gives.
SELECTORS: dict[str, Callable[[RGTPConfig], Selector]] = {
    "rollout": RolloutSelector,
    "uniform": UniformSelector,
    "random": RandomSelector,
    "boxes": BoxSelector,
    "rollout_boxes": RolloutBoxSelector,
}


def register_selector(name: str, builder: Callable[[RGTPConfig], Selector]) -> None:
    """Add a selector under ``name``: ``SelectionConfig(policy=name)`` then builds it with the RGTP config."""
    if name in SELECTORS:
        raise ValueError(f"selector {name!r} registered twice")
    SELECTORS[name] = builder


def build_selector(cfg: RGTPConfig) -> Selector:
    """The selector ``cfg.selection.policy`` names."""
    try:
        return SELECTORS[cfg.selection.policy](cfg)
    except KeyError:
        raise ValueError(f"unknown selection policy {cfg.selection.policy!r}; known: {sorted(SELECTORS)}") from None


def plan_tokens(
    kind: FrameKind, selector: Selector, state: RGTPState, embeds: Tensor, grid: tuple[int, int], cfg: RGTPConfig
) -> tuple[Tensor | None, Tensor | None, FrameKind]:
    """The kept tokens of a step of scheduled ``kind``.

    Args:
        embeds: (B, N, C) patch embeddings of this step before positions.

    Returns:
        (keep_idx (B, K) ascending or None on FULL steps, the (B, N) scores that chose them or None, the kind the
        step reports: FULL, GRID, or the selector's own kind on pruned steps).
    """
    if kind is FrameKind.FULL:
        return None, None, kind
    if kind is FrameKind.GRID:
        keep = grid_pattern(grid[0], grid[1], cfg.schedule.grid_pattern, embeds.device)
        return keep.expand(embeds.shape[0], -1), None, kind
    num_fg, k = selection_counts(embeds.shape[1], cfg)
    keep, scores = selector.choose(Choice(state, embeds, grid, num_fg, k))
    if cfg.schedule.refresh == "staggered" and state.age is not None:
        every = cfg.schedule.reset_every
        assert every is not None, "validated by ScheduleConfig"
        stale = stalest_tokens(state.age, keep, staggered_count(embeds.shape[1], every))  # (B, m)
        keep = torch.cat([keep, stale], dim=1).sort(dim=-1).values  # (B, K + m)
    return keep, scores, selector.kind


def selection_counts(num_tokens: int, cfg: RGTPConfig) -> tuple[int, int]:
    """(K_fg, K) of the fg/bg rule for ``num_tokens`` tokens; raises if no token would be kept."""
    sel = cfg.selection
    num_fg = keep_count(num_tokens, sel.keep_ratio)
    if num_fg < 1:
        raise ValueError(f"keep_ratio {sel.keep_ratio} keeps no token of {num_tokens}")
    return num_fg, fg_bg_count(num_tokens, sel.keep_ratio, sel.fg_ratio, sel.bg_ratio)
