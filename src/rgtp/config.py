"""Configuration: frozen dataclasses for the models and for RGTP, with validation, overrides and (de)serialisation.

Model configs hold architecture only; :class:`RGTPConfig` holds everything about the method. A :class:`Preset`
pairs them (see :mod:`rgtp.presets`). Every config round-trips through plain dicts (``to_dict`` / ``from_dict``),
rejects unknown keys, and validates its values in ``__post_init__``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "PRECISIONS",
    "ConfigError",
    "DetectorConfig",
    "EventfulConfig",
    "ExecutionConfig",
    "Preset",
    "RGTPConfig",
    "RolloutConfig",
    "ScheduleConfig",
    "SelectionConfig",
    "ToMeConfig",
    "TrackingConfig",
    "TrainPrecision",
    "ViTDetConfig",
    "ViViTConfig",
    "changed",
    "check_literals",
    "from_dict",
    "load_config",
    "override",
    "pick",
    "save_config",
    "to_dict",
]


#: Training precisions (``TrainConfig.precision``, ``DetTrainConfig.precision``): ``fp32``, or ``bf16`` mixed
#: precision (forward pass and loss under :func:`torch.autocast` with bfloat16; weights, gradients and optimiser
#: state stay float32). bf16 halves a CPU training step where the CPU has bfloat16 instructions (AVX512-BF16, AMX)
#: and slows it down where it has not.
TrainPrecision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(TrainPrecision)


class ConfigError(ValueError):
    """An invalid configuration value, an unknown key or an unknown preset."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    _check(value in allowed, f"{name} must be one of {allowed}, got {value!r}")


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each ``Literal`` field of a config dataclass, read from its type hints."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


def check_literals(config: Any) -> None:
    """Raise :class:`ConfigError` for any ``Literal`` field of ``config`` holding a value its type does not allow:
    the one check of every option list (the type is where the allowed values are declared)."""
    for name, allowed in _literal_fields(type(config)).items():
        _one_of(name, getattr(config, name), allowed)


