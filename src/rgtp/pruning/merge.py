"""Token merging (ToMe-style bipartite soft matching) as pure tensor functions.

A merge step maps the ``n`` current tokens of each item onto ``m = n - r`` merged tokens. It is described by an
*assignment* ``assign`` (B, n) of integers in [0, m): the merged token each current token goes into. Merged tokens
keep the relative order of the tokens that survive (so a protected first token stays first), and the merged value
is the size-weighted mean of the tokens assigned to it.

:class:`TokenGroups` tracks, across merge steps, how many original tokens each merged token holds (``sizes``) and
which merged token holds each original token (``source``); :func:`unmerge_tokens` copies merged values back to every
original position, :func:`merge_tokens` with ``source`` averages full-grid values back onto the merged tokens.

Matching (after Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): the tokens are split alternately into
sets A (even positions) and B (odd positions); each A token finds its most similar B token (cosine similarity of the
given metric, usually the head-averaged keys), and the r A tokens with the highest similarity are merged into their
partners. Ties are broken deterministically: the lowest B index among equally similar partners, then the lowest A
index among equally similar A tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rgtp.config import pick

__all__ = [
    "TokenGroups",
    "bipartite_soft_matching",
    "group_centroids",
    "init_groups",
    "max_merge",
    "merge_groups",
    "merge_schedule",
    "merge_sizes",
    "merge_tokens",
    "unmerge_tokens",
]


class TokenGroups(NamedTuple):
    """Which original tokens each merged token holds."""

    source: Tensor  # (B, N) int64: index of the merged token that holds each original token
    sizes: Tensor  # (B, n) float: number of original tokens each merged token holds (sums to N per item)


def max_merge(num_tokens: int) -> int:
    """Most tokens one matching step can merge among ``num_tokens`` mergeable tokens (half, as in ToMe)."""
    return max(num_tokens, 0) // 2


def init_groups(batch: int, num_tokens: int, device: torch.device | str, dtype: torch.dtype) -> TokenGroups:
    """Every token on its own: source = identity, sizes = 1."""
    source = torch.arange(num_tokens, device=device).expand(batch, num_tokens)  # (B, N)
    return TokenGroups(source, torch.ones(batch, num_tokens, device=device, dtype=dtype))


def bipartite_soft_matching(metric: Tensor, r: int, protect: int = 0) -> tuple[Tensor, int]:
    """Choose ``r`` merges per item by bipartite soft matching on ``metric``.

    Args:
        metric: (B, n, d) per-token features to compare (cosine similarity), e.g. keys averaged over heads.
        r: merges wanted; capped at half of the mergeable tokens (protected tokens are not mergeable).
        protect: the leading tokens (a class token, registers) that are never merged away and never receive a
            merge. They keep their indices in the output.

    Returns:
        (assign, m): ``assign`` (B, n) int64 with values in [0, m), the merged token each token goes into; ``m`` the
        number of merged tokens (n - r after capping). With nothing to merge, the identity and n.
    """
    b, n, _ = metric.shape
    r = min(r, max_merge(n - protect))
    if r <= 0:
        return torch.arange(n, device=metric.device).expand(b, n), n
    unit = F.normalize(metric, dim=-1)  # (B, n, d)
    set_a, set_b = unit[:, 0::2], unit[:, 1::2]  # (B, ceil(n/2), d), (B, floor(n/2), d)
    scores = set_a @ set_b.transpose(1, 2)  # (B, nA, nB) cosine similarities
    if protect:
        scores[:, : (protect + 1) // 2] = -torch.inf  # protected A tokens (even indices): never merged away
        scores[:, :, : protect // 2] = -torch.inf  # protected B tokens (odd indices): never a partner
    partner = scores.argmax(dim=-1)  # (B, nA): best B token of each A token, lowest index on ties
    best = scores.gather(-1, partner[..., None])[..., 0]  # (B, nA)
    order = best.argsort(dim=-1, descending=True, stable=True)  # (B, nA): most similar first, lowest index on ties
    merged_a = order[:, :r]  # (B, r) A positions merged away
    merged = 2 * merged_a  # (B, r) their token indices
    target = torch.arange(n, device=metric.device).repeat(b, 1)  # (B, n) the surviving token each token ends in
    target.scatter_(1, merged, 2 * partner.gather(1, merged_a) + 1)
    survives = torch.ones(b, n, dtype=torch.bool, device=metric.device)  # (B, n)
    survives.scatter_(1, merged, False)
    rank = survives.long().cumsum(dim=1) - 1  # (B, n) output index of each survivor (ascending order kept)
    return rank.gather(1, target), n - r


def merge_tokens(x: Tensor, assign: Tensor, num_out: int, sizes: Tensor | None = None) -> Tensor:
    """Size-weighted mean of the tokens assigned to each merged token: (B, n, C) -> (B, m, C).

    Args:
        x: (B, n, C) token values.
        assign: (B, n) merged token of each token (from :func:`bipartite_soft_matching`, or a ``source`` map to
            average full-grid values back onto merged tokens).
        num_out: m, the number of merged tokens.
        sizes: (B, n) original tokens held by each token; None means 1 each (a plain mean).
    """
    b, _n, c = x.shape
    index = assign[..., None].expand(-1, -1, c)  # (B, n, C)
    if sizes is None:
        total = x.new_zeros(b, num_out, c).scatter_add_(1, index, x)  # (B, m, C)
        count = x.new_zeros(b, num_out).scatter_add_(1, assign, x.new_ones(assign.shape))  # (B, m)
        return total / count[..., None]
    sizes = sizes.to(x.dtype)
    total = x.new_zeros(b, num_out, c).scatter_add_(1, index, x * sizes[..., None])  # (B, m, C)
    return total / merge_sizes(sizes, assign, num_out)[..., None]


def merge_sizes(sizes: Tensor, assign: Tensor, num_out: int) -> Tensor:
    """Sizes after a merge step: (B, n) -> (B, m), summed over the tokens assigned to each merged token."""
    return sizes.new_zeros(sizes.shape[0], num_out).scatter_add_(1, assign, sizes)  # (B, m)


def merge_groups(groups: TokenGroups, assign: Tensor, num_out: int) -> TokenGroups:
    """Compose a merge step with the groups so far: sizes are summed and the source map follows ``assign``."""
    source = assign.gather(1, groups.source)  # (B, N): merged token now holding each original token
    return TokenGroups(source, merge_sizes(groups.sizes, assign, num_out))


def unmerge_tokens(x: Tensor, source: Tensor) -> Tensor:
    """Copy each merged token's value to every original position it holds: (B, m, C) -> (B, N, C)."""
    return x.gather(1, source[..., None].expand(-1, -1, x.shape[-1]))  # (B, N, C)


