"""The methods the benchmark compares, each at several compute budgets, and how to build their runtimes.

A :class:`Variant` is one point of one method: RGTP and its ablations, the naive subsets and the MaskVD-style box
tokens are :class:`~rgtp.config.RGTPConfig` variants that run through the same pipeline (same buffers, same
schedule, only the selector or one ingredient differs); Eventful-style gating and ToMe-style merging have their own
configs. Every variant's runner is built through the method registry (:func:`~rgtp.runtime.methods.make_runner`)
and follows the one runner contract, so the evaluation code does not know which method it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rgtp.config import EventfulConfig, RGTPConfig, ToMeConfig
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import CUT, TRIGGER, rgtp_plus
from rgtp.runtime.methods import make_runner

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "VARIANTS_ACTION",
    "VARIANTS_DETECTION",
    "Variant",
    "action_plus",
    "action_variants",
    "build_variant",
    "detection_plus",
    "detection_variants",
    "select_methods",
]

#: Methods the targets compare RGTP against (the ablations are reported but are not competitors).
BASELINES = ("Eventful", "ToMe", "random", "uniform", "MaskVD boxes")
#: Ablations of the paper's RGTP: measured with ``--methods all`` (or by name), not by default.
ABLATIONS = ("RGTP no tracking", "RGTP mean fusion", "RGTP no reset", "RGTP 2x resets")
#: RGTP beyond the paper (opt-in config settings, see rgtp.config): the variants the targets judge with the paper's.
VARIANTS_DETECTION = ("RGTP fresh", "RGTP staggered", "RGTP triggered", "RGTP+")
VARIANTS_ACTION = ("RGTP context", "RGTP staggered", "RGTP triggered", "RGTP+")

RGTP_KEEPS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
VARIANT_KEEPS = (0.05, 0.1, 0.2, 0.3, 0.5)
SUBSET_KEEPS = (0.15, 0.2, 0.3, 0.4, 0.5)
EVENTFUL_KEEPS = (0.1, 0.2, 0.3, 0.4, 0.5)
TOME_KEEPS = (0.1, 0.2, 0.35, 0.5, 0.7)
BOX_MARGINS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Variant:
    """One method at one setting. ``config`` is None for the dense model."""

    method: str
    setting: str
    config: RGTPConfig | EventfulConfig | ToMeConfig | None

    @property
    def name(self) -> str:
        return self.method if not self.setting else f"{self.method} {self.setting}"

    def describe(self) -> dict[str, Any]:
        cfg = None if self.config is None else {"type": type(self.config).__name__, **dataclasses.asdict(self.config)}
        return {"method": self.method, "setting": self.setting, "config": cfg}


def _keep(cfg: RGTPConfig, keep_ratio: float, **selection: Any) -> RGTPConfig:
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, keep_ratio=keep_ratio, **selection))


def _no_tracking(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, radius=0))


def _mean_fusion(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, head_fusion="mean"))


def _no_reset(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, reset_every=None))


def _twice_the_resets(cfg: RGTPConfig) -> RGTPConfig:
    """Half the reset interval (not a paper setting): how much of RGTP's loss comes from stale tokens."""
    every = cfg.schedule.reset_every
    assert every is not None, "the task's RGTP preset has reset steps"
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, reset_every=max(1, every // 2)))


def _fresh(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, pruned_output="fresh")


def _schedule(cfg: RGTPConfig, **changes: Any) -> RGTPConfig:
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, **changes))


def staggered(cfg: RGTPConfig, every: int) -> RGTPConfig:
    """No reset step after the first; every step refreshes the tokens processed longest ago (none older than
    ``every`` steps)."""
    return _schedule(cfg, refresh="staggered", reset_every=every)


def triggered(cfg: RGTPConfig, every: int | None = None) -> RGTPConfig:
    """Reset steps on scene cuts and when the embeddings have drifted by ``TRIGGER`` since the last one (and at
    most every ``every`` steps)."""
    return _schedule(cfg, trigger=TRIGGER, cut=CUT, reset_every=every)


def detection_plus(cfg: RGTPConfig) -> RGTPConfig:
    """RGTP+ for detection (:func:`rgtp.presets.rgtp_plus`), what we recommend."""
    return rgtp_plus(cfg, detection=True)


