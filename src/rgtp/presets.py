"""Named presets: every row of the paper's result tables (method §11), as builder functions in a registry.

``get_preset(name)`` returns a frozen :class:`~rgtp.config.Preset`; ``PAPER[name]`` holds what the paper (and the
reference code) report for that row, so tools can print ours next to theirs. The small ``shapes_*``, ``pedestrians_*``
and ``motions_*`` presets are the offline benchmark's models (:mod:`rgtp.lab.bench`), trained here; they have no paper
row. They are configs only: this module does not import the lab (:mod:`rgtp.lab`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from rgtp.config import (
    ConfigError,
    DetectorConfig,
    EventfulConfig,
    Preset,
    RGTPConfig,
    RolloutConfig,
    ScheduleConfig,
    SelectionConfig,
    ToMeConfig,
    TrackingConfig,
    ViTDetConfig,
    ViViTConfig,
)

__all__ = [
    "CHANGE_WEIGHT",
    "CUT",
    "PAPER",
    "PRESETS",
    "TRIGGER",
    "Reported",
    "get_preset",
    "preset_names",
    "register",
    "rgtp_plus",
]

PRESETS: dict[str, Callable[[], Preset]] = {}


@dataclass(frozen=True)
class Reported:
    """Figures reported by the paper / verified on the reference code for one preset (method §11, §14)."""

    accuracy: float  # mAP50 (VID) or top-1 (K400, EPIC verbs), in %
    full_gmacs: float | None = None  # ViTDet: backbone + RGTP GMACs of a FULL frame
    pruned_gmacs: float | None = None  # ViTDet: of a PRUNED frame (None for baselines)
    avg_gmacs: float | None = None  # ViTDet: table entry (average over VID val, FULL fraction 0.1266)
    clip_tmacs: float | None = None  # ViViT: TMACs per 12-view clip
    kept: tuple[int, ...] = ()  # ViTDet: (K,); ViViT: (rollout steps, reset steps)


PAPER: dict[str, Reported] = {}


def register(name: str, builder: Callable[[], Preset], reported: Reported | None = None) -> None:
    """Add a preset; ``reported`` holds the paper's figures for rows of its tables (None for our own presets)."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} registered twice")
    PRESETS[name] = builder
    if reported is not None:
        PAPER[name] = reported


# ---------------------------------------------------------------------------------------------------------------------
# RGTP+: our recommended settings beyond the paper (see docs/own-model.md, "Which preset when", and rgtp bench)

TRIGGER = 1.0  # accumulated embedding drift that triggers a reset: 7-20 frames of a moving camera
CUT = 0.5  # one step's embedding change that is a scene cut (cuts measure 1-2; camera motion 0.05-0.2 per frame)
CHANGE_WEIGHT = {"vitdet": 0.3, "vivit": 0.6}  # the change prior's share of the ranking, by family (rgtp bench)