def group_centroids(groups: TokenGroups, grid: tuple[int, int]) -> Tensor:
    """Grid position of each merged token: the mean (row, col) of the original tokens it holds, rounded (half to
    even) to the nearest cell. Returns (B, m, 2) int64; ``source`` must index a raster-order (H, W) grid."""
    h, w = grid
    b, n = groups.source.shape
    if n != h * w:
        raise ValueError(f"source map covers {n} tokens, expected the {h}x{w} grid")
    cell = torch.arange(n, device=groups.source.device)  # (N,)
    coords = torch.stack([cell // w, cell % w], dim=-1).to(groups.sizes.dtype)  # (N, 2) (row, col)
    mean = merge_tokens(coords.expand(b, n, 2), groups.source, groups.sizes.shape[1])  # (B, m, 2)
    return mean.round().long()


def merge_schedule(
    num_tokens: int, depth: int, r: int | None = None, keep_ratio: float | None = None, spread: str = "even"
) -> list[int]:
    """Merges after each of ``depth`` blocks, among ``num_tokens`` mergeable tokens (protected tokens excluded).

    With ``r``: r per block, capped at half of the tokens left (ToMe's rule). With ``keep_ratio``, the
    ``num_tokens - round(keep_ratio * num_tokens)`` merges (at least one token is left) are spread over the blocks:
    ``even``: as evenly as possible, earlier blocks taking the remainder (and more when later blocks could not merge
    enough under the cap); ``front``: as many as the cap allows in the earliest blocks. Raises ``ValueError`` when
    the target cannot be reached.
    """
    if (r is None) == (keep_ratio is None):
        raise ValueError("give exactly one of r and keep_ratio")
    if depth < 1 or num_tokens < 1:
        raise ValueError(f"need depth >= 1 and num_tokens >= 1, got {depth} and {num_tokens}")
    left = num_tokens
    plan = []
    if r is not None:
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        for _ in range(depth):
            plan.append(min(r, max_merge(left)))
            left -= plan[-1]
        return plan
    assert keep_ratio is not None
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    target = max(round(keep_ratio * num_tokens), 1)
    todo = num_tokens - target
    for i in range(depth):
        blocks = depth - i
        cap = max_merge(left)
        k = min(cap, pick(_SHARES, spread, "spread")(todo, blocks))  # all that is allowed, or an even share
        while k < cap and k + _most_merges(left - k, blocks - 1) < todo:
            k += 1  # later blocks cannot catch up under their caps: merge more now
        plan.append(k)
        left, todo = left - k, todo - k
    if todo:
        least = num_tokens - _most_merges(num_tokens, depth)
        raise ValueError(
            f"keep_ratio {keep_ratio} asks for {target} of {num_tokens} tokens, but {depth} blocks of merging (at most "
            f"half per block) leave at least {least}"
        )
    return plan


#: This block's share of the merges left by ``ToMeConfig.spread``: (merges left, blocks left) -> merges.
_SHARES: dict[str, Callable[[int, int], int]] = {
    "front": lambda todo, blocks: todo,
    "even": lambda todo, blocks: -(-todo // blocks),
}


def _most_merges(num_tokens: int, blocks: int) -> int:
    """The most merges possible in ``blocks`` blocks (half of the tokens left in each)."""
    total = 0
    for _ in range(blocks):
        total += max_merge(num_tokens - total)
    return total
