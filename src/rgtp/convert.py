"""Convert official checkpoints into rgtp state dicts, strictly (method §12.6).

Every source key must match a rule: it is either renamed onto one of our parameters or explicitly dropped. Anything
unmatched, any parameter left without a source, and any shape mismatch is reported together in one
:class:`ConversionError` that names the keys, so a checkpoint from a different model never loads half-way.

Supported sources:

* ``vitdet-vid``: the detectron2 ViTDet-B Faster R-CNN trained on ImageNet VID (``frcnn_vitdet_final.pth`` of the
  Eventful Transformers release; a ``{"model": state_dict, ...}`` file): backbone, pyramid and detection head.
* ``vitdet-eventful``: the same detector as converted by the reference code (``weights/vitdet_b_vid.pth``:
  ``embedding.conv``, ``backbone.blocks.i.qkv``, ``pyramid.stages.k.j``...).
* ``vitdet-coco``: detectron2's COCO ViTDet-B (``model_final_*.pkl`` of the ViTDet project, numpy arrays in a
  pickle): backbone and pyramid only, as a starting point for fine-tuning; the COCO heads are dropped.
* ``vivit-k400`` / ``vivit-epic``: TAdaConv's ViViT-B/16x2 factorised encoder (``.pyth`` files, ``model_state``),
  trained on Kinetics-400 (one classifier) or EPIC-KITCHENS-100 (verb and noun classifiers). The EPIC noun head
  becomes ``head_noun`` when the target has ``num_nouns=300``; otherwise it is dropped (and logged), as in the paper.

The TAdaConv layout, from the public source of alibaba-mmai-research/TAdaConv:

* ``models/base/models.py``: ``BaseVideoModel`` holds ``backbone`` and ``head``, hence the two key prefixes.
  ``utils/checkpoint.py`` (``save_checkpoint``) saves ``model.module.state_dict()`` under multi-GPU training (no
  ``module.`` prefix) as ``{"epoch", "model_state", "optimizer_state", "cfg"}`` plus ``"model_ema_state"`` when EMA is
  on (the K400 recipe enables it); like the reference converter we read ``model_state``.
* ``models/module_zoo/stems/embedding_stem.py``: ``TubeletEmbeddingStem.conv1`` is a Conv3d 3 -> 768 with kernel =
  stride = (2, 16, 16): ``backbone.stem.conv1.{weight (768, 3, 2, 16, 16), bias}``. Its output is flattened (C, t, h, w)
  -> (t*h*w, C) and split per step ("b (t n) c -> (b t) n c"), the same token order as ours.
* ``models/base/transformer.py``, ``FactorizedTransformer`` (``configs/pool/backbone/vivit_fac_enc.yaml``: 768 wide,
  12 spatial + 4 temporal layers, 12 heads, MLP x4, ``BaseTransformerLayer``):

  * ``pos_embd`` (1, n + 1, 768), n = (crop / 16)^2 (197 at 224, 401 at 320); ``cls_token`` (1, 1, 768) is prepended
    before ``pos_embd`` is added, so row 0 is the class slot, as in our ``pos_embed``.
  * ``temp_embd`` (1, frames / 2 + 1, 768) = (1, 17, 768) and ``cls_token_out`` (1, 1, 768): the same for the temporal
    encoder. ``norm`` / ``norm_out`` are the spatial / temporal final LayerNorms (eps 1e-6).
  * ``layers.i`` / ``layers_temporal.i`` (``nn.Sequential``): ``norm``, ``attn.to_qkv`` (768 -> 2304),
    ``attn.proj``, ``norm_ffn``, ``ffn.net.0`` (768 -> 3072) and ``ffn.net.3`` (3072 -> 768); ``ffn.net.{1,2,4}`` are
    GELU and dropouts (no weights). LayerNorm eps 1e-6, pre-norm residuals as in our ``Block``. The attention reshapes
    ``to_qkv`` output as (B, N, 3, heads, C / heads): the [3][heads][64] channel layout of our ``attn.qkv``, so no
    permutation is needed. (It scales q.k by 1/8 after the product; ours scales q first: the same up to rounding.)
  * A ``new_pos_embd`` attribute for other input sizes is a plain tensor attribute, not in the state dict.

* ``models/module_zoo/heads/transformer_head.py``: ``TransformerHead.linear`` (768 -> 400 on K400) and
  ``TransformerHeadx2.linear1`` (verbs, 97) / ``linear2`` (nouns, 300) for EPIC (``configs/projects/epic-kitchen-ar``,
  ``NUM_CLASSES: [97, 300]``). Dropout and the eval-time softmax have no weights. ``pre_logits`` (``PRE_LOGITS:
  false`` in the ViViT configs) would add ``head.pre_logits*.fc``; we have no such layer, so such a file is refused.

Every ViViT tensor is copied unchanged: no key of a ViViT-B checkpoint needs a transform, and none is dropped except
the EPIC noun head when the target has none.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from rgtp.config import ModelConfig, ViTDetConfig, ViViTConfig, to_dict

__all__ = [
    "EPIC_NOUNS",
    "SOURCES",
    "ConversionError",
    "ConversionReport",
    "Rule",
    "convert_checkpoint",
    "convert_state",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

DROP = None  # a rule whose replacement is DROP discards the key


class ConversionError(ValueError):
    """A checkpoint that does not map onto the target model; the message lists every problem."""


@dataclass(frozen=True)
class Rule:
    """Rename keys matching ``pattern`` (a full-match regex) to ``replacement`` (``re`` syntax), or drop them.

    ``if_absent``: the target is an optional part of our model; when the target model lacks it, the key is dropped
    and this note is logged instead of an error.
    """

    pattern: str
    replacement: str | None
    if_absent: str | None = None

    def apply(self, key: str) -> tuple[bool, str | None]:
        m = re.fullmatch(self.pattern, key)
        if m is None:
            return False, None
        return True, None if self.replacement is None else m.expand(self.replacement)


@dataclass
class ConversionReport:
    source: str
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    parts: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"{self.source}: {self.mapped} tensors mapped onto {', '.join(self.parts)}; "
            f"{len(self.dropped)} dropped on purpose"
        )


def _cls_free_pos_embed(value: Tensor) -> Tensor:
    """Remove the class-token slot of a (1, 1 + s*s, C) position table; (1, s*s, C) passes unchanged.

    Tables stored without the batch axis, or as a (1, s, s, C) grid, are flattened to (1, n, C) first.
    """
    if value.ndim != 3:
        value = value.reshape(1, -1, value.shape[-1])  # (1, n, C)
    n = value.shape[1]
    side = round((n - 1) ** 0.5)
    if side * side == n - 1:
        return value[:, 1:]
    return value


_BACKBONE = [
    Rule(r"backbone\.net\.(patch_embed\.proj\.(?:weight|bias))", r"net.\1"),
    Rule(r"backbone\.net\.pos_embed", r"net.pos_embed"),
    Rule(
        r"backbone\.net\.blocks\.(\d+)\.((?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))",
        r"net.blocks.\1.\2",
    ),
    Rule(r"backbone\.net\.blocks\.(\d+)\.attn\.(rel_pos_[hw])", r"net.blocks.\1.attn.\2"),
    Rule(r"backbone\.(simfp_[2-5]\.\d+\.(?:weight|bias|norm\.weight|norm\.bias))", r"pyramid.\1"),
]
_NEVER_PARAMETERS = [  # buffers some detectron2 versions saved; not weights
    Rule(r"pixel_(?:mean|std)", DROP),
    Rule(r"proposal_generator\.anchor_generator\..*", DROP),
]
_VID_HEAD = [
    Rule(r"(proposal_generator\.rpn_head\..*)", r"head.\1"),
    Rule(r"(roi_heads\.box_head\..*)", r"head.\1"),
    Rule(r"(roi_heads\.box_predictor\.(?:cls_score|bbox_pred)\.(?:weight|bias))", r"head.\1"),
]
_COCO_HEADS = [Rule(r"proposal_generator\..*", DROP), Rule(r"roi_heads\..*", DROP)]

# The layout of the reference's own converted file (Eventful Transformers / RGTP ``weights/vitdet_b_vid.pth``):
# renamed backbone modules, and a pyramid whose "conv with norm" modules are split into separate conv and LN indices.
_EVENTFUL_BLOCK = {
    "input_layer_norm": "norm1",
    "qkv": "attn.qkv",
    "projection": "attn.proj",
    "mlp_layer_norm": "norm2",
    "mlp_1": "mlp.fc1",
    "mlp_2": "mlp.fc2",
}
_EVENTFUL_PYRAMID = {  # (stage, index) -> our simfp module path ("…" + ".norm" for a split-off LayerNorm)
    (0, 0): "simfp_2.0", (0, 1): "simfp_2.1", (0, 3): "simfp_2.3", (0, 4): "simfp_2.4", (0, 5): "simfp_2.4.norm",
    (0, 6): "simfp_2.5", (0, 7): "simfp_2.5.norm",
    (1, 0): "simfp_3.0", (1, 1): "simfp_3.1", (1, 2): "simfp_3.1.norm", (1, 3): "simfp_3.2", (1, 4): "simfp_3.2.norm",
    (2, 0): "simfp_4.0", (2, 1): "simfp_4.0.norm", (2, 2): "simfp_4.1", (2, 3): "simfp_4.1.norm",
    (3, 1): "simfp_5.1", (3, 2): "simfp_5.1.norm", (3, 3): "simfp_5.2", (3, 4): "simfp_5.2.norm",
}  # fmt: skip
_EVENTFUL = [
    Rule(r"embedding\.conv\.(weight|bias)", r"net.patch_embed.proj.\1"),
    Rule(r"backbone\.position_encoding\.encoding", "net.pos_embed"),
    *(
        Rule(rf"backbone\.blocks\.(\d+)\.{re.escape(ours)}\.(weight|bias)", rf"net.blocks.\1.{theirs}.\2")
        for ours, theirs in _EVENTFUL_BLOCK.items()
    ),
    Rule(r"backbone\.blocks\.(\d+)\.relative_position\.y_embedding", r"net.blocks.\1.attn.rel_pos_h"),
    Rule(r"backbone\.blocks\.(\d+)\.relative_position\.x_embedding", r"net.blocks.\1.attn.rel_pos_w"),
    *(
        Rule(rf"pyramid\.stages\.{stage}\.{index}\.(weight|bias)", rf"pyramid.{path}.\1")
        for (stage, index), path in _EVENTFUL_PYRAMID.items()
    ),
]

# TAdaConv's ViViT factorised encoder (see the module docstring): backbone.{layers, layers_temporal}.i.* per block.
_TADA_BLOCK = {
    "norm": "norm1",
    "attn.to_qkv": "attn.qkv",  # (3 * C, C) in the [3][heads][head_dim] layout, like ours
    "attn.proj": "attn.proj",
    "norm_ffn": "norm2",
    "ffn.net.0": "mlp.fc1",
    "ffn.net.3": "mlp.fc2",
}


def _tada_encoder(ours: str, layers: str, cls: str, pos: str, norm: str) -> list[Rule]:
    """Rules for one of TAdaConv's two encoders (their names) onto our ``spatial`` / ``temporal`` :class:`Encoder`."""
    return [
        Rule(rf"backbone\.{cls}", f"{ours}.cls_token"),
        Rule(rf"backbone\.{pos}", f"{ours}.pos_embed"),  # (1, 1 + n, C), class slot first like ours: unchanged
        Rule(rf"backbone\.{norm}\.(weight|bias)", rf"{ours}.norm.\1"),
        *(
            Rule(rf"backbone\.{layers}\.(\d+)\.{re.escape(theirs)}\.(weight|bias)", rf"{ours}.blocks.\1.{mine}.\2")
            for theirs, mine in _TADA_BLOCK.items()
        ),
    ]


