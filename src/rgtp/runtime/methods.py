"""The method registry: every per-frame method by name, with a runner builder per model family.

``build_runner(model, method)`` is how everything in rgtp constructs a method (the CLI, evaluations, the benchmark,
compute accounting, :func:`rgtp.adapt`): ``method`` is a method's config (its type names the method; None is the
dense model) or a registered name. :func:`register_method` adds a method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from rgtp.adapters import adapter_for
from rgtp.config import EventfulConfig, RGTPConfig, ToMeConfig
from rgtp.runtime.cls_loop import RGTPClass
from rgtp.runtime.dense import DenseClass, DenseGrid
from rgtp.runtime.eventful import EventfulClass, EventfulGrid
from rgtp.runtime.grid_loop import DetectionHead, RGTPGrid
from rgtp.runtime.selectors import Selector
from rgtp.runtime.tome import ToMeClass, ToMeGrid

__all__ = ["METHODS", "Method", "MethodConfig", "build_runner", "method_name", "register_method"]

MethodConfig = Union[RGTPConfig, EventfulConfig, ToMeConfig, None]  # noqa: UP007
#: builder(model, config, head, selector) -> runner
Builder = Callable[[Any, Any, DetectionHead | None, Selector | None], Any]


@dataclass(frozen=True)
class Method:
    """A registered method: its config type (None: no settings), its default config per model family, and a runner
    builder per family ("grid", "cls")."""

    config_type: type | None
    defaults: dict[str, Any]
    builders: dict[str, Builder]


def _no_selector(name: str, selector: Selector | None) -> None:
    if selector is not None:
        raise ValueError(f"a token selector is an RGTP setting; method {name!r} takes none")


def _dense_grid(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> DenseGrid:
    _no_selector("dense", selector)
    return DenseGrid(model, head)


def _dense_cls(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> DenseClass:
    _no_selector("dense", selector)
    return DenseClass(model)


def _eventful_grid(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> EventfulGrid:
    _no_selector("eventful", selector)
    return EventfulGrid(model, cfg, head)


def _eventful_cls(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> EventfulClass:
    _no_selector("eventful", selector)
    return EventfulClass(model, cfg)


def _tome_grid(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> ToMeGrid:
    _no_selector("tome", selector)
    return ToMeGrid(model, cfg, head)


def _tome_cls(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> ToMeClass:
    _no_selector("tome", selector)
    return ToMeClass(model, cfg)


def _rgtp_cls(model: Any, cfg: Any, head: DetectionHead | None, selector: Selector | None) -> RGTPClass:
    return RGTPClass(model, cfg, selector)


# RGTP's defaults on a model of each family: the paper's ViTDet settings at 1024 (backward rollout from the boxes,
# pruned tokens keep their previous importance, a full frame every 8) and its Kinetics ViViT settings (forward
# class-token rollout, pruned tokens matched by key, a 1in2 grid step every 8).
_RGTP_GRID = RGTPConfig()
_RGTP_CLS = RGTPConfig(
    selection=dataclasses.replace(_RGTP_GRID.selection, keep_ratio=0.49),
    schedule=dataclasses.replace(_RGTP_GRID.schedule, reset_mode="grid", grid_pattern="1in2"),
    rollout=dataclasses.replace(_RGTP_GRID.rollout, form="forward", pruned_fill="match"),
)

METHODS: dict[str, Method] = {
    "dense": Method(None, {}, {"grid": _dense_grid, "cls": _dense_cls}),
    "rgtp": Method(RGTPConfig, {"grid": _RGTP_GRID, "cls": _RGTP_CLS}, {"grid": RGTPGrid, "cls": _rgtp_cls}),
    "eventful": Method(
        EventfulConfig,
        {"grid": EventfulConfig(keep_ratio=0.3), "cls": EventfulConfig(keep_ratio=0.3)},
        {"grid": _eventful_grid, "cls": _eventful_cls},
    ),
    "tome": Method(
        ToMeConfig,
        {"grid": ToMeConfig(keep_ratio=0.5, spread="front"), "cls": ToMeConfig(keep_ratio=0.5, spread="front")},
        {"grid": _tome_grid, "cls": _tome_cls},
    ),
}


def register_method(name: str, method: Method) -> None:
    """Add a method under ``name``."""
    if name in METHODS:
        raise ValueError(f"method {name!r} registered twice")
    METHODS[name] = method


def method_name(config: Any) -> str:
    """The registered name of the method a config belongs to (None: ``dense``)."""
    for name, method in METHODS.items():
        if (config is None and method.config_type is None) or (
            method.config_type is not None and isinstance(config, method.config_type)
        ):
            return name
    raise ValueError(f"no registered method takes a {type(config).__name__}; known methods: {sorted(METHODS)}")


def with_keep_ratio(config: Any, keep_ratio: float) -> Any:
    """The config with its method's keep ratio replaced (RGTP: selection.keep_ratio; Eventful, ToMe: keep_ratio)."""
    if isinstance(config, RGTPConfig):
        return dataclasses.replace(config, selection=dataclasses.replace(config.selection, keep_ratio=keep_ratio))
    if isinstance(config, EventfulConfig):
        return dataclasses.replace(config, k=None, keep_ratio=keep_ratio)
    if isinstance(config, ToMeConfig):
        return dataclasses.replace(config, r=None, keep_ratio=keep_ratio)
    raise ValueError(f"the {method_name(config)} method has no keep ratio")


def build_runner(
    model: Any,
    method: MethodConfig | str = "rgtp",
    head: DetectionHead | None = None,
    selector: Selector | None = None,
) -> Any:
    """A runner of ``method`` on ``model``.

    Args:
        model: a model :func:`rgtp.adapters.adapter_for` knows (ours, transformers', timm's) or a view of the block
            protocol (``family`` "grid" or "cls").
        method: a method's config, None for the dense model, or a registered name (its default config).
        head: a detection head for grid models (its detections anchor RGTP's rollout).
        selector: RGTP only, a selector object replacing the one ``selection.policy`` names.
    """
    model = adapter_for(model)
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
        name, config = method, METHODS[method].defaults.get(model.family)
    else:
        name, config = method_name(method), method
    builders = METHODS[name].builders
    if model.family not in builders:
        raise ValueError(f"method {name!r} has no runner for {model.family!r} models")
    if model.family == "cls" and head is not None:
        raise ValueError("a detection head attaches to grid models only")
    return builders[model.family](model, config, head, selector)
