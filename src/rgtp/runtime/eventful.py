"""The Eventful Transformers baseline (method §9, token-wise gating) on any model of the block protocol, frame by frame.

Every block has three gates: before qkv (on LN1(x)), before the projection (on the attention output) and before the
MLP (on LN2(x)). A gate keeps a reference p of its input c; at a gated step it computes the error e = c - p, picks
the k tokens with the largest ||e||₂ over channels, runs its linear op on those rows only and sets p[rows] = c[rows].
Each gated op has an accumulator: a full-size buffer of its outputs into which the new rows are scattered and which is
returned whole (the other rows keep the output of the step that last recomputed them).

The residual stream stays dense: a block's input x is always the full (B, N, C) grid, and each half of the block adds
the *whole* accumulator to it (x + proj_acc, then x + mlp_acc), as the reference's blocks do. So a token that no gate
selects still sees this step's input through the skip connection, only its branch outputs are stale; with every token
selected (k = N) each accumulator equals the dense op's output and the step equals the dense model exactly.

Attention runs on the accumulated qkv. Windowed blocks recompute windowed attention in full (as RGTP does). Global
blocks follow ``EventfulConfig.global_attention``:

* ``dense``: full attention from the accumulated qkv;
* ``qk``: a buffer of QKᵀ (scaled, without relative positions) gets the rows and the columns of the tokens the qkv
  gate updated, which keeps it equal to QKᵀ of the accumulated qkv; the relative-position terms depend on the query
  only and are buffered per query row. Softmax and A·V run in full;
* ``qk_av`` (the reference's ``EventfulBlock``): as ``qk``, and A·V is updated incrementally on the updated key
  columns I: AV += A_t[:, I]·(V_t - V_ref)[I] + (A_t - A_ref)[:, I]·V_ref[I], with A_ref[:, I] = A_t[:, I]. This is
  exact for the columns in I and ignores how the softmax changed the other columns (approximate, like the reference).
  V_ref always equals the accumulated V, so it is read from the qkv accumulator before the new rows land.

Dense steps (t = 0 after :meth:`EventfulState.reset`, and every ``refresh_every`` steps if set) run the dense model's
math and (re)initialise every reference and buffer. MAC accounting: the gate error e = c - p is written as an add with
``alpha=-1`` so that :class:`~rgtp.flops.MacCounter` counts it (the reference counts numel(p) per gate call); it,
the error norms and top-k, and the delta/accumulation arithmetic of the incremental A·V, are in ``scope("rgtp")``
(method overhead); the gated linear ops, attention and the incremental QKᵀ / A·V products are backbone MACs.

Class-token models (ViViT's spatial encoder over tubelet steps, ViT, DINOv2, CLIP): each batch item is an independent
stream; the prefix tokens are always recomputed by every gate, on top of the k patch tokens (k counts patch tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rgtp.config import EventfulConfig
from rgtp.flops import scope
from rgtp.models.attention import AttentionSpec, attend, rel_terms, split_heads
from rgtp.models.protocol import BlockOps, ClassModel, GridModel, with_position
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState
from rgtp.runtime.common import gather_tokens, scatter_rows_
from rgtp.runtime.contract import ClassStep, GridStep
from rgtp.runtime.grid_loop import DetectionHead, GridRunner

__all__ = ["EventfulClass", "EventfulGrid", "EventfulState"]


@dataclass
class EventfulState(StreamState):
    """What the Eventful baseline carries from one step to the next for one stream (or a lockstep batch of them).

    Attributes:
        t: index of the next step.
        references: gate references p by ``"{block}.{gate}"`` (gate ``qkv``, ``proj`` or ``mlp``), each (B, N, C).
        accumulators: full-size outputs of the gated ops by ``"{block}.{op}"``: qkv (B, N, 3C), proj and mlp (B, N, C).
        attention: incremental attention buffers of global blocks by ``"{block}.{name}"``: ``qk`` (B, h, N, N) scaled
            QKᵀ, ``rel_h`` / ``rel_w`` (B, h, N, H) / (B, h, N, W) relative-position terms per query row, and for
            ``qk_av`` the A-gate reference ``attn_ref`` (B, h, N, N) and the product ``av`` (B, h, N, d).
    """

    references: dict[str, Tensor] = field(default_factory=dict)
    accumulators: dict[str, Tensor] = field(default_factory=dict)
    attention: dict[str, Tensor] = field(default_factory=dict)


class _GatedBlocks:
    """The gated forward of transformer blocks (the block protocol), shared by the grid and class-token runners.

    Args:
        cfg: the baseline's settings.
        always: leading rows every gate recomputes regardless of their error (the prefix tokens: class token,
            registers).
    """

    def __init__(self, cfg: EventfulConfig, always: int) -> None:
        self.cfg, self.always = cfg, always

    def is_dense(self, t: int) -> bool:
        """Whether step ``t`` runs dense and refreshes every reference and buffer."""
        every = self.cfg.refresh_every
        return t == 0 or (every is not None and t % every == 0)

    def block(
        self, blk: BlockOps, i: int, x: Tensor, state: EventfulState, k: int | None, grid: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One gated block: (B, N, C) -> (B, N, C), with the qkv gate's rows (B, K) and error norms (B, n) or None.

        ``k``: patch tokens each gate recomputes, None on dense steps (every row, every reference and buffer
        refreshed); ``grid``: the token grid (for windows and relative positions) or None."""
        n1 = blk.norm1(x)
        idx, scores = self._select(state, f"{i}.qkv", n1, k)
        old_v = None
        if idx is not None and self._incremental(blk.spec) and self.cfg.global_attention == "qk_av":
            c = x.shape[-1]
            old_v = gather_tokens(state.accumulators[f"{i}.qkv"][..., 2 * c :], idx)  # (B, K, C): V_ref rows
        qkv = self._run(state, f"{i}.qkv", blk.qkv, n1, idx)  # (B, N, 3C) accumulated
        att = self._attention(blk.spec, i, qkv, idx, old_v, state, grid)  # (B, N, C)
        proj_idx, _ = self._select(state, f"{i}.proj", att, k)
        x = x + self._run(state, f"{i}.proj", blk.proj, att, proj_idx)
        n2 = blk.norm2(x)
        mlp_idx, _ = self._select(state, f"{i}.mlp", n2, k)
        x = x + self._run(state, f"{i}.mlp", blk.mlp, n2, mlp_idx)
        return x, idx, scores

    def _incremental(self, spec: AttentionSpec) -> bool:
        return spec.is_global and self.cfg.global_attention != "dense"

    def _select(self, state: EventfulState, name: str, c: Tensor, k: int | None) -> tuple[Tensor | None, Tensor | None]:
        """The gate ``name`` on its input c (B, N, C): rows to recompute (B, always + k), ascending, and the error
        norms of the patch rows (B, N - always); (None, None) when every row is recomputed (dense steps, k = N)."""
        b, n = c.shape[:2]
        if k is None or k >= n - self.always:
            state.references[name] = c.clone()  # a private copy: buffers are updated in place later
            return None, None
        ref = state.references.get(name)
        if ref is None:
            raise RuntimeError(f"gate {name} has no reference at step {state.t}: start the stream with reset()")
        a = self.always
        with scope("rgtp"):
            err = torch.add(c[:, a:], ref[:, a:], alpha=-1)  # (B, n - a, C) e = c - p, an add the counter counts
            scores = torch.linalg.vector_norm(err, dim=-1)  # (B, n - a)
            idx = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values + a  # (B, k)
        if a:
            head = torch.arange(a, device=idx.device).expand(b, -1)  # (B, a)
            idx = torch.cat([head, idx], dim=1)  # (B, a + k)
        scatter_rows_(ref, idx, gather_tokens(c, idx))
        return idx, scores

    @staticmethod
    def _run(state: EventfulState, name: str, op: Callable[[Tensor], Tensor], c: Tensor, idx: Tensor | None) -> Tensor:
        """The gated op on rows ``idx`` of c (all if None), scattered into its accumulator; returns the whole buffer."""
        if idx is None:
            out = op(c)
            state.accumulators[name] = out
            return out
        return scatter_rows_(state.accumulators[name], idx, op(gather_tokens(c, idx)))

    def _attention(
        self,
        spec: AttentionSpec,
        i: int,
        qkv: Tensor,
        idx: Tensor | None,
        old_v: Tensor | None,
        state: EventfulState,
        grid: tuple[int, int] | None,
    ) -> Tensor:
        """Attention output of every token from the accumulated qkv (B, N, 3C) -> (B, N, C)."""
        if not self._incremental(spec):
            return attend(spec, qkv, grid).out
        q, k, v = split_heads(qkv, spec.num_heads)  # (B, h, N, d) each
        probs = self._logits(spec, i, q, k, idx, state, grid).softmax(dim=-1)  # (B, h, N, N)
        incremental_av = self.cfg.global_attention == "qk_av"
        out = self._product(i, probs, v, idx, old_v, state) if incremental_av else probs @ v  # (B, h, N, d)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)  # (B, N, C)

    def _logits(
        self,
        spec: AttentionSpec,
        i: int,
        q: Tensor,
        k: Tensor,
        idx: Tensor | None,
        state: EventfulState,
        grid: tuple[int, int] | None,
    ) -> Tensor:
        """Attention logits (B, h, N, N) from the QKᵀ buffer, refreshed at rows and columns ``idx`` (all if None)."""
        buf = state.attention
        if idx is None:
            buf[f"{i}.qk"] = (q * spec.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            if spec.use_rel_pos:
                buf[f"{i}.rel_h"], buf[f"{i}.rel_w"] = rel_terms(spec, q, _needs(grid), None)
        else:
            b, h, n, d = q.shape
            rows = idx[:, None, :, None]  # (B, 1, K, 1)
            q_rows = q.gather(2, rows.expand(-1, h, -1, d))  # (B, h, K, d)
            k_rows = k.gather(2, rows.expand(-1, h, -1, d))  # (B, h, K, d)
            qk = buf[f"{i}.qk"]
            qk.scatter_(2, rows.expand(-1, h, -1, n), (q_rows * spec.scale) @ k.transpose(-2, -1))  # rows (B,h,K,N)
            cols = idx[:, None, None, :].expand(-1, h, n, -1)  # (B, h, N, K)
            qk.scatter_(3, cols, (q * spec.scale) @ k_rows.transpose(-2, -1))  # columns (B, h, N, K)
            if spec.use_rel_pos:
                rel_h, rel_w = rel_terms(spec, q_rows, _needs(grid), idx)  # (B, h, K, H), (B, h, K, W)
                buf[f"{i}.rel_h"].scatter_(2, rows.expand(-1, h, -1, rel_h.shape[-1]), rel_h)
                buf[f"{i}.rel_w"].scatter_(2, rows.expand(-1, h, -1, rel_w.shape[-1]), rel_w)
        qk = buf[f"{i}.qk"]
        if not spec.use_rel_pos:
            return qk
        (gh, gw), (b, h, n, _) = _needs(grid), qk.shape
        logits = qk.view(b, h, n, gh, gw) + buf[f"{i}.rel_h"][..., :, None]  # (B, h, N, H, W)
        logits.add_(buf[f"{i}.rel_w"][..., None, :])
        return logits.view(b, h, n, n)

    @staticmethod
    def _product(
        i: int, probs: Tensor, v: Tensor, idx: Tensor | None, old_v: Tensor | None, state: EventfulState
    ) -> Tensor:
        """A·V (B, h, N, d), refreshed in full (idx None) or incrementally on the key columns ``idx``."""
        buf = state.attention
        if idx is None:
            buf[f"{i}.attn_ref"] = probs
            buf[f"{i}.av"] = probs @ v  # (B, h, N, d)
            return buf[f"{i}.av"]
        assert old_v is not None
        b, h, n, d = v.shape
        kk = idx.shape[1]
        cols = idx[:, None, None, :].expand(-1, h, n, -1)  # (B, h, N, K)
        a_new = probs.gather(3, cols)  # (B, h, N, K)
        v_new = v.gather(2, idx[:, None, :, None].expand(-1, h, -1, d))  # (B, h, K, d)
        v_ref = old_v.view(b, kk, h, d).transpose(1, 2)  # (B, h, K, d)
        a_ref, av = buf[f"{i}.attn_ref"], buf[f"{i}.av"]
        with scope("rgtp"):
            da = torch.add(a_new, a_ref.gather(3, cols), alpha=-1)  # (B, h, N, K) A-gate delta
            dv = torch.add(v_new, v_ref, alpha=-1)  # (B, h, K, d) V-gate delta
        a_ref.scatter_(3, cols, a_new)
        new_terms, old_terms = a_new @ dv, da @ v_ref  # (B, h, N, d) each
        with scope("rgtp"):
            av.add_(new_terms).add_(old_terms)
        return av


def _needs(grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        raise ValueError("relative positions need the token grid")
    return grid


class EventfulGrid(GridRunner):
    """The Eventful Transformers baseline for a grid model (ViTDet-style), behind the runner contract.

    One instance serves any number of streams; each stream's buffers live in its :class:`EventfulState`. Dense steps
    report :attr:`FrameKind.FULL`; gated steps report :attr:`FrameKind.GATED`, with ``num_kept`` = k, ``keep_idx`` =
    the rows block 0's qkv gate recomputed (None when it recomputed all) and ``scores`` = that gate's error norms
    (B, N); ``importance`` is always None.

    Example::

        eventful = EventfulGrid(ViTDetAdapter(model), EventfulConfig(k=64), head=model.detect)
        state = eventful.new_state()
        for frame in video:
            out = eventful.step(frame[None], state)
    """

    def __init__(self, model: GridModel, cfg: EventfulConfig, head: DetectionHead | None = None) -> None:
        super().__init__(model, head)
        self.cfg = cfg
        self._gated = _GatedBlocks(cfg, 0)

    def new_state(self) -> EventfulState:
        return EventfulState()

    @torch.no_grad()
    def step(self, images: Tensor, state: EventfulState) -> GridStep:
        """Process one frame of each stream in the batch: (B, 3, H, W) preprocessed images."""
        embeds, grid = self.model.embed(images)  # (B, N, C)
        k = self.cfg.tokens(embeds.shape[1])
        dense = self._gated.is_dense(state.t)
        x = with_position(embeds, self.model.position(grid))
        wanted = self.model.output_blocks
        buffers = {-1: x} if -1 in wanted else {}
        keep = scores = None
        for i, blk in enumerate(self.model.blocks):
            x, idx, err = self._gated.block(blk, i, x, state, None if dense else k, grid)
            if i == 0:
                keep, scores = idx, err
            if i in wanted:
                buffers[i] = x
        features, detections = self.outputs(buffers, grid)
        kind = FrameKind.FULL if dense else FrameKind.GATED
        num_kept = embeds.shape[1] if dense else k
        out = GridStep(state.t, kind, num_kept, keep, scores, None, features, detections)
        state.t += 1
        return out


class EventfulClass:
    """The Eventful Transformers baseline for a class-token model: gated blocks over the steps of each stream.

    The prefix tokens (class token, registers) are recomputed by every gate, on top of the k patch tokens.
    """

    stateless = False

    def __init__(self, model: ClassModel, cfg: EventfulConfig) -> None:
        self.model = model
        self.cfg = cfg
        self._gated = _GatedBlocks(cfg, model.num_prefix)

    def new_state(self) -> EventfulState:
        return EventfulState()

    @torch.no_grad()
    def step(self, inputs: Tensor, state: EventfulState) -> ClassStep:
        """One step of every stream in the batch (the model's inputs, as :meth:`RGTPClass.step`)."""
        p = self.model.num_prefix
        embeds, grid = self.model.embed(inputs)  # (B, N, C)
        k = self.cfg.tokens(embeds.shape[1])
        dense = self._gated.is_dense(state.t)
        x = self.model.tokens(embeds, grid)  # (B, P + N, C)
        keep = scores = None
        for i, blk in enumerate(self.model.blocks):
            x, idx, err = self._gated.block(blk, i, x, state, None if dense else k, None)
            if i == 0 and idx is not None:
                keep, scores = idx[:, p:] - p, err  # patch tokens only
        pooled, tokens = self.model.finish(x)
        kind = FrameKind.FULL if dense else FrameKind.GATED
        num_kept = embeds.shape[1] if dense else k
        out = ClassStep(state.t, kind, num_kept, keep, scores, None, pooled, tokens)
        state.t += 1
        return out