def pick(table: dict[str, Any], name: str, what: str) -> Any:
    """``table[name]``, or a one-line error naming the option and its allowed values (dispatch on an option)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; expected one of {tuple(table)}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class DetectorConfig:
    """The Faster R-CNN head of ViTDet-VID on the simple feature pyramid (method §1.1; detectron2 conventions).

    Defaults are the paper's model: RPN over p2..p6 and a 4-conv + 1-fc box head on p2..p5, 30 ImageNet VID classes.
    """

    num_classes: int = 30
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level p2..p6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    rpn_convs: int = 2  # 3x3 convs in the RPN head (ViTDet: 2)
    pre_nms_topk: int = 1000  # RPN proposals per level before NMS (test)
    post_nms_topk: int = 300  # RPN proposals per image after NMS (test)
    rpn_nms: float = 0.7
    box_convs: int = 4
    box_conv_dim: int = 256
    box_fc_dim: int = 1024
    pooler_resolution: int = 7
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # ROI box coder (x, y, w, h)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5  # per class
    max_detections: int = 100

    def __post_init__(self) -> None:
        check_literals(self)
        _check(self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}")
        _check(len(self.anchor_sizes) == 5, f"anchor_sizes needs one size per level p2..p6, got {self.anchor_sizes}")
        _check(
            all(s > 0 for s in self.anchor_sizes) and all(a > 0 for a in self.aspect_ratios),
            "anchor sizes and aspect ratios must be positive",
        )
        _check(self.rpn_convs >= 1 and self.box_convs >= 0, "rpn_convs must be >= 1 and box_convs >= 0")
        _check(self.post_nms_topk > 0 and self.pre_nms_topk > 0, "pre/post NMS top-k must be positive")
        for name in ("rpn_nms", "nms_thresh", "score_thresh"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value}")
        _check(self.max_detections >= 1, f"max_detections must be >= 1, got {self.max_detections}")


@dataclass(frozen=True)
class ViTDetConfig:
    """ViTDet backbone + simple feature pyramid (method §1.1). Defaults: ViTDet-B at 1024."""

    img_size: int = 1024  # side of the square (padded) input
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14  # windowed blocks use window_size² tokens per window
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)  # every other block is windowed
    pos_embed_grid: int = 14  # side of the stored absolute position table (pre-training at 224)
    rel_pos_grid: int = 64  # side the global blocks' relative-position tables are stored for (1024 / 16)
    rel_pos_resize: Literal["table2d", "linear1d"] = "table2d"  # table2d: the reference; linear1d: detectron2
    pyramid_dim: int = 256
    head: DetectorConfig | None = field(default_factory=DetectorConfig)  # None: backbone + pyramid only

    def __post_init__(self) -> None:
        check_literals(self)
        _check(
            self.img_size > 0 and self.img_size % self.patch_size == 0,
            f"img_size {self.img_size} must be a positive multiple of patch_size {self.patch_size}",
        )
        _check(self.embed_dim % self.num_heads == 0, f"embed_dim {self.embed_dim} not divisible by num_heads")
        _check(self.depth >= 1 and self.window_size >= 1, "depth and window_size must be >= 1")
        _check(
            all(0 <= b < self.depth for b in self.global_blocks),
            f"global_blocks {self.global_blocks} must lie in [0, {self.depth})",
        )

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ViViTConfig:
    """ViViT factorised encoder (method §1.2). Defaults: ViViT-B/16x2 for Kinetics-400."""

    img_size: int = 224
    num_frames: int = 32
    tubelet: tuple[int, int, int] = (2, 16, 16)  # (frames, height, width) per token
    embed_dim: int = 768
    depth: int = 12  # spatial blocks
    temporal_depth: int = 4
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 400  # the main head (Kinetics classes, EPIC verbs)
    num_nouns: int = 0  # EPIC-KITCHENS: a second head for nouns (0: none; the official EPIC checkpoint has 300)
    dropout: float = 0.0  # before the classifier (training only)

    def __post_init__(self) -> None:
        check_literals(self)
        _check(
            self.img_size % self.tubelet[1] == 0 and self.img_size % self.tubelet[2] == 0,
            f"img_size {self.img_size} must be a multiple of the tubelet {self.tubelet}",
        )
        _check(self.num_frames % self.tubelet[0] == 0, f"num_frames {self.num_frames} not a multiple of tubelet")
        _check(self.embed_dim % self.num_heads == 0, f"embed_dim {self.embed_dim} not divisible by num_heads")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.num_classes >= 1 and self.num_nouns >= 0, "num_classes must be >= 1 and num_nouns >= 0")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size // self.tubelet[1], self.img_size // self.tubelet[2]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_steps(self) -> int:
        return self.num_frames // self.tubelet[0]


# ---------------------------------------------------------------------------------------------------------------------
# RGTP


@dataclass(frozen=True)
class SelectionConfig:
    """Which tokens ROLLOUT steps keep (method §7)."""

    keep_ratio: float = 0.29  # rho: K_fg = round(rho * N) top tokens of the warped heatmap
    fg_ratio: float = 1.0  # keep every round(1 / fg_ratio)-th of the K_fg top tokens, by rank
    bg_ratio: float = 0.0  # also keep every round(1 / bg_ratio)-th of the other tokens, in raster order (0: none)
    curve_order: bool = False  # count both strides along a Gilbert curve instead
    # What chooses the tokens of ROLLOUT steps. rollout: the method. The others are the benchmark's baselines and
    # ablations, run through the same pipeline (buffers, schedule): uniform / random subsets of the same size, or
    # (ViTDet) the tokens inside the previous frame's boxes grown by box_margin tokens (MaskVD-style; no rollout).
    policy: str = "rollout"  # a name in rgtp.runtime.selectors.SELECTORS (register_selector adds one)
    # How tokens of equal score are ranked: stable (by index; ours, deterministic on every device) or reference
    # (torch.argsort's default sort, as the reference code: reproduces its kept sets exactly on CPU).
    tie_break: Literal["stable", "reference"] = "stable"
    box_margin: int = 1
    seed: int = 0  # policy random: the draws of step t are seeded by (seed, t)
    # Beyond the paper (opt-in): rank tokens by (1 - w) * warped heatmap + w * their share of the change of the
    # patch embeddings since each token was last processed (a staleness prior; 0: the paper's ranking).
    change_weight: float = 0.0

    def __post_init__(self) -> None:
        check_literals(self)
        from rgtp.runtime.selectors import SELECTORS  # the registry: a registered selector is a valid policy

        _one_of("policy", self.policy, tuple(SELECTORS))
        _check(self.box_margin >= 0, f"box_margin must be >= 0, got {self.box_margin}")
        _check(0.0 < self.keep_ratio <= 1.0, f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        _check(0.0 < self.fg_ratio <= 1.0, f"fg_ratio must be in (0, 1], got {self.fg_ratio}")
        _check(0.0 <= self.bg_ratio <= 1.0, f"bg_ratio must be in [0, 1], got {self.bg_ratio}")
        _check(0.0 <= self.change_weight <= 1.0, f"change_weight must be in [0, 1], got {self.change_weight}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Which steps are reset steps (method §7.6)."""

    reset_every: int | None = 8  # steps t > 0 with t % reset_every == 0 are reset steps (None: never)
    reset_mode: Literal["full", "grid"] = "full"  # full: process every token; grid: keep a fixed pattern
    grid_pattern: Literal["1in2", "1in4", "1in9"] = "1in4"  # the pattern of grid reset steps
    # Beyond the paper (opt-in; the defaults are the paper's schedule):
    # refresh: how tokens are refreshed between pruned steps. reset: the reset steps above (the paper). staggered:
    # no reset step after step 0; every pruned step also keeps the ceil(N / reset_every) tokens processed longest
    # ago, so no token's output is more than reset_every steps old and every step costs the same.
    refresh: Literal["reset", "staggered"] = "reset"
    # trigger: a reset step as soon as the patch embeddings have changed by this much since the last reset step
    # (the sum over steps of the mean relative change of each token's embedding, see
    # rgtp.pruning.schedule.embedding_change): scene cuts and fast camera motion get a reset at once, a static
    # camera none. reset_every stays the longest interval between resets (None: triggers only). None: no trigger.
    trigger: float | None = None
    # cut: a reset step when this step's change alone reaches it (a scene cut: about 1 and more; camera motion stays
    # far below). None: no cut detection.
    cut: float | None = None

    def __post_init__(self) -> None:
        check_literals(self)
        _check(self.reset_every is None or self.reset_every >= 1, "reset_every must be >= 1 or None")
        _check(
            self.refresh != "staggered" or self.reset_every is not None,
            "refresh 'staggered' needs reset_every (the longest a token may go unprocessed)",
        )
        _check(self.trigger is None or self.trigger > 0, f"trigger must be > 0 or None, got {self.trigger}")
        _check(self.cut is None or self.cut > 0, f"cut must be > 0 or None, got {self.cut}")

    @property
    def adaptive(self) -> bool:
        """Whether the schedule goes beyond the paper's fixed reset steps (staggered refresh, a trigger, cuts)."""
        return self.refresh != "reset" or self.trigger is not None or self.cut is not None


