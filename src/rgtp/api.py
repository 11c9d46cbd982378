"""The front door: :func:`adapt` turns a model a user already has into a frame-by-frame runner of any method."""

from __future__ import annotations

from typing import Any

from rgtp.adapters import adapter_for
from rgtp.runtime.grid_loop import DetectionHead
from rgtp.runtime.methods import METHODS, MethodConfig, build_runner, with_keep_ratio
from rgtp.runtime.selectors import Selector

__all__ = ["adapt"]

_AUTO: Any = object()


def adapt(
    model: Any,
    method: MethodConfig | str = "rgtp",
    *,
    keep_ratio: float | None = None,
    head: DetectionHead | None = _AUTO,
    selector: Selector | None = None,
) -> Any:
    """A runner of ``method`` on ``model``, used unchanged (weights shared, nothing converted).

    Args:
        model: our ViTDet or ViViT, a Hugging Face ``VitDetBackbone`` / ``VitDetModel`` / ``ViTModel`` /
            ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``CLIPVisionModel``, or a timm ``VisionTransformer``,
            in eval mode.
        method: ``"rgtp"`` (default), ``"eventful"``, ``"tome"`` or ``"dense"`` with that method's defaults for the
            model's family, or a method's config (:class:`~rgtp.config.RGTPConfig`, ...; None: dense).
        keep_ratio: replaces the config's keep ratio (RGTP: ``selection.keep_ratio``).
        head: for grid models, a callable(outputs) -> detections per image whose boxes anchor RGTP's rollout (default:
            our ViTDet's detector when it has one, else none: every token is an anchor).
        selector: RGTP only, a :class:`~rgtp.runtime.selectors.Selector` replacing ``selection.policy``'s (e.g. a
            :class:`~rgtp.runtime.selectors.ForcedSelector` replaying given kept sets).

    Returns:
        A runner: ``state = runner.new_state()``, then ``out = runner.step(frames, state)`` for each frame (a batch
        of independent streams), ``state.reset()`` between videos. Grid models return
        :class:`~rgtp.runtime.contract.GridStep`, class-token models :class:`~rgtp.runtime.contract.ClassStep`.

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
    if keep_ratio is not None:
        if isinstance(method, str):
            if method not in METHODS or view.family not in METHODS[method].defaults:
                raise ValueError(f"method {method!r} has no keep ratio (known methods: {sorted(METHODS)})")
            method = METHODS[method].defaults[view.family]
        config = with_keep_ratio(method, keep_ratio)
    return build_runner(view, config, head, selector)


def _default_head(model: Any) -> DetectionHead | None:
    """Our ViTDet's detector when it has one."""
    detect = getattr(model, "detect", None)
    has_head = getattr(model, "head", None) is not None
    return detect if callable(detect) and has_head and type(model).__name__ == "ViTDet" else None
