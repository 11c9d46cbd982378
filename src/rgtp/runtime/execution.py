"""How a runner executes its steps (:class:`~rgtp.config.ExecutionConfig`): fused attention, autocast, compilation.

A runner splits its step into eager bookkeeping (the schedule, block 0 with the attention rows the rollout reads,
token selection, the rollout) and a *body*: the block stack on the kept tokens with its buffer updates, a pure
function of tensors with static shapes per step kind (the kept count of a preset is fixed), no host
synchronisation and no branch on tensor values. :class:`Execution` compiles that body when asked, runs the step under
autocast, and keeps the method's own arithmetic (rollout, tracking, selection) in float32 (:func:`full_precision`).

With ``compile="graphs"`` the body updates its buffers out of place (captured graphs must not mutate their inputs)
and is compiled with ``mode="reduce-overhead"``, which replays it as a CUDA graph on a GPU; its outputs are copied out
of the graph's memory pool before the state keeps them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from rgtp.config import ExecutionConfig

__all__ = ["Execution", "full_precision"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_VARIANTS = 64  # compiled variants of one body that dynamo keeps


def full_precision(like: Tensor) -> contextlib.AbstractContextManager[Any]:
    """A region computed in float32 even inside an autocast step (the rollout, tracking and selection); a no-op
    outside autocast."""
    kind = like.device.type
    if kind == "meta" or not torch.is_autocast_enabled(kind):
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False)


class Execution:
    """The runtime side of an :class:`~rgtp.config.ExecutionConfig`, one per runner.

    Attributes:
        cfg: the settings.
        fused: what runners pass as ``attend(..., fused=)`` (None: each block's own default).
        inplace: whether bodies update buffers in place (not under CUDA-graph capture).
    """

    def __init__(self, cfg: ExecutionConfig | None = None) -> None:
        self.cfg = ExecutionConfig() if cfg is None else cfg
        self.fused: bool | None = True if self.cfg.attention == "fused" else None
        # captured graphs must not mutate their inputs; a CPU captures none and keeps in-place updates
        self.inplace = not (self.cfg.compile == "graphs" and torch.cuda.is_available())

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context a step runs in: autocast at the configured precision, or nothing at fp32."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_DTYPES[self.cfg.precision])

    def upcast(self, x: Tensor) -> Tensor:
        """x in float32 if autocast made it half precision (what the rollout, tracking and selection read); unchanged
        otherwise (a model whose weights are float64 or bfloat16 keeps its dtype)."""
        low = self.cfg.precision != "fp32" and x.dtype in (torch.bfloat16, torch.float16)
        return x.float() if low else x

    def compiled(self, body: F) -> F:
        """``body`` compiled as configured (itself when ``compile="none"``). Compilation happens at the first call of
        each step kind; a CPU gets plain compilation for ``graphs``."""
        if self.cfg.compile == "none":
            return body
        cache: dict[str, Callable[..., Any]] = {}

        def run(*args: Any, **kwargs: Any) -> Any:
            device = next(a.device for a in args if isinstance(a, Tensor))
            graphs = self.cfg.compile == "graphs" and device.type == "cuda"
            key = "graphs" if graphs else "compile"
            if key not in cache:
                logger.info("compiling %s (%s)", getattr(body, "__qualname__", body), key)
                # one variant per runner, step kind and batch (static shapes): more than dynamo's default 8, past
                # which it would fall back to eager without a word
                limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), _VARIANTS))
                cache[key] = torch.compile(body, mode="reduce-overhead" if graphs else None, dynamic=False)
            if not graphs:
                return cache[key](*args, **kwargs)
            torch.compiler.cudagraph_mark_step_begin()
            out = cache[key](*args, **kwargs)
            # A graph's outputs live in its memory pool and are overwritten by its next replay: what the stream's
            # state keeps (the buffers the body stored into the dicts it was given) and what it returns are copied
            # out, so that the next step reads them as ordinary inputs.
            for arg in args:
                if isinstance(arg, dict):
                    arg.update({k: v.clone() for k, v in arg.items() if isinstance(v, Tensor)})
            return tree_map(lambda v: v.clone() if isinstance(v, Tensor) else v, out)

        return run  # type: ignore[return-value]