def rgtp_plus(cfg: RGTPConfig, detection: bool) -> RGTPConfig:
    """RGTP+ on top of a paper config (its keep ratio, rollout and tracking kept).

    Detection (grid models with a head): fresh outputs for pruned tokens; the previous frame's boxes and each
    token's change since it was last processed as priors of the ranking; staggered refresh (no token older than 32
    frames) instead of full frames; a full frame on scene cuts. Classification (class-token models): pruned tokens
    stay in later blocks' attention through buffered keys and values; the change prior; no reset after the first
    step (the change prior refreshes what changed; on 8-step clips the paper's periodic resets cost more than they
    return). No cut detection either: ``CUT`` is calibrated on ViTDet's patch embeddings, and the small ViViT's
    2-frame steps at 80 px change by more than that on every step of real footage (``rgtp bench agreement``).
    """
    sel = cfg.selection
    if detection:
        weight = CHANGE_WEIGHT["vitdet"]
        selection = dataclasses.replace(sel, policy="rollout_boxes", box_margin=1, change_weight=weight)
        schedule = dataclasses.replace(cfg.schedule, refresh="staggered", reset_every=32, cut=CUT)
        return dataclasses.replace(cfg, selection=selection, schedule=schedule, pruned_output="fresh")
    selection = dataclasses.replace(sel, change_weight=CHANGE_WEIGHT["vivit"])
    schedule = dataclasses.replace(cfg.schedule, reset_every=None)
    return dataclasses.replace(cfg, selection=selection, schedule=schedule, pruned_context="buffered")


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises :class:`~rgtp.config.ConfigError` with suggestions."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known presets: {', '.join(PRESETS)}"
        raise ConfigError(f"unknown preset {name!r}{hint}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------------------------------
# ViTDet-B on ImageNet VID (method §11.1)


def _vitdet_rgtp(size: int, keep_ratio: float) -> RGTPConfig:
    pooled = size == 672  # 672: pooled forward rollout; 1024: backward rollout, pruned tokens keep H_{t-1}
    return RGTPConfig(
        selection=SelectionConfig(keep_ratio=keep_ratio),
        schedule=ScheduleConfig(reset_every=8, reset_mode="full", grid_pattern="1in4"),
        rollout=RolloutConfig(
            head_fusion="rms",
            pool=2 if pooled else 1,
            form="forward" if pooled else "backward",
            score_thr=0.1,
            pruned_fill="none" if pooled else "previous",
        ),
        tracking=TrackingConfig(radius=1),
    )


def _vitdet(name: str, size: int, keep_ratio: float | None) -> Preset:
    rgtp = None if keep_ratio is None else _vitdet_rgtp(size, keep_ratio)
    what = "dense baseline" if rgtp is None else f"RGTP keep_ratio={keep_ratio}, full frame every 8"
    return Preset(name, ViTDetConfig(img_size=size), rgtp, description=f"ViTDet-B ImageNet VID {size}: {what}")


_VITDET_ROWS = {
    # name: (size, keep ratio, kept K, accuracy, full gmacs, pruned gmacs, table gmacs)
    "vitdet_vid_672_base": (672, None, 1764, 82.28, 174.50, None, 174.5),
    "vitdet_vid_672_keep768": (672, 0.435, 767, 82.37, 174.84, 81.62, 93.4),
    "vitdet_vid_672_keep512": (672, 0.29, 512, 82.39, 174.84, 57.78, 72.6),
    "vitdet_vid_672_keep384": (672, 0.2177, 384, 82.38, 174.84, 45.81, 62.1),
    "vitdet_vid_672_keep196": (672, 0.111, 196, 82.06, 174.84, 28.23, 46.8),
    "vitdet_vid_672_keep64": (672, 0.0363, 64, 80.53, 174.84, 15.88, 36.0),
    "vitdet_vid_1024_base": (1024, None, 4096, 82.93, 467.44, None, 467.4),
    "vitdet_vid_1024_keep2200": (1024, 0.537, 2200, 83.08, 467.51, 263.07, 288.9),
    "vitdet_vid_1024_keep1400": (1024, 0.342, 1401, 83.04, 467.51, 176.91, 213.7),
    "vitdet_vid_1024_keep750": (1024, 0.183, 750, 83.04, 467.51, 106.71, 152.4),
    "vitdet_vid_1024_keep400": (1024, 0.097, 397, 82.68, 467.51, 68.64, 119.1),
    "vitdet_vid_1024_keep75": (1024, 0.0183, 75, 80.03, 467.51, 33.92, 88.8),
}
for _name, (_size, _rho, _k, _acc, _full, _pruned, _avg) in _VITDET_ROWS.items():
    register(
        _name,
        partial(_vitdet, _name, _size, _rho),
        Reported(_acc, full_gmacs=_full, pruned_gmacs=_pruned, avg_gmacs=_avg, kept=(_k,)),
    )


# ---------------------------------------------------------------------------------------------------------------------
# ViViT-B factorised encoder on Kinetics-400 and EPIC-KITCHENS-100 verbs (method §11.2, §11.3)


def _vivit_rgtp(keep_ratio: float, fg_ratio: float, bg_ratio: float, reset_every: int, pattern: str) -> RGTPConfig:
    return RGTPConfig(
        selection=SelectionConfig(keep_ratio=keep_ratio, fg_ratio=fg_ratio, bg_ratio=bg_ratio),
        schedule=ScheduleConfig(reset_every=reset_every, reset_mode="grid", grid_pattern=pattern),  # type: ignore[arg-type]
        rollout=RolloutConfig(head_fusion="rms", pool=1, form="forward", pruned_fill="match"),
        tracking=TrackingConfig(radius=1),
    )


def _vivit(name: str, dataset: str, rgtp_args: tuple[float, float, float, str] | None) -> Preset:
    if dataset == "k400":
        model, stride, reset, label = ViViTConfig(img_size=224, num_classes=400), 2, 8, "Kinetics-400"
    else:
        model, stride, reset, label = ViViTConfig(img_size=320, num_classes=97), 1, 4, "EPIC-KITCHENS-100 verbs"
    rgtp = None
    what = "dense baseline"
    if rgtp_args is not None:
        rho, r_f, r_b, pattern = rgtp_args
        rgtp = _vivit_rgtp(rho, r_f, r_b, reset, pattern)
        what = f"RGTP keep_ratio={rho} fg_ratio={r_f} bg_ratio={r_b}, {pattern} grid every {reset} steps"
    return Preset(name, model, rgtp, temporal_stride=stride, description=f"ViViT-B FE {label}: {what}")


_VIVIT_ROWS = {
    # name: (dataset, (rho, r_f, r_b, pattern) or None, kept (rollout, reset), accuracy, TMACs per clip)
    "vivit_k400_base": ("k400", None, (196, 196), 79.06, 3.3596),
    "vivit_k400_keep049": ("k400", (0.49, 1.0, 0.0, "1in2"), (96, 98), 78.00, 1.7888),
    "vivit_k400_keep0215": ("k400", (0.215, 1.0, 0.0, "1in2"), (42, 98), 75.93, 1.0157),
    "vivit_k400_keep0066": ("k400", (0.066, 1.0, 0.0, "1in2"), (13, 98), 75.50, 0.6080),
    "vivit_epic_base": ("epic", None, (400, 400), 67.14, 7.1220),
    "vivit_epic_fg300_bg025": ("epic", (0.75, 1.0, 0.25, "1in2"), (325, 200), 68.13, 5.5077),
    "vivit_epic_fg180_bg016": ("epic", (0.45, 1.0, 0.16666, "1in2"), (217, 200), 67.70, 4.0407),
    "vivit_epic_fg120_bg005": ("epic", (0.30, 1.0, 0.05, "1in2"), (134, 200), 67.40, 2.9688),
    "vivit_epic_fg160s05_bg009": ("epic", (0.40, 0.5, 0.09, "1in4"), (102, 100), 66.35, 2.2483),
    "vivit_epic_fg96s05_bg003": ("epic", (0.24, 0.5, 0.03, "1in4"), (58, 100), 64.27, 1.7056),
    "vivit_epic_fg28s05_bg00": ("epic", (0.14, 0.5, 0.0, "1in4"), (28, 100), 63.79, 1.3416),
}
for _name, (_ds, _args, _kept, _acc, _tmacs) in _VIVIT_ROWS.items():
    register(_name, partial(_vivit, _name, _ds, _args), Reported(_acc, clip_tmacs=_tmacs, kept=_kept))


# ---------------------------------------------------------------------------------------------------------------------
# Small models of the offline benchmark (rgtp.lab.bench): trained on CPU here, with the paper's settings scaled to the
# grid


def small_detector(num_classes: int, img_size: int = 256) -> ViTDetConfig:
    """A ViTDet-style detector for small square inputs (256: 16x16 tokens; 384: 24x24): 6 blocks of width 128
    (windows of 8x8, global blocks 2 and 5), the simple feature pyramid and a Faster R-CNN head sized down (anchors
    16..256, fewer proposals)."""
    head = DetectorConfig(
        num_classes=num_classes,
        anchor_sizes=(16, 32, 64, 128, 256),
        pre_nms_topk=400,
        post_nms_topk=100,
        box_convs=2,
        box_conv_dim=64,
        box_fc_dim=256,
        max_detections=50,
    )
    return ViTDetConfig(
        img_size=img_size,
        embed_dim=128,
        depth=6,
        num_heads=4,
        window_size=8,
        global_blocks=(2, 5),
        pos_embed_grid=16,
        rel_pos_grid=img_size // 16,
        pyramid_dim=64,
        head=head,
    )


def small_vivit(num_classes: int) -> ViViTConfig:
    """A factorised ViViT small enough to train on CPU: 16-frame 80x80 clips, tubelets 2x8x8 (8 steps of 10x10
    tokens), 4 spatial blocks, 2 temporal blocks, width 64."""
    return ViViTConfig(
        img_size=80,
        num_frames=16,
        tubelet=(2, 8, 8),
        embed_dim=64,
        depth=4,
        temporal_depth=2,
        num_heads=4,
        num_classes=num_classes,
    )


SHAPES_NUM_CLASSES = 6  # len(rgtp.lab.data.shapes.SHAPES_CLASSES) (a test checks they agree)
MOTIONS_NUM_CLASSES = 10  # len(rgtp.lab.data.motions.MOTION_CLASSES)


def _small_det(name: str, task: str, keep_ratio: float | None) -> Preset:
    # vtest's pedestrians are small (about 80 of 576 px tall): that detector sees 384x384 inputs (24x24 tokens)
    model = small_detector(SHAPES_NUM_CLASSES, 256) if task == "shapes" else small_detector(1, 384)
    rgtp = None
    what = "dense"
    if keep_ratio is not None:
        rgtp = _vitdet_rgtp(1024, keep_ratio)  # backward rollout, no pooling at 16x16
        what = f"RGTP keep_ratio={keep_ratio}, full frame every 8"
    label = "generated shapes" if task == "shapes" else "vtest.avi pedestrians"
    return Preset(name, model, rgtp, description=f"small ViTDet, {label} (rgtp bench): {what}")


def _small_vivit(name: str, keep_ratio: float | None) -> Preset:
    rgtp = None
    what = "dense"
    if keep_ratio is not None:
        rgtp = _vivit_rgtp(keep_ratio, 1.0, 0.0, 4, "1in2")
        what = f"RGTP keep_ratio={keep_ratio}, 1in2 grid every 4 steps"
    model = small_vivit(MOTIONS_NUM_CLASSES)
    return Preset(name, model, rgtp, views=(1, 1), description=f"small ViViT, generated motions (rgtp bench): {what}")


register("shapes_det_base", partial(_small_det, "shapes_det_base", "shapes", None))
register("shapes_det_rgtp", partial(_small_det, "shapes_det_rgtp", "shapes", 0.3))
register("pedestrians_det_base", partial(_small_det, "pedestrians_det_base", "pedestrians", None))
register("pedestrians_det_rgtp", partial(_small_det, "pedestrians_det_rgtp", "pedestrians", 0.3))
register("motions_base", partial(_small_vivit, "motions_base", None))
register("motions_rgtp", partial(_small_vivit, "motions_rgtp", 0.3))


def _plus(name: str, paper: str, keep_ratio: float) -> Preset:
    """RGTP+ (:func:`rgtp_plus`) at ``keep_ratio`` on the model and rollout settings of the paper preset ``paper``."""
    preset = get_preset(paper)
    assert preset.rgtp is not None
    cfg = dataclasses.replace(preset.rgtp, selection=dataclasses.replace(preset.rgtp.selection, keep_ratio=keep_ratio))
    what = preset.description.rsplit(": ", 1)[0]
    return dataclasses.replace(
        preset,
        name=name,
        rgtp=rgtp_plus(cfg, detection=preset.family == "vitdet"),
        description=f"{what}: RGTP+ keep_ratio={keep_ratio} ({_PLUS_WHAT[preset.family]})",
    )


_PLUS_WHAT = {
    "vitdet": "fresh outputs, box and change priors, staggered refresh, full frames on scene cuts",
    "vivit": "buffered context of pruned tokens, change prior, no periodic reset",
}
#: RGTP+ presets: (paper preset, keep ratio). The benchmark models' ratios are the cheapest measured within 0.5 points
#: of dense in ``rgtp bench`` (docs/own-model.md, "Which preset when"), except the pedestrian detector's: 0.1 rather
#: than 0.05, as ``rgtp run`` applies it to any footage. ViTDet-B's is the paper's keep400 ratio.
PLUS_PRESETS = {
    "shapes_det_plus": ("shapes_det_rgtp", 0.2),
    "pedestrians_det_plus": ("pedestrians_det_rgtp", 0.1),
    "motions_plus": ("motions_rgtp", 0.1),
    "vitdet_vid_1024_plus": ("vitdet_vid_1024_keep400", 0.097),
}


def _peer(name: str, base: str, method: EventfulConfig | ToMeConfig) -> Preset:
    """A comparison method on a benchmark model, at the setting ``rgtp bench`` measures nearest RGTP's budget."""
    preset = get_preset(base)
    section = "eventful" if isinstance(method, EventfulConfig) else "tome"
    label = (
        f"Eventful-style gating keep_ratio={method.keep_ratio}"
        if section == "eventful"
        else (f"ToMe-style merging keep_ratio={method.keep_ratio}")
    )
    what = preset.description.rsplit(": ", 1)[0]
    return dataclasses.replace(preset, name=name, description=f"{what}: {label}", **{section: method})


register(
    "shapes_det_eventful", partial(_peer, "shapes_det_eventful", "shapes_det_base", EventfulConfig(keep_ratio=0.3))
)
register(
    "shapes_det_tome",
    partial(
        _peer, "shapes_det_tome", "shapes_det_base", ToMeConfig(keep_ratio=0.35, spread="front", global_attn="merged")
    ),
)
register("motions_eventful", partial(_peer, "motions_eventful", "motions_base", EventfulConfig(keep_ratio=0.3)))
register("motions_tome", partial(_peer, "motions_tome", "motions_base", ToMeConfig(keep_ratio=0.35, spread="front")))

for _name, (_paper, _rho) in PLUS_PRESETS.items():
    register(_name, partial(_plus, _name, _paper, _rho))
