"""The per-stream state: everything RGTP carries from one frame to the next, and nothing else does."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["StreamState"]


@dataclass
class StreamState:
    """What carries across frames of one stream (or a batch of streams stepped in lockstep).

    Attributes:
        t: index of the next step.
        importance: (B, N) heatmap of step t-1, summing to 1 per stream.
        features: (B, N, C) patch embeddings of step t-1, before the position encoding (used for tracking).
        qkv: per block index, the (B, N, 3C) qkv buffer (rows of pruned tokens hold their last computed value).
        output: (B, N, C) buffered output of the last block (ViTDet), the dense grid the neck reads.
        attn_rows: per global block index, the (B, n, n) fused attention rows used by the rollout
            (n = N, or N / pool**2 for the pooled rollout).
    """

    t: int = 0
    importance: Tensor | None = None
    features: Tensor | None = None
    qkv: dict[int, Tensor] = field(default_factory=dict)
    output: Tensor | None = None
    attn_rows: dict[int, Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget everything: the next step is step 0 of a new video."""
        self.t = 0
        self.importance = None
        self.features = None
        self.qkv.clear()
        self.output = None
        self.attn_rows.clear()

    def tensors(self) -> dict[str, Tensor]:
        """All tensors held, by name (for inspection and memory accounting)."""
        named: dict[str, Tensor] = {}
        if self.importance is not None:
            named["importance"] = self.importance
        if self.features is not None:
            named["features"] = self.features
        if self.output is not None:
            named["output"] = self.output
        named.update({f"qkv.{i}": v for i, v in self.qkv.items()})
        named.update({f"attn_rows.{i}": v for i, v in self.attn_rows.items()})
        return named

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(v.numel() * v.element_size() for v in self.tensors().values())

    def to(self, device: torch.device | str) -> StreamState:
        """Move every tensor to ``device`` (in place); returns self."""
        if self.importance is not None:
            self.importance = self.importance.to(device)
        if self.features is not None:
            self.features = self.features.to(device)
        if self.output is not None:
            self.output = self.output.to(device)
        self.qkv = {i: v.to(device) for i, v in self.qkv.items()}
        self.attn_rows = {i: v.to(device) for i, v in self.attn_rows.items()}
        return self