def _beyond_detection(base: RGTPConfig) -> list[Variant]:
    changes = (_fresh, lambda c: staggered(_fresh(c), 16), lambda c: triggered(_fresh(c)), detection_plus)
    out = []
    for name, change in zip(VARIANTS_DETECTION, changes, strict=True):
        out += [Variant(name, f"keep {r:g}", change(_keep(base, r))) for r in VARIANT_KEEPS]
    return out


def action_plus(cfg: RGTPConfig) -> RGTPConfig:
    """RGTP+ for classification (:func:`rgtp.presets.rgtp_plus`)."""
    return rgtp_plus(cfg, detection=False)


def _context(cfg: RGTPConfig) -> RGTPConfig:
    return dataclasses.replace(cfg, pruned_context="buffered")


def _beyond_action(base: RGTPConfig) -> list[Variant]:
    every = base.schedule.reset_every or 4
    changes = (
        _context,
        lambda c: staggered(_context(c), 2 * every),
        lambda c: triggered(_context(c), every=2 * every),
        action_plus,
    )
    out = []
    for name, change in zip(VARIANTS_ACTION, changes, strict=True):
        out += [Variant(name, f"keep {r:g}", change(_keep(base, r))) for r in VARIANT_KEEPS]
    return out


def _common_variants(base: RGTPConfig) -> list[Variant]:
    """Dense, RGTP, its ablations, the naive subsets, Eventful and ToMe (both families)."""
    out = [Variant("dense", "", None)]
    out += [Variant("RGTP", f"keep {r:g}", _keep(base, r)) for r in RGTP_KEEPS]
    # more frequent resets cost compute: from keep 0.1, so that one point falls inside the 60%-saving budget
    changes = (
        (_no_tracking, SUBSET_KEEPS),
        (_mean_fusion, SUBSET_KEEPS),
        (_no_reset, SUBSET_KEEPS),
        (_twice_the_resets, RGTP_KEEPS),
    )
    for name, (change, keeps) in zip(ABLATIONS, changes, strict=True):
        out += [Variant(name, f"keep {r:g}", change(_keep(base, r))) for r in keeps]
    for policy in ("random", "uniform"):
        out += [Variant(policy, f"keep {r:g}", _keep(base, r, policy=policy)) for r in SUBSET_KEEPS]
    out += [Variant("Eventful", f"keep {r:g}", EventfulConfig(keep_ratio=r)) for r in EVENTFUL_KEEPS]
    # ToMe at RGTP's budgets: merge early (a constant r per block would leave a handful of tokens), attention on the
    # merged tokens with proportional attention (ViTDet: relative positions at the merged tokens' centroids).
    tome = [ToMeConfig(keep_ratio=r, spread="front", global_attn="merged") for r in TOME_KEEPS]
    out += [Variant("ToMe", f"keep {c.keep_ratio:g}", c) for c in tome]
    return out


def detection_variants(base: RGTPConfig) -> list[Variant]:
    """Every detection variant; ``base`` is the task's RGTP preset (the paper's ViTDet settings on its grid)."""
    boxes = [
        Variant("MaskVD boxes", f"margin {m}", _keep(base, 1.0, policy="boxes", box_margin=m)) for m in BOX_MARGINS
    ]
    return _common_variants(base) + boxes + _beyond_detection(base)


def action_variants(base: RGTPConfig) -> list[Variant]:
    """Every action-recognition variant; ``base`` is the task's RGTP preset (the paper's ViViT settings)."""
    return _common_variants(base) + _beyond_action(base)


def select_methods(variants: Sequence[Variant], methods: Sequence[str] | None) -> list[Variant]:
    """The variants of the named methods (case-insensitive; None: all but the ablations; ``all``: every one).
    Dense is always kept (the reference)."""
    wanted = {m.strip().lower() for m in methods or () if m.strip()}
    if not wanted:
        return [v for v in variants if v.method not in ABLATIONS]
    if "all" in wanted:
        return list(variants)
    known = {v.method.lower() for v in variants}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(known)}")
    return [v for v in variants if v.method == "dense" or v.method.lower() in wanted]


def build_variant(variant: Variant, model: ViTDet | ViViT) -> Any:
    """The runner of a variant on the task's model, built through the method registry (ViTDet: with its detector)."""
    head = model.detect if isinstance(model, ViTDet) and model.head is not None else None
    return make_runner(model, variant.config, head)
