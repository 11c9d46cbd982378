"""The front door: :func:`adapt` turns a model a user already has into a frame-by-frame runner of any method."""

from __future__ import annotations

import dataclasses
from typing import Any

from rgtp.adapters import adapter_for
from rgtp.config import ExecutionConfig, RGTPConfig
from rgtp.runtime.contract import Runner
from rgtp.runtime.grid_loop import DetectionHead
from rgtp.runtime.methods import METHODS, MethodConfig, make_runner, with_keep_ratio
from rgtp.runtime.selectors import Selector

__all__ = ["adapt"]

_AUTO: Any = object()


def adapt(
    model: Any,
    method: MethodConfig | str = "rgtp",
    *,
    keep_ratio: float | None = None,
    reset_every: int | None = _AUTO,
    head: DetectionHead | None = _AUTO,
    selector: Selector | None = None,
    execution: ExecutionConfig | None = None,
) -> Runner[Any]:
    """A runner of ``method`` on ``model``, used unchanged (weights shared, nothing converted).

    Args:
        model: our ViTDet or ViViT, a Hugging Face ``VitDetBackbone`` / ``VitDetModel`` / ``ViTModel`` /
            ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``CLIPVisionModel``, or a timm ``VisionTransformer``,
            in eval mode.
        method: ``"rgtp"`` (default), ``"eventful"``, ``"tome"`` or ``"dense"`` with that method's defaults for the
            model's family, or a method's config (:class:`~rgtp.config.RGTPConfig`, ...; None: dense).
        keep_ratio: replaces the config's keep ratio (RGTP: ``selection.keep_ratio``).
        reset_every: RGTP only, replaces ``schedule.reset_every`` (None: never reset; grid models reset with a full
            frame, class-token models with a grid step).
        head: for grid models, a callable(outputs) -> detections per image whose boxes anchor RGTP's rollout (default:
            our ViTDet's detector when it has one, else none: every token is an anchor).
        selector: RGTP only, a :class:`~rgtp.runtime.selectors.Selector` replacing ``selection.policy``'s (e.g. a
            :class:`~rgtp.runtime.selectors.ForcedSelector` replaying given kept sets).
        execution: how the runner executes, dense and RGTP (:class:`~rgtp.config.ExecutionConfig`: fused attention,
            bf16 autocast, ``torch.compile`` or CUDA graphs; None: the exact default path).

    Returns:
        A runner: ``state = runner.new_state()``, then ``out = runner.step(frames, state)`` for each frame (a batch
        of independent streams), ``state.reset()`` between videos. Grid models return
        :class:`~rgtp.runtime.contract.GridStep`, class-token models :class:`~rgtp.runtime.contract.ClassStep`.
        With ``keep_ratio=1.0, reset_every=None`` the outputs are the unmodified model's.

    Example::

        from transformers import Dinov2Model
        dino = Dinov2Model.from_pretrained("facebook/dinov2-base").eval()
        runner = rgtp.adapt(dino, keep_ratio=0.5)
        state = runner.new_state()
        for frame in frames:                 # (1, 3, H, W) preprocessed
            out = runner.step(frame, state)  # out.pooled (1, 768), out.tokens (1, 1 + N, 768)
    """
    view = adapter_for(model)
    if head is _AUTO:
        head = _default_head(model) if view.family == "grid" else None
    config: MethodConfig | str = method
    if keep_ratio is not None or reset_every is not _AUTO:
        if isinstance(method, str):
            if method not in METHODS or view.family not in METHODS[method].defaults:
                raise ValueError(f"method {method!r} has no settings to change (known methods: {sorted(METHODS)})")
            config = METHODS[method].defaults[view.family]
        if keep_ratio is not None:
            config = with_keep_ratio(config, keep_ratio)
        if reset_every is not _AUTO:
            if not isinstance(config, RGTPConfig):
                raise ValueError("reset_every is an RGTP setting")
            config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, reset_every=reset_every))
    return make_runner(view, config, head, selector, execution)


def _default_head(model: Any) -> DetectionHead | None:
    """Our ViTDet's detector when it has one."""
    detect = getattr(model, "detect", None)
    has_head = getattr(model, "head", None) is not None
    return detect if callable(detect) and has_head and type(model).__name__ == "ViTDet" else None