_VIVIT = [
    Rule(r"backbone\.stem\.conv1\.(weight|bias)", r"patch_embed.\1"),
    *_tada_encoder("spatial", "layers", "cls_token", "pos_embd", "norm"),
    *_tada_encoder("temporal", "layers_temporal", "cls_token_out", "temp_embd", "norm_out"),
]
EPIC_NOUNS = 300  # classes of the EPIC-KITCHENS-100 noun head (TAdaConv's head.linear2)
_K400_HEAD = [Rule(r"head\.linear\.(weight|bias)", r"head.\1")]
_EPIC_HEADS = [
    Rule(r"head\.linear1\.(weight|bias)", r"head.\1"),  # verbs
    Rule(
        r"head\.linear2\.(weight|bias)",
        r"head_noun.\1",
        if_absent=f"the EPIC noun head (head.linear2, {EPIC_NOUNS} nouns) is dropped: the target model has no noun "
        f"head (the paper discards it; `rgtp convert vivit --source epic --nouns` keeps it)",
    ),
]
_VIVIT_PARTS = ("patch_embed", "spatial", "temporal", "head")

SOURCES: dict[str, tuple[list[Rule], tuple[str, ...]]] = {
    # name: (rules, parts of our model the checkpoint can provide)
    "vitdet-vid": (_BACKBONE + _NEVER_PARAMETERS + _VID_HEAD, ("net", "pyramid", "head")),
    "vitdet-coco": (_BACKBONE + _NEVER_PARAMETERS + _COCO_HEADS, ("net", "pyramid")),
    "vitdet-eventful": (_EVENTFUL + _NEVER_PARAMETERS + _VID_HEAD, ("net", "pyramid", "head")),
    "vivit-k400": (_VIVIT + _K400_HEAD, _VIVIT_PARTS),
    "vivit-epic": (_VIVIT + _EPIC_HEADS, (*_VIVIT_PARTS, "head_noun")),
}
# The target architecture when none is given; a given one must be of the same family.
_DEFAULT_TARGETS: dict[str, ModelConfig] = {
    "vitdet-vid": ViTDetConfig(),
    "vitdet-coco": ViTDetConfig(),
    "vitdet-eventful": ViTDetConfig(),
    "vivit-k400": ViViTConfig(img_size=224, num_classes=400),
    "vivit-epic": ViViTConfig(img_size=320, num_classes=97),
}
_TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {"net.pos_embed": _cls_free_pos_embed}


