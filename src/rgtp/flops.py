"""Compute accounting in multiply-accumulates (MACs), counted from the operations that actually execute.

:class:`MacCounter` is a ``TorchDispatchMode``: every aten op that runs inside it is inspected, so the count follows the
code path taken (pruned or not) rather than a formula. It works on meta tensors, so full-size models are counted
without computing anything.

Convention (the reference's, method §10.1): one unit per multiply-accumulate of a product (linear layers, matmuls,
einsums, convolutions, scaled-dot-product attention), plus one unit per output element of a tensor-tensor addition
(biases, residuals, position and relative-position terms). Elementwise ops without an addition of two tensors
(LayerNorm, softmax, GELU, scaling), pooling, interpolation, sorting and indexing are not counted.

Counts are attributed to the innermost active :func:`scope`. The paper's figures count the scopes ``backbone`` and
``rgtp`` (the method's own overhead: tracking, matching, rollout); ``embed`` (patch embedding), ``neck`` and ``head``
are counted too but excluded from :data:`PAPER_SCOPES`. Unlike ``torch.utils.flop_counter`` (which counts 2 FLOPs per
MAC), SDPA is counted on every device.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["PAPER_SCOPES", "MacCounter", "scope"]

PAPER_SCOPES = ("backbone", "rgtp")

_SCOPE: ContextVar[str] = ContextVar("rgtp_mac_scope", default="backbone")

aten = torch.ops.aten


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Attribute the MACs of the enclosed code to ``name`` (a no-op cost when no counter is active; nothing inside
    code that ``torch.compile`` traces, where no counter runs)."""
    if torch.compiler.is_compiling():
        yield
        return
    token = _SCOPE.set(name)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def _mm(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    return out.numel() * _shape(args[0])[-1], 0


def _addmm(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    return out.numel() * _shape(args[1])[-1], out.numel()


def _baddbmm(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    return out.numel() * _shape(args[1])[-1], out.numel()


def _addmv(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    return out.numel() * _shape(args[2])[-1], out.numel()


def _conv(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    weight = args[1]  # (C_out, C_in / groups, *kernel), or (C_in, C_out / groups, *kernel) when transposed
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed:
        in_per_group = _shape(weight)[1]  # C_out / groups: each input element feeds that many outputs per tap
        macs = args[0].numel() * in_per_group * math.prod(_shape(weight)[2:])
    else:
        macs = out.numel() * _shape(weight)[1] * math.prod(_shape(weight)[2:])
    bias = out.numel() if len(args) > 2 and args[2] is not None else 0
    return macs, bias


def _sdpa(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    q, k, v = args[0], args[1], args[2]
    lead = math.prod(_shape(q)[:-2])
    lq, d = _shape(q)[-2:]
    lk, dv = _shape(k)[-2], _shape(v)[-1]
    return lead * lq * lk * (d + dv), 0


def _add(args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    a, b = args[0], args[1] if len(args) > 1 else None
    if not isinstance(b, torch.Tensor) or b.dim() == 0 or a.dim() == 0 or not out.is_floating_point():
        return 0, 0  # adding a scalar, or index arithmetic
    return 0, out.numel()


_HANDLERS: dict[Any, Callable[[tuple[Any, ...], Any], tuple[int, int]]] = {
    aten.mm.default: _mm,
    aten.bmm.default: _mm,
    aten.mv.default: _mm,
    aten.dot.default: _mm,
    aten.addmm.default: _addmm,
    aten.baddbmm.default: _baddbmm,
    aten.addmv.default: _addmv,
    aten.convolution.default: _conv,
    aten.add.Tensor: _add,
    aten.add_.Tensor: _add,
}
for _name in (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_attention_math",
):
    if hasattr(aten, _name):
        _HANDLERS[getattr(aten, _name).default] = _sdpa


class MacCounter(TorchDispatchMode):
    """Count multiply-accumulates (and tensor additions) of everything executed inside ``with MacCounter() as c:``.

    ``c.macs(scopes)`` is the total over the given scopes (default :data:`PAPER_SCOPES`); ``c.gmacs()`` the same
    in units of 10⁹; ``c.by_scope()`` the breakdown. Count under ``torch.no_grad()``, not ``torch.inference_mode()``:
    inference tensors skip the dispatch this counter sees for most operators (it refuses to start there).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = defaultdict(int)

    def __enter__(self) -> MacCounter:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("MacCounter misses most operators under torch.inference_mode(): use torch.no_grad()")
        return super().__enter__()  # type: ignore[no-any-return]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        handler = _HANDLERS.get(func)
        if handler is not None:
            result = out[0] if isinstance(out, tuple | list) else out
            macs, adds = handler(args, result)
            if macs or adds:
                self.counts[_SCOPE.get()] += macs + adds
        return out

    def macs(self, scopes: tuple[str, ...] | None = PAPER_SCOPES) -> int:
        """MACs counted in ``scopes`` (all scopes if None)."""
        return sum(v for k, v in self.counts.items() if scopes is None or k in scopes)

    def gmacs(self, scopes: tuple[str, ...] | None = PAPER_SCOPES) -> float:
        return self.macs(scopes) / 1e9

    def by_scope(self) -> dict[str, int]:
        return dict(self.counts)

    def clear(self) -> None:
        self.counts.clear()
