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


#: Adapter builders by model class name, with the package the class must come from.
ADAPTERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ViTDet": ("rgtp", _native),
    "ViViT": ("rgtp", _native),
    "VitDetBackbone": ("transformers", _hf("vitdet")),
    "VitDetModel": ("transformers", _hf("vitdet")),
    "ViTModel": ("transformers", _hf("vit")),
    "Dinov2Model": ("transformers", _hf("dinov2")),
    "Dinov2WithRegistersModel": ("transformers", _hf("dinov2")),
    "CLIPVisionModel": ("transformers", _hf("clip")),
    "VisionTransformer": ("timm", _timm),
}


def register_adapter(class_name: str, package: str, builder: Callable[[Any], Any]) -> None:
    """Add the view builder of models of class ``class_name`` from ``package`` (the first part of the module)."""
    if class_name in ADAPTERS:
        raise ValueError(f"adapter for {class_name!r} registered twice")
    ADAPTERS[class_name] = (package, builder)


def adapter_for(model: Any) -> Any:
    """The block-protocol view of ``model`` (itself, when it already is one: it has ``family`` and ``blocks``)."""
    if hasattr(model, "family") and hasattr(model, "blocks"):
        return model
    cls = type(model)
    package = cls.__module__.split(".")[0]
    entry = ADAPTERS.get(cls.__name__)
    if entry is None or entry[0] != package:
        supported = ", ".join(f"{p}'s {name}" for name, (p, _) in sorted(ADAPTERS.items()))
        raise AdapterError(
            f"rgtp cannot drive a {cls.__name__} from {package}: supported models are {supported} "
            "(or register_adapter() a view of the block protocol)"
        )
    return entry[1](model)