# ---------------------------------------------------------------------------------------------------------------------
# Reading


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickle detectron2 ``.pkl`` checkpoints: plain containers and numpy arrays only, nothing executable."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),  # numpy arrays pickled with protocol <= 2
            ("numpy.core.numeric", "_frombuffer"),  # ... and with protocol 5
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint pickle")


_STATE_KEYS = ("model", "model_state", "state_dict")  # detectron2, TAdaConv / pySlowFast, Lightning


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """The model state dict inside a checkpoint (detectron2 ``.pkl`` / ``.pth``, ``model_state``...), as tensors.

    ``.pth`` files are read with ``torch.load(weights_only=True)``; a file that also pickles arbitrary objects (some
    training checkpoints do) needs ``trust=True``, which runs the pickle: only do that for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    obj: Any
    try:
        if path.suffix == ".pkl":
            obj = _NumpyUnpickler(io.BytesIO(raw), encoding="latin1").load()
        else:
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=not trust)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        hint = "" if trust or path.suffix == ".pkl" else " (if you trust the file, retry with --trust-pickle)"
        raise ConversionError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    state = obj
    if isinstance(obj, Mapping):
        state = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{path}: expected a state dict or a dict with one of {_STATE_KEYS}")
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Mapping


def convert_state(
    source: Mapping[str, Tensor], rules: list[Rule], expected: Mapping[str, torch.Size], name: str = "checkpoint"
) -> tuple[dict[str, Tensor], list[str]]:
    """Map ``source`` onto the keys and shapes of ``expected``; returns (state dict, dropped source keys).

    Raises :class:`ConversionError` listing unmatched source keys, target keys without a source, duplicate targets
    and shape mismatches.
    """
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped, unmatched, duplicate, unknown, wrong = [], [], [], [], []
    notes: dict[str, list[str]] = {}  # if_absent note -> keys dropped for it
    for key, value in source.items():
        for rule in rules:
            matched, target = rule.apply(key)
            if matched:
                break
        else:
            unmatched.append(key)
            continue
        if target is not None and target not in expected and rule.if_absent is not None:
            notes.setdefault(rule.if_absent, []).append(key)
            target = None
        if target is None:
            dropped.append(key)
            continue
        value = _TRANSFORMS.get(target, lambda v: v)(value)
        if target in out:
            duplicate.append(f"{origin[target]} and {key} -> {target}")
        elif target not in expected:
            unknown.append(f"{key} -> {target}")
        elif tuple(value.shape) != tuple(expected[target]):
            wrong.append(f"{key} -> {target}: {tuple(value.shape)} vs expected {tuple(expected[target])}")
        out[target], origin[target] = value, key
    missing = sorted(set(expected) - set(out))
    problems = [
        (unmatched, "source key(s) matched by no rule"),
        (unknown, "key(s) mapped onto no parameter of the model"),
        (duplicate, "duplicate target(s)"),
        (wrong, "shape mismatch(es)"),
        (missing, "model parameter(s) without a source"),
    ]
    text = [
        f"{len(items)} {what}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
        for items, what in problems
        if items
    ]
    if text:
        raise ConversionError(f"{name} does not map onto the model: " + " | ".join(text))
    for note, keys in notes.items():
        logger.info("%s (%s)", note, ", ".join(keys))
    return out, dropped


def _target(source: str, cfg: ModelConfig | None) -> tuple[ModelConfig, dict[str, torch.Size], tuple[str, ...]]:
    """The target architecture for ``source``: its config, parameter shapes (meta tensors) and provided parts."""
    from rgtp.models.vitdet import ViTDet
    from rgtp.models.vivit import ViViT

    if source not in SOURCES:
        raise ConversionError(f"unknown checkpoint source {source!r}; known: {sorted(SOURCES)}")
    _, parts = SOURCES[source]
    default = _DEFAULT_TARGETS[source]
    cfg = cfg or default
    if type(cfg) is not type(default):
        raise ConversionError(f"{source} converts into a {type(default).__name__} model, not a {type(cfg).__name__}")
    if isinstance(cfg, ViTDetConfig):
        if "head" not in parts:
            cfg = dataclasses.replace(cfg, head=None)
        elif cfg.head is None:
            raise ConversionError(f"{source} includes a detection head but the target config has head=None")
    with torch.device("meta"):
        model = ViTDet(cfg) if isinstance(cfg, ViTDetConfig) else ViViT(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    modules = {k.split(".")[0] for k in expected}  # the checkpoint provides every part of the target model
    return cfg, expected, tuple(p for p in parts if p in modules)


def _only_provided(
    state: Mapping[str, Tensor],
    rules: list[Rule],
    expected: dict[str, torch.Size],
    parts: tuple[str, ...],
    src: str | Path,
) -> tuple[dict[str, torch.Size], tuple[str, ...]]:
    """ViTDet: the parts of the model a checkpoint provides at all (a backbone-only checkpoint has no pyramid or
    head keys). Parts without a single key keep their initial weights, with a warning; a part provided in part is
    still an error (convert_state names its missing keys)."""
    provided = set()
    for key in state:
        for rule in rules:
            matched, target = rule.apply(key)
            if matched:
                if target is not None:
                    provided.add(target.split(".")[0])
                break
    absent = [p for p in parts if p not in provided]
    if not absent or "net" not in provided:  # complete, or not a ViTDet backbone at all: convert_state says what
        return expected, parts
    logger.warning(
        "%s provides %s only: %s keep their initial weights (train or load them separately)",
        src,
        ", ".join(p for p in parts if p in provided),
        ", ".join(absent),
    )
    kept = tuple(p for p in parts if p in provided)
    return {k: v for k, v in expected.items() if k.split(".")[0] in kept}, kept


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    source: str = "vitdet-vid",
    cfg: ModelConfig | None = None,
    trust: bool = False,
) -> ConversionReport:
    """Convert ``src`` (an official checkpoint of kind ``source``) into an rgtp checkpoint at ``dst``.

    ``cfg`` is the target architecture, of the source's family (default: ViTDet-B with the VID head; ViViT-B for
    Kinetics-400 (224, 400 classes) or EPIC-KITCHENS (320, 97 verbs, no noun head)). For ViTDet the input size does
    not change any parameter shape, so one file serves the 672 and 1024 presets; for ViViT it does (the position
    table). The output is ``{"model": state_dict, "rgtp_meta": {...}}``; ``rgtp_meta`` records the ``source``, the
    ``parts`` of the model it provides (a COCO backbone leaves the head out), the keys ``dropped`` on purpose and the
    target model (``family`` and ``config``, e.g. ``config["num_nouns"]`` for a kept EPIC noun head).
    """
    cfg, expected, parts = _target(source, cfg)
    rules, _ = SOURCES[source]
    state = read_checkpoint(src, trust)
    if isinstance(cfg, ViTDetConfig):
        expected, parts = _only_provided(state, rules, expected, parts, src)
    converted, dropped = convert_state(state, rules, expected, name=str(src))
    report = ConversionReport(source, len(converted), dropped, parts)
    meta = {
        "source": source,
        "from": Path(src).name,
        "parts": list(parts),
        "dropped": dropped,
        "family": "vitdet" if isinstance(cfg, ViTDetConfig) else "vivit",
        "config": to_dict(cfg),
    }
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.contiguous() for k, v in converted.items()}, "rgtp_meta": meta}, dst)
    logger.info("%s -> %s", report.summary(), dst)
    return report