@dataclass(frozen=True)
class RolloutConfig:
    """How the importance heatmap is computed (method §5)."""

    head_fusion: Literal["rms", "mean"] = "rms"
    pool: int = 1  # pool the rollout over pool x pool token cells (2 at 672)
    form: Literal["forward", "backward"] = "backward"  # matrix products, or vector-matrix products (same result)
    score_thr: float = 0.1  # ViTDet: detections above this score define the output tokens (anchors)
    pruned_fill: Literal["none", "previous", "match"] = "previous"  # value of tokens pruned at this step

    def __post_init__(self) -> None:
        check_literals(self)
        _check(self.pool >= 1, f"pool must be >= 1, got {self.pool}")
        _check(0.0 <= self.score_thr < 1.0, f"score_thr must be in [0, 1), got {self.score_thr}")


@dataclass(frozen=True)
class TrackingConfig:
    """The local offset search that carries the heatmap to the next frame (method §6)."""

    radius: int = 1  # search offsets in [-radius, radius]²; 0 disables tracking
    rel_threshold_pct: float | None = None  # move only if the best score beats the zero offset by this percentage
    # Out-of-grid candidates: reference (the reference's -100 sentinel for zero scores; an out-of-grid winner copies
    # cell 0) or exclude (they never win). See rgtp.pruning.tracking.OUT_OF_GRID.
    out_of_grid: Literal["reference", "exclude"] = "reference"

    def __post_init__(self) -> None:
        check_literals(self)
        _check(self.radius >= 0, f"radius must be >= 0, got {self.radius}")


