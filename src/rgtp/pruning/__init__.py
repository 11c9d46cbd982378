"""The RGTP method as pure tensor functions plus one per-stream state object.

- :mod:`rgtp.pruning.rollout`: head fusion, attention rollout (forward and backward forms), anchor masks, pooling.
- :mod:`rgtp.pruning.tracking`: the local-offset warp that carries importance from frame t-1 to frame t.
- :mod:`rgtp.pruning.selection`: top-k, foreground/background strided sampling, grid patterns, Gilbert order,
  key-similarity matching of pruned tokens.
- :mod:`rgtp.pruning.merge`: ToMe-style bipartite soft matching, size-weighted merging and unmerging (baseline).
- :mod:`rgtp.pruning.schedule`: which kind of frame step t is.
- :mod:`rgtp.pruning.state`: :class:`StreamState`, the base of every method's per-stream state, and
  :class:`RGTPState`, everything RGTP carries across frames.
"""

from rgtp.pruning.merge import TokenGroups, bipartite_soft_matching, merge_tokens, unmerge_tokens
from rgtp.pruning.schedule import FrameKind, frame_kind
from rgtp.pruning.state import RGTPState, StreamState

__all__ = [
    "FrameKind",
    "RGTPState",
    "StreamState",
    "TokenGroups",
    "bipartite_soft_matching",
    "frame_kind",
    "merge_tokens",
    "unmerge_tokens",
]
