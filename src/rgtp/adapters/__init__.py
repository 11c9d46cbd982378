"""Views of models as the block protocol (:mod:`rgtp.models.protocol`), by model class: ours and other libraries'.

:func:`adapter_for` finds the view of a model object by its class name, so that no optional library is imported
until a model of it is given. The views use the model's own modules and weights in place; nothing is converted.

| model class | library | family |
|---|---|---|
| ``ViTDet``, ``ViViT`` | rgtp | grid, cls |
| ``VitDetBackbone``, ``VitDetModel`` | transformers | grid |
| ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``CLIPVisionModel`` | transformers | cls |
| ``VisionTransformer`` | timm | cls |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ADAPTERS", "AdapterError", "adapter_for", "register_adapter"]


class AdapterError(ValueError):
    """A model rgtp cannot drive: an unknown class, or a structure the adapter does not support."""


def _native(model: Any) -> Any:
    from rgtp.adapters.native import ViTDetAdapter, ViViTAdapter

    return ViTDetAdapter(model) if type(model).__name__ == "ViTDet" else ViViTAdapter(model)


def _hf(kind: str) -> Callable[[Any], Any]:
    def build(model: Any) -> Any:
        from rgtp.adapters import hf

        return hf.BUILDERS[kind](model)

    return build


def _timm(model: Any) -> Any:
    from rgtp.adapters.timm import TimmViTAdapter

    return TimmViTAdapter(model)


#: Adapter builders by model class name.
ADAPTERS: dict[str, Callable[[Any], Any]] = {
    "ViTDet": _native,
    "ViViT": _native,
    "VitDetBackbone": _hf("vitdet"),
    "VitDetModel": _hf("vitdet"),
    "ViTModel": _hf("vit"),
    "Dinov2Model": _hf("dinov2"),
    "Dinov2WithRegistersModel": _hf("dinov2"),
    "CLIPVisionModel": _hf("clip"),
    "VisionTransformer": _timm,
}


def register_adapter(class_name: str, builder: Callable[[Any], Any]) -> None:
    """Add the view builder of models of class ``class_name``."""
    if class_name in ADAPTERS:
        raise ValueError(f"adapter for {class_name!r} registered twice")
    ADAPTERS[class_name] = builder


def adapter_for(model: Any) -> Any:
    """The block-protocol view of ``model`` (itself, when it already is one: it has ``family`` and ``blocks``)."""
    if hasattr(model, "family") and hasattr(model, "blocks"):
        return model
    name = type(model).__name__
    if name not in ADAPTERS:
        raise AdapterError(
            f"rgtp cannot drive a {name}: supported models are {', '.join(sorted(ADAPTERS))} "
            "(or register_adapter() a view of the block protocol)"
        )
    return ADAPTERS[name](model)
