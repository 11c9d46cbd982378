"""The Eventful Transformers baseline (spec §9, token-wise gating) on our ViTDet and ViViT, frame by frame.

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

ViViT: each batch item is an independent stream over the tubelet steps of the spatial encoder; the class token is
always recomputed by every gate, on top of the k patch tokens (k counts patch tokens only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rgtp.config import EventfulConfig
from rgtp.flops import scope
from rgtp.models.layers import Attention, Block
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.common import gather_tokens, scatter_rows_
from rgtp.runtime.vitdet import DenseViTDet, DetectionHead, FrameResult

__all__ = ["EventfulState", "EventfulViTDet", "EventfulViViT"]

logger = logging.getLogger(__name__)


@dataclass
class EventfulState:
    """What the Eventful baseline carries from one step to the next for one stream (or a lockstep batch of them).

    Attributes:
        t: index of the next step.
        references: gate references p by ``"{block}.{gate}"`` (gate ``qkv``, ``proj`` or ``mlp``), each (B, N, C).
        accumulators: full-size outputs of the gated ops by ``"{block}.{op}"``: qkv (B, N, 3C), proj and mlp (B, N, C).
        attention: incremental attention buffers of global blocks by ``"{block}.{name}"``: ``qk`` (B, h, N, N) scaled
            QKᵀ, ``rel_h`` / ``rel_w`` (B, h, N, H) / (B, h, N, W) relative-position terms per query row, and for
            ``qk_av`` the A-gate reference ``attn_ref`` (B, h, N, N) and the product ``av`` (B, h, N, d).
    """

    t: int = 0
    references: dict[str, Tensor] = field(default_factory=dict)
    accumulators: dict[str, Tensor] = field(default_factory=dict)
    attention: dict[str, Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget everything: the next step is step 0 of a new video (a dense step)."""
        self.t = 0
        self.references.clear()
        self.accumulators.clear()
        self.attention.clear()

    def tensors(self) -> dict[str, Tensor]:
        """All tensors held, by name (for inspection and memory accounting)."""
        named = {f"references.{k}": v for k, v in self.references.items()}
        named.update({f"accumulators.{k}": v for k, v in self.accumulators.items()})
        named.update({f"attention.{k}": v for k, v in self.attention.items()})
        return named

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(v.numel() * v.element_size() for v in self.tensors().values())

    def to(self, device: torch.device | str) -> EventfulState:
        """Move every tensor to ``device`` (in place); returns self."""
        for buffers in (self.references, self.accumulators, self.attention):
            for k, v in buffers.items():
                buffers[k] = v.to(device)
        return self