@dataclass(frozen=True)
class RGTPConfig:
    """Rollout-Guided Token Pruning: pruning after block 0's attention, guided by the previous step's rollout."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # What a pruned token's buffered outputs hold (beyond the paper, opt-in). stale: its whole output when it was
    # last processed (the paper). fresh: this step's residual stream after block 0's attention (which every token
    # passes) plus the change the later blocks made to it when it was last processed.
    pruned_output: Literal["stale", "fresh"] = "stale"
    # What later blocks of class-token models see of the pruned tokens (beyond the paper, opt-in). drop: nothing,
    # they leave the step after block 0 (the paper). buffered: their keys and values from when they were last
    # processed, so the class token still attends to them (a (B, P + N, 3C) buffer per block).
    pruned_context: Literal["drop", "buffered"] = "drop"

    def __post_init__(self) -> None:
        check_literals(self)


@dataclass(frozen=True)
class ExecutionConfig:
    """How a runner executes its steps, not what it computes: the MAC counts do not change; in fp32 the kept sets and
    outputs are the exact path's up to rounding (fused attention sums in another order); under bf16 / fp16 importance
    scores that are near-tied can rank differently, so a kept set can differ where the exact path's choice was a tie.

    The defaults are the exact path the paper presets' golden outputs were recorded with. The GPU path is
    ``ExecutionConfig(attention="fused", precision="bf16", compile="graphs")``.

    Attributes:
        attention: ``explicit`` computes every attention as softmax(q kᵀ) v (models that ship fused, the adapters,
            stay fused); ``fused`` uses ``scaled_dot_product_attention`` wherever no probabilities are needed,
            relative positions entering as an additive bias. The rollout's rows are always explicit.
        precision: ``bf16`` / ``fp16`` run the model under ``torch.autocast``; the rollout, tracking and selection
            stay float32.
        compile: ``compile`` compiles the block stack after block 0 with ``torch.compile`` (one graph per step
            kind: static kept counts); ``graphs`` also captures it in CUDA graphs (``mode="reduce-overhead"``;
            plain compilation on a CPU).
    """

    attention: Literal["explicit", "fused"] = "explicit"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: Literal["none", "compile", "graphs"] = "none"

    def __post_init__(self) -> None:
        check_literals(self)

    @property
    def exact(self) -> bool:
        """Whether this is the default path (the golden outputs' arithmetic)."""
        return self == ExecutionConfig()


@dataclass(frozen=True)
class EventfulConfig:
    """The Eventful Transformers baseline (method §9): token-wise gates that recompute the k most changed tokens.

    Exactly one of ``k`` (tokens per gate) and ``keep_ratio`` (k = round(keep_ratio * N) for N patch tokens) is
    given. A ViViT class token is always recomputed on top of the k patch tokens. ``global_attention`` is how global
    blocks update attention from the accumulated qkv: ``dense`` recomputes it in full, ``qk`` updates the rows and
    columns of QKᵀ of the updated tokens, ``qk_av`` (the reference's ``EventfulBlock``) also updates A·V
    incrementally (exact for the updated key columns, stale elsewhere). Windowed blocks always recompute attention.
    """

    k: int | None = None
    keep_ratio: float | None = None
    refresh_every: int | None = None  # steps t > 0 with t % refresh_every == 0 run dense (None: never, the reference)
    global_attention: Literal["dense", "qk", "qk_av"] = "qk_av"

    def __post_init__(self) -> None:
        check_literals(self)
        _check((self.k is None) != (self.keep_ratio is None), "give exactly one of k and keep_ratio")
        _check(self.k is None or self.k >= 1, f"k must be >= 1, got {self.k}")
        ratio = self.keep_ratio
        _check(ratio is None or 0.0 < ratio <= 1.0, f"keep_ratio must be in (0, 1], got {ratio}")
        _check(self.refresh_every is None or self.refresh_every >= 1, "refresh_every must be >= 1 or None")

    def tokens(self, num_tokens: int) -> int:
        """Tokens each gate recomputes among ``num_tokens`` (patch tokens; raises if none or more than there are)."""
        k = self.k if self.k is not None else round(self.keep_ratio * num_tokens)  # type: ignore[operator]
        _check(1 <= k <= num_tokens, f"eventful gates must select 1..{num_tokens} tokens, got k={k}")
        return k


@dataclass(frozen=True)
class ToMeConfig:
    """Token merging (ToMe, Bolya et al. 2023) as a per-frame baseline: no temporal state, training-free.

    In every block, after attention, ``r`` tokens are merged into their most similar partners (bipartite soft
    matching on the head-averaged keys, size-weighted averages); the MLP runs on the merged set. Exactly one of
    ``r`` (tokens merged per block, capped at half the mergeable tokens as in ToMe) and ``keep_ratio`` (the share of
    patch tokens left after the last block) is given. ``spread`` says how keep_ratio's merges are spread over the
    blocks: ``even`` (ToMe's constant r) or ``front`` (as many as allowed, half the tokens, in the earliest blocks:
    the fewest MACs for a given final count, closest to RGTP's pruning after block 0).
    ``prop_attn`` adds log(size) to the attention logits of merged keys wherever attention runs on merged tokens.
    ``global_attn`` (ViTDet only): ``unmerge`` runs global attention on the full grid (the merged qkv copied back to
    every position it covers, exact relative positions; proportional by construction), ``merged`` runs it on the
    merged tokens with relative positions at each merged token's centroid. Windowed blocks always unmerge.
    """

    r: int | None = None
    keep_ratio: float | None = None
    spread: Literal["even", "front"] = "even"
    prop_attn: bool = True
    global_attn: Literal["unmerge", "merged"] = "unmerge"

    def __post_init__(self) -> None:
        check_literals(self)
        _check((self.r is None) != (self.keep_ratio is None), "give exactly one of r and keep_ratio")
        _check(self.r is None or self.r >= 0, f"r must be >= 0, got {self.r}")
        ratio = self.keep_ratio
        _check(ratio is None or 0.0 < ratio <= 1.0, f"keep_ratio must be in (0, 1], got {ratio}")
        _check(self.spread == "even" or self.keep_ratio is not None, "spread 'front' needs keep_ratio (not r)")


ModelConfig = Union[ViTDetConfig, ViViTConfig]  # noqa: UP007


@dataclass(frozen=True)
class Preset:
    """A named, complete experiment: the model, the method and the data protocol.

    The method is the one whose config section is set (``rgtp``, ``eventful`` or ``tome``; none: the dense model);
    :attr:`method` names it and :attr:`method_config` is its config.
    """

    name: str
    model: ModelConfig
    rgtp: RGTPConfig | None = None
    temporal_stride: int = 1  # ViViT: frames between sampled frames
    views: tuple[int, int] = (3, 4)  # ViViT: (spatial, temporal) views per clip
    description: str = ""
    eventful: EventfulConfig | None = None
    tome: ToMeConfig | None = None

    def __post_init__(self) -> None:
        check_literals(self)
        _check(self.temporal_stride >= 1, "temporal_stride must be >= 1")
        given = [m for m in METHOD_SECTIONS if getattr(self, m) is not None]
        if len(given) > 1:
            raise ConfigError(
                f"a preset runs one method, but {' and '.join(given)} are set (unset one, e.g. --set {given[0]}=null)"
            )
        if self.rgtp is not None and isinstance(self.model, ViTDetConfig) and self.rgtp.rollout.pool > 1:
            g = self.model.grid[0]
            _check(g % self.rgtp.rollout.pool == 0, f"rollout pool {self.rgtp.rollout.pool} must divide grid {g}")

    @property
    def family(self) -> str:
        return "vitdet" if isinstance(self.model, ViTDetConfig) else "vivit"

    @property
    def method(self) -> str:
        """The method's name: ``dense``, ``rgtp``, ``eventful`` or ``tome``."""
        return next((m for m in METHOD_SECTIONS if getattr(self, m) is not None), "dense")

    @property
    def method_config(self) -> RGTPConfig | EventfulConfig | ToMeConfig | None:
        """The method's config (None for the dense model)."""
        return getattr(self, self.method) if self.method != "dense" else None


#: The sections of a preset that hold a method's config, by method name.
METHOD_SECTIONS = ("rgtp", "eventful", "tome")


# ---------------------------------------------------------------------------------------------------------------------
# (De)serialisation and overrides

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain, JSON/YAML-friendly data (tuples become lists; a Preset records its model family)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    if isinstance(cfg, Preset):
        out["family"] = cfg.family
        out["method"] = cfg.method
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert plain data ``value`` to type ``tp`` (dataclasses, optionals, tuples, literals, scalars)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            return _coerce(real[0], value, where)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except (ConfigError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {options}: {'; '.join(errors)}")
    if origin is Literal:
        _one_of(where, value, typing.get_args(tp))
        return value
    if origin is tuple:
        _check(isinstance(value, list | tuple), f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0]
        return tuple(
            _coerce(item_tp if len(args) == 2 and args[1] is Ellipsis else args[i], v, where)
            for i, v in enumerate(value)
        )
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")
    if tp in _SCALARS:
        return _coerce_scalar(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")


_SCALARS = {float: "a number", int: "an integer", bool: "true/false", str: "a string"}


def _coerce_scalar(tp: type, value: Any, where: str) -> Any:
    """Check a scalar: ints are accepted for floats; bools are never numbers."""
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    _check(ok, f"{where}: expected {_SCALARS[tp]}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build config class ``cls`` from plain data; unknown keys and invalid values raise :class:`ConfigError`."""
    data = dict(data)
    if cls is Preset:
        data.pop("method", None)  # derived from the method section that is set (written for readers)
        family = data.pop("family", None)
        model_cls = {"vitdet": ViTDetConfig, "vivit": ViViTConfig}.get(family)  # type: ignore[arg-type]
        _check(model_cls is not None, f"{where or 'preset'}: 'family' must be 'vitdet' or 'vivit', got {family!r}")
        data["model"] = from_dict(model_cls, data.get("model", {}), f"{where}model.")  # type: ignore[arg-type]
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    _check(not unknown, f"unknown key(s) {[where + k for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        if cls is Preset and k == "model":
            kwargs[k] = v
        else:
            kwargs[k] = _coerce(hints[k], v, f"{where}{k}")
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{where.rstrip('.')}: {exc}" if where else str(exc)) from exc


def parse_value(text: str) -> Any:
    """Parse a command-line value: numbers, true/false, null/none, lists; anything else is a string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(cfg: T, *assignments: str) -> T:
    """Apply ``dotted.key=value`` overrides, e.g. ``rgtp.selection.keep_ratio=0.2``; returns a new config.

    The assignments are applied in order to the config's data and the result is validated once, so their order does
    not matter for validity (``model.embed_dim=64 model.num_heads=2``). An unset optional section is created on first
    use: ``eventful.keep_ratio=0.3`` on a dense preset gives it the Eventful method (its other settings at their
    defaults); ``rgtp=null`` unsets a section.
    """
    data = to_dict(cfg)
    for assignment in assignments:
        _assign(data, cfg, assignment)
    return from_dict(type(cfg), data)


def _assign(data: dict[str, Any], cfg: Any, assignment: str) -> None:
    """Set one ``dotted.key=value`` in ``data`` (the plain data of ``cfg``), checking the keys against the types."""
    key, sep, raw = assignment.partition("=")
    _check(bool(sep) and bool(key), f"override {assignment!r} is not of the form key=value")
    node, obj = data, cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        value = getattr(obj, part, None) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else None
        cls = obj if isinstance(obj, type) else type(obj)
        section = type(value) if dataclasses.is_dataclass(value) else _section_type(cls, part)
        _check(section is not None, f"override {key!r}: {part!r} is not a config section")
        if node.get(part) is None:
            node[part] = _defaults(section)  # type: ignore[arg-type]
        node, obj = node[part], value if value is not None else section
    known = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set(node)
    _check(parts[-1] in known, f"override {key!r}: unknown key {parts[-1]!r}; known: {sorted(known)}")
    node[parts[-1]] = parse_value(raw)


def _section_type(cls: type, name: str) -> type | None:
    """The dataclass type of field ``name`` of ``cls`` (optional or not), or None if it is not a section."""
    hint = _hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    found = [o for o in options if dataclasses.is_dataclass(o)]
    return found[0] if len(found) == 1 else None


def _defaults(section: type) -> dict[str, Any]:
    """A section's default values as data, or nothing when it has required settings (Eventful: k or keep_ratio)."""
    try:
        return to_dict(section())
    except (ConfigError, TypeError):
        return {}


def changed(original: Preset, preset: Preset, assignments: list[str]) -> Preset:
    """A preset changed by overrides gets its own identity: ``<name>+<8 hex digits of its config>``, so that it never
    passes for the original (the paper's figures are looked up by name) and its default output files do not
    overwrite the original's. Unchanged (the overrides set what it had): the original."""
    if to_dict(preset) == to_dict(original):
        return original
    data = to_dict(dataclasses.replace(preset, name="", description=""))
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    what = f"{original.description} (changed: {', '.join(assignments)})"
    return dataclasses.replace(preset, name=f"{original.name}+{digest}", description=what)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``, needs PyYAML) or JSON (anything else)."""
    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(_yaml().safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2) + "\n")


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config written by :func:`save_config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    yaml = path.suffix in (".yaml", ".yml")
    try:
        data = _yaml().safe_load(text) if yaml else json.loads(text)
    except (ValueError, _yaml().YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {'YAML' if yaml else 'JSON'} ({first})") from None
    _check(isinstance(data, dict), f"{path}: expected a mapping at the top level")
    return from_dict(cls, data)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("YAML configs need PyYAML: pip install 'rgtp[yaml]'") from exc
    return yaml
