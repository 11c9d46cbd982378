"""Convert official checkpoints into rgtp state dicts, strictly (spec §12.6).

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

from rgtp.config import ViTDetConfig

__all__ = [
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
    """Rename keys matching ``pattern`` (a full-match regex) to ``replacement`` (``re`` syntax), or drop them."""

    pattern: str
    replacement: str | None

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

SOURCES: dict[str, tuple[list[Rule], tuple[str, ...]]] = {
    # name: (rules, parts of our model the checkpoint provides)
    "vitdet-vid": (_BACKBONE + _NEVER_PARAMETERS + _VID_HEAD, ("net", "pyramid", "head")),
    "vitdet-coco": (_BACKBONE + _NEVER_PARAMETERS + _COCO_HEADS, ("net", "pyramid")),
    "vitdet-eventful": (_EVENTFUL + _NEVER_PARAMETERS + _VID_HEAD, ("net", "pyramid", "head")),
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
    for key, value in source.items():
        for rule in rules:
            matched, target = rule.apply(key)
            if matched:
                break
        else:
            unmatched.append(key)
            continue
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
    return out, dropped


def _expected(source: str, cfg: ViTDetConfig | None) -> dict[str, torch.Size]:
    from rgtp.models.vitdet import ViTDet

    _, parts = SOURCES[source]
    cfg = cfg or ViTDetConfig()
    if "head" not in parts:
        cfg = dataclasses.replace(cfg, head=None)
    elif cfg.head is None:
        raise ConversionError(f"{source} includes a detection head but the target config has head=None")
    with torch.device("meta"):
        model = ViTDet(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_checkpoint(
    src: str | Path, dst: str | Path, source: str = "vitdet-vid", cfg: ViTDetConfig | None = None, trust: bool = False
) -> ConversionReport:
    """Convert ``src`` (an official checkpoint of kind ``source``) into an rgtp checkpoint at ``dst``.

    ``cfg`` is the target architecture (default: ViTDet-B with the VID head; the input size does not change any
    parameter shape, so one file serves the 672 and 1024 presets). The output is ``{"model": state_dict,
    "rgtp_meta": {...}}``; ``rgtp_meta["parts"]`` lists the parts it provides (a COCO backbone leaves the head out).
    """
    if source not in SOURCES:
        raise ConversionError(f"unknown checkpoint source {source!r}; known: {sorted(SOURCES)}")
    rules, parts = SOURCES[source]
    state = read_checkpoint(src, trust)
    converted, dropped = convert_state(state, rules, _expected(source, cfg), name=str(src))
    report = ConversionReport(source, len(converted), dropped, parts)
    meta = {"source": source, "from": Path(src).name, "parts": list(parts), "dropped": dropped}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.contiguous() for k, v in converted.items()}, "rgtp_meta": meta}, dst)
    logger.info("%s -> %s", report.summary(), dst)
    return report
