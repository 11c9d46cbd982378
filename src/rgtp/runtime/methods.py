"""The method registry: every per-frame method by name, with a runner builder per model family.

``make_runner(model, method)`` is how everything in rgtp constructs a method (``rgtp.build_runner`` for presets, the
evaluations, the benchmark, compute accounting, :func:`rgtp.adapt`): ``method`` is a method's config (its type names
the method; None is the dense model) or a registered name (the method's default config for the model's family).
:func:`register_method` adds a method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from rgtp.adapters import adapter_for
from rgtp.config import EventfulConfig, ExecutionConfig, RGTPConfig, ToMeConfig
from rgtp.runtime.cls_loop import RGTPClass
from rgtp.runtime.contract import Runner
from rgtp.runtime.dense import DenseClass, DenseGrid
from rgtp.runtime.eventful import EventfulClass, EventfulGrid
from rgtp.runtime.grid_loop import DetectionHead, RGTPGrid
from rgtp.runtime.selectors import Selector
from rgtp.runtime.tome import ToMeClass, ToMeGrid

__all__ = ["METHODS", "Method", "MethodConfig", "make_runner", "method_name", "register_method", "with_keep_ratio"]

MethodConfig = Union[RGTPConfig, EventfulConfig, ToMeConfig, None]  # noqa: UP007


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        config_type: the type of its config (None: it has no settings).
        defaults: its default config per model family ("grid", "cls").
        grid / cls: runner builders, (view, config, head, selector, execution) -> runner; ``cls`` builders get no
            head.
        keep_ratio: the config with its keep ratio replaced, or None if the method has none.
    """

    config_type: type | None
    defaults: dict[str, Any]
    grid: Callable[[Any, Any, DetectionHead | None, Selector | None, ExecutionConfig | None], Any]
    cls: Callable[[Any, Any, Selector | None, ExecutionConfig | None], Any]
    keep_ratio: Callable[[Any, float], Any] | None = None


def _no_selector(name: str, build: Callable[..., Any], execution: bool = False) -> Callable[..., Any]:
    """A builder for a method that takes no token selector (an RGTP setting), and passes its execution settings on
    (``execution``) or takes none but the default."""

    def checked(*args: Any) -> Any:
        *args, selector, settings = args
        if selector is not None:
            raise ValueError(f"a token selector is an RGTP setting; method {name!r} takes none")
        if execution:
            return build(*args, settings)
        if settings is not None and not settings.exact:
            raise ValueError(f"method {name!r} has no execution settings (fused attention, autocast, compile)")
        return build(*args)

    return checked


def _replace(path: str) -> Callable[[Any, float], Any]:
    """Replace the keep ratio at ``path`` (``keep_ratio`` or ``selection.keep_ratio``), dropping a count given
    instead (Eventful's ``k``, ToMe's ``r``)."""

    def replace(config: Any, keep_ratio: float) -> Any:
        if "." in path:
            section, _ = path.split(".")
            inner = dataclasses.replace(getattr(config, section), keep_ratio=keep_ratio)
            return dataclasses.replace(config, **{section: inner})
        other = {"k": None} if isinstance(config, EventfulConfig) else {"r": None}
        return dataclasses.replace(config, keep_ratio=keep_ratio, **other)

    return replace


# RGTP's defaults on a model of each family: the paper's ViTDet settings at 1024 (rollout from the boxes, pruned
# tokens keep their previous importance, a full frame every 8) and its Kinetics ViViT settings (class-token rollout,
# pruned tokens matched by key, a 1in2 grid step every 8). Both compute the rollout in its backward (vector) form:
# the same heatmap as the paper's forward (matrix) form of ViViT, without its N³ products (28 GMACs a frame on
# DINOv2-B at 518).
_RGTP_GRID = RGTPConfig()
_RGTP_CLS = RGTPConfig(
    selection=dataclasses.replace(_RGTP_GRID.selection, keep_ratio=0.49),
    schedule=dataclasses.replace(_RGTP_GRID.schedule, reset_mode="grid", grid_pattern="1in2"),
    rollout=dataclasses.replace(_RGTP_GRID.rollout, form="backward", pruned_fill="match"),
)
_EVENTFUL = EventfulConfig(keep_ratio=0.3)
_TOME = ToMeConfig(keep_ratio=0.5, spread="front")

METHODS: dict[str, Method] = {
    "dense": Method(
        None,
        {},
        _no_selector("dense", lambda m, c, h, e: DenseGrid(m, h, e), execution=True),
        _no_selector("dense", lambda m, c, e: DenseClass(m, e), execution=True),
    ),
    "rgtp": Method(
        RGTPConfig, {"grid": _RGTP_GRID, "cls": _RGTP_CLS}, RGTPGrid, RGTPClass, _replace("selection.keep_ratio")
    ),
    "eventful": Method(
        EventfulConfig,
        {"grid": _EVENTFUL, "cls": _EVENTFUL},
        _no_selector("eventful", EventfulGrid),
        _no_selector("eventful", EventfulClass),
        _replace("keep_ratio"),
    ),
    "tome": Method(
        ToMeConfig,
        {"grid": _TOME, "cls": _TOME},
        _no_selector("tome", ToMeGrid),
        _no_selector("tome", ToMeClass),
        _replace("keep_ratio"),
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
    """The config with its method's keep ratio replaced (RGTP: ``selection.keep_ratio``; Eventful, ToMe:
    ``keep_ratio``)."""
    name = method_name(config)
    replace = METHODS[name].keep_ratio
    if replace is None:
        raise ValueError(f"the {name} method has no keep ratio")
    return replace(config, keep_ratio)


def make_runner(
    model: Any,
    method: MethodConfig | str = "rgtp",
    head: DetectionHead | None = None,
    selector: Selector | None = None,
    execution: ExecutionConfig | None = None,
) -> Runner[Any]:
    """A runner of ``method`` on ``model``.

    Args:
        model: a model :func:`rgtp.adapters.adapter_for` knows (ours, transformers', timm's) or a view of the block
            protocol (``family`` "grid" or "cls").
        method: a method's config, None for the dense model, or a registered name (its default config).
        head: a detection head for grid models (its detections anchor RGTP's rollout).
        selector: RGTP only, a selector object replacing the one ``selection.policy`` names.
        execution: how the runner executes (dense and RGTP; None: the exact default path).
    """
    view = adapter_for(model)
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
        name, config = method, METHODS[method].defaults.get(view.family)
    else:
        name, config = method_name(method), method
    entry = METHODS[name]
    if view.family == "grid":
        return entry.grid(view, config, head, selector, execution)
    if head is not None:
        raise ValueError("a detection head attaches to grid models only")
    return entry.cls(view, config, selector, execution)