class _GatedBlocks:
    """The gated forward of transformer blocks, shared by the ViTDet and ViViT runtimes.

    Args:
        cfg: the baseline's settings.
        k: tokens each gate recomputes (among the patch tokens).
        always: leading rows every gate recomputes regardless of their error (1 for a class token, else 0).
        grid: the token grid (ViTDet; needed for windows and relative positions), or None (ViViT).
    """

    def __init__(self, cfg: EventfulConfig, k: int, always: int, grid: tuple[int, int] | None) -> None:
        self.cfg, self.k, self.always, self.grid = cfg, k, always, grid

    def is_dense(self, t: int) -> bool:
        """Whether step ``t`` runs dense and refreshes every reference and buffer."""
        every = self.cfg.refresh_every
        return t == 0 or (every is not None and t % every == 0)

    def block(
        self, blk: Block, i: int, x: Tensor, state: EventfulState, dense: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One gated block: (B, N, C) -> (B, N, C), with the qkv gate's rows (B, K) and error norms (B, n) or None."""
        n1 = blk.norm1(x)
        idx, scores = self._select(state, f"{i}.qkv", n1, dense)
        old_v = None
        if idx is not None and self._incremental(blk) and self.cfg.global_attention == "qk_av":
            c = x.shape[-1]
            old_v = gather_tokens(state.accumulators[f"{i}.qkv"][..., 2 * c :], idx)  # (B, K, C): V_ref rows
        qkv = self._run(state, f"{i}.qkv", blk.attn.qkv, n1, idx)  # (B, N, 3C) accumulated
        att = self._attention(blk, i, qkv, idx, old_v, state)  # (B, N, C)
        proj_idx, _ = self._select(state, f"{i}.proj", att, dense)
        x = x + self._run(state, f"{i}.proj", blk.attn.proj, att, proj_idx)
        n2 = blk.norm2(x)
        mlp_idx, _ = self._select(state, f"{i}.mlp", n2, dense)
        x = x + self._run(state, f"{i}.mlp", blk.mlp, n2, mlp_idx)
        return x, idx, scores

    def _incremental(self, blk: Block) -> bool:
        return blk.is_global and self.cfg.global_attention != "dense"

    def _select(self, state: EventfulState, name: str, c: Tensor, dense: bool) -> tuple[Tensor | None, Tensor | None]:
        """The gate ``name`` on its input c (B, N, C): rows to recompute (B, always + k), ascending, and the error
        norms of the patch rows (B, N - always); (None, None) when every row is recomputed (dense steps, k = N)."""
        b, n = c.shape[:2]
        if dense or self.k >= n - self.always:
            state.references[name] = c.clone()  # a private copy: buffers are updated in place later
            return None, None
        ref = state.references.get(name)
        if ref is None:
            raise RuntimeError(f"gate {name} has no reference at step {state.t}: start the stream with reset()")
        a = self.always
        with scope("rgtp"):
            err = torch.add(c[:, a:], ref[:, a:], alpha=-1)  # (B, n - a, C) e = c - p, an add the counter counts
            scores = torch.linalg.vector_norm(err, dim=-1)  # (B, n - a)
            idx = scores.topk(self.k, dim=-1, sorted=False).indices.sort(dim=-1).values + a  # (B, k)
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
        self, blk: Block, i: int, qkv: Tensor, idx: Tensor | None, old_v: Tensor | None, state: EventfulState
    ) -> Tensor:
        """Attention output of every token from the accumulated qkv (B, N, 3C) -> (B, N, C)."""
        attn = blk.attn
        if not self._incremental(blk):
            return attn.attend(qkv, self.grid).out
        q, k, v = attn.split_heads(qkv)  # (B, h, N, d) each
        probs = self._logits(attn, i, q, k, idx, state).softmax(dim=-1)  # (B, h, N, N)
        incremental_av = self.cfg.global_attention == "qk_av"
        out = self._product(i, probs, v, idx, old_v, state) if incremental_av else probs @ v  # (B, h, N, d)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)  # (B, N, C)

    def _logits(
        self, attn: Attention, i: int, q: Tensor, k: Tensor, idx: Tensor | None, state: EventfulState
    ) -> Tensor:
        """Attention logits (B, h, N, N) from the QKᵀ buffer, refreshed at rows and columns ``idx`` (all if None)."""
        buf = state.attention
        if idx is None:
            buf[f"{i}.qk"] = (q * attn.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            if attn.use_rel_pos:
                buf[f"{i}.rel_h"], buf[f"{i}.rel_w"] = attn.rel_terms(q, self._grid(), None)
        else:
            b, h, n, d = q.shape
            rows = idx[:, None, :, None]  # (B, 1, K, 1)
            q_rows = q.gather(2, rows.expand(-1, h, -1, d))  # (B, h, K, d)
            k_rows = k.gather(2, rows.expand(-1, h, -1, d))  # (B, h, K, d)
            qk = buf[f"{i}.qk"]
            qk.scatter_(2, rows.expand(-1, h, -1, n), (q_rows * attn.scale) @ k.transpose(-2, -1))  # rows (B,h,K,N)
            cols = idx[:, None, None, :].expand(-1, h, n, -1)  # (B, h, N, K)
            qk.scatter_(3, cols, (q * attn.scale) @ k_rows.transpose(-2, -1))  # columns (B, h, N, K)
            if attn.use_rel_pos:
                rel_h, rel_w = attn.rel_terms(q_rows, self._grid(), idx)  # (B, h, K, H), (B, h, K, W)
                buf[f"{i}.rel_h"].scatter_(2, rows.expand(-1, h, -1, rel_h.shape[-1]), rel_h)
                buf[f"{i}.rel_w"].scatter_(2, rows.expand(-1, h, -1, rel_w.shape[-1]), rel_w)
        qk = buf[f"{i}.qk"]
        if not attn.use_rel_pos:
            return qk
        (gh, gw), (b, h, n, _) = self._grid(), qk.shape
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

    def _grid(self) -> tuple[int, int]:
        if self.grid is None:
            raise ValueError("relative positions need the token grid")
        return self.grid


class EventfulViTDet(DenseViTDet):
    """The Eventful Transformers baseline for a :class:`~rgtp.models.vitdet.ViTDet`, behind RGTP's ``step``.

    One instance serves any number of streams; each stream's buffers live in its :class:`EventfulState`. Dense steps
    report :attr:`FrameKind.FULL`; gated steps report :attr:`FrameKind.ROLLOUT` (tokens chosen from the previous
    steps' state), with ``num_kept`` = k, ``keep_idx`` = the rows block 0's qkv gate recomputed (None when it
    recomputed all) and ``scores`` = that gate's error norms (B, N); ``importance`` is always None.

    Example::

        eventful = EventfulViTDet(model, EventfulConfig(k=64), head=model.detect)
        state = eventful.new_state()
        for frame in video:
            result = eventful.step(frame[None], state)
    """

    def __init__(self, model: ViTDet, cfg: EventfulConfig, head: DetectionHead | None = None) -> None:
        super().__init__(model, head)
        self.cfg = cfg
        self.k = cfg.tokens(model.cfg.num_tokens)
        self._gated = _GatedBlocks(cfg, self.k, 0, model.cfg.grid)
        logger.debug(
            "eventful ViTDet: k=%d of %d tokens per gate, %s global attention",
            self.k,
            model.cfg.num_tokens,
            cfg.global_attention,
        )

    def new_state(self) -> EventfulState:  # type: ignore[override]
        return EventfulState()

    @torch.no_grad()
    def step(self, images: Tensor, state: EventfulState) -> FrameResult:
        """Process one frame of each stream in the batch: (B, 3, S, S) padded, normalised images."""
        net = self.model.net
        dense = self._gated.is_dense(state.t)
        x = net.embed(images) + net.position()  # (B, N, C)
        keep = scores = None
        for i, blk in enumerate(net.blocks):
            x, idx, err = self._gated.block(blk, i, x, state, dense)
            if i == 0:
                keep, scores = idx, err
        features = self.model.features(x)
        kind = FrameKind.FULL if dense else FrameKind.ROLLOUT
        num_kept = self.model.cfg.num_tokens if dense else self.k
        result = FrameResult(state.t, kind, num_kept, keep, scores, None, features, self.detect(features))
        state.t += 1
        return result


class EventfulViViT:
    """The Eventful Transformers baseline for a :class:`~rgtp.models.vivit.ViViT`: gated spatial encoder over steps.

    Each view of a batch is an independent stream over its tubelet steps; the temporal encoder and the classifier
    run unchanged on the spatial class tokens. After each clip, :attr:`last_state_nbytes` holds the bytes of the
    streams' state (the whole batch) at the end of the clip.
    """

    def __init__(self, model: ViViT, cfg: EventfulConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.k = cfg.tokens(model.cfg.num_tokens)
        self._gated = _GatedBlocks(cfg, self.k, 1, None)
        self.last_state_nbytes = 0

    def new_state(self) -> EventfulState:
        return EventfulState()

    def __call__(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised views -> (B, classes) logits."""
        return self.model.classify(self.spatial_features(clip))

    @torch.no_grad()
    def spatial_features(self, clip: Tensor) -> Tensor:
        """The gated spatial encoder's class token per step: (B, 3, T, H, W) -> (B, steps, C)."""
        tokens = self.model.embed(clip)  # (B, steps, N, C)
        state = self.new_state()
        cls = [self.step(tokens[:, t], state) for t in range(tokens.shape[1])]
        self.last_state_nbytes = state.nbytes()
        return torch.stack(cls, dim=1)  # (B, steps, C)

    @torch.no_grad()
    def step(self, embeds: Tensor, state: EventfulState) -> Tensor:
        """One step of the spatial encoder for each stream: (B, N, C) tubelet embeddings -> (B, C) class token."""
        enc = self.model.spatial
        dense = self._gated.is_dense(state.t)
        x = enc.tokens(embeds)  # (B, 1 + N, C)
        for i, blk in enumerate(enc.blocks):
            x, _, _ = self._gated.block(blk, i, x, state, dense)
        state.t += 1
        return enc.norm(x[:, 0])
