"""Option lists are declared once, in the config types: one generic check reads them, and every dispatch table on an
option has exactly the values its type allows."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rgtp import config as C
from rgtp.models.attention import _LINEAR_FIRST
from rgtp.pruning.merge import _SHARES
from rgtp.pruning.rollout import HEAD_FUSIONS, ROLLOUT_FORMS
from rgtp.pruning.selection import GRID_PATTERNS
from rgtp.runtime.common import _FILLS

CONFIGS = [
    C.ViTDetConfig,
    C.SelectionConfig,
    C.ScheduleConfig,
    C.RolloutConfig,
    C.TrackingConfig,
    C.RGTPConfig,
    C.ExecutionConfig,
    C.EventfulConfig,
    C.ToMeConfig,
]
DEFAULTS = {C.EventfulConfig: {"keep_ratio": 0.3}, C.ToMeConfig: {"keep_ratio": 0.5}}


def allowed(cls: type, name: str) -> tuple:
    return typing.get_args(typing.get_type_hints(cls)[name])


@pytest.mark.parametrize(
    ("table", "cls", "name"),
    [
        (HEAD_FUSIONS, C.RolloutConfig, "head_fusion"),
        (ROLLOUT_FORMS, C.RolloutConfig, "form"),
        (_FILLS, C.RolloutConfig, "pruned_fill"),
        (GRID_PATTERNS, C.ScheduleConfig, "grid_pattern"),
        (_SHARES, C.ToMeConfig, "spread"),
        (_LINEAR_FIRST, C.ViTDetConfig, "rel_pos_resize"),
    ],
)
def test_dispatch_tables_match_the_types(table: dict, cls: type, name: str) -> None:
    assert set(table) == set(allowed(cls, name))


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_literal_field_is_checked_from_its_type(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    literal = [f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is typing.Literal]
    base = cls(**DEFAULTS.get(cls, {}))
    for name in literal:
        with pytest.raises(C.ConfigError, match=f"{name} must be one of"):
            dataclasses.replace(base, **{name: "no-such-option"})


def test_pick_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"unknown grid pattern '1in3'; expected one of \('1in2', '1in4', '1in9'\)"):
        C.pick(GRID_PATTERNS, "1in3", "grid pattern")
