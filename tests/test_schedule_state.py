"""Tests for rgtp.pruning.schedule and rgtp.pruning.state (the generic StreamState base, RGTP's state)."""

from __future__ import annotations

import pytest
import torch

from rgtp.pruning import FrameKind, RGTPState, StreamState, frame_kind


def test_vitdet_schedule_full_every_8() -> None:
    kinds = [frame_kind(t, 8, "full") for t in range(25)]
    full = [t for t, k in enumerate(kinds) if k is FrameKind.FULL]
    assert full == [0, 8, 16, 24]
    assert all(k is FrameKind.ROLLOUT for t, k in enumerate(kinds) if t not in full)
    assert FrameKind.GRID not in kinds


@pytest.mark.parametrize(("reset_every", "grid_steps"), [(8, [8]), (4, [4, 8, 12])])
def test_vivit_schedules_grid_resets(reset_every: int, grid_steps: list[int]) -> None:
    kinds = [frame_kind(t, reset_every, "grid") for t in range(16)]
    assert kinds[0] is FrameKind.FULL
    assert [t for t, k in enumerate(kinds) if k is FrameKind.GRID] == grid_steps
    assert [t for t, k in enumerate(kinds) if k is FrameKind.FULL] == [0]
    rollout = [t for t, k in enumerate(kinds) if k is FrameKind.ROLLOUT]
    assert rollout == [t for t in range(1, 16) if t not in grid_steps]


@pytest.mark.parametrize("mode", ["full", "grid"])
def test_none_never_resets(mode: str) -> None:
    assert frame_kind(0, None, mode) is FrameKind.FULL
    assert all(frame_kind(t, None, mode) is FrameKind.ROLLOUT for t in range(1, 40))


def test_negative_step_raises() -> None:
    with pytest.raises(ValueError):
        frame_kind(-1, 8, "full")


def test_frame_kind_values() -> None:
    assert FrameKind("full") is FrameKind.FULL and FrameKind.GRID == "grid" and FrameKind.ROLLOUT.value == "rollout"


def _filled_state() -> RGTPState:
    st = RGTPState()
    st.t = 5
    st.importance = torch.rand(2, 12)  # 96 B
    st.features = torch.zeros(2, 12, 8, dtype=torch.float16)  # 384 B
    st.outputs[11] = torch.zeros(2, 12, 8, dtype=torch.float64)  # 1536 B
    st.qkv[1] = torch.zeros(2, 12, 24)  # 2304 B
    st.qkv[3] = torch.zeros(2, 12, 24)  # 2304 B
    st.attn_rows[2] = torch.zeros(2, 3, 3)  # 72 B
    return st


def test_state_tensors_and_nbytes() -> None:
    st = _filled_state()
    named = st.tensors()
    assert set(named) == {"importance", "features", "outputs.11", "qkv.1", "qkv.3", "attn_rows.2"}
    assert named["qkv.3"] is st.qkv[3] and named["importance"] is st.importance
    assert st.nbytes() == 96 + 384 + 1536 + 2304 + 2304 + 72


def test_empty_state() -> None:
    for st in (StreamState(), RGTPState()):
        assert st.t == 0 and st.tensors() == {} and st.nbytes() == 0
    assert isinstance(RGTPState(), StreamState)


def test_state_reset_clears_everything() -> None:
    st = _filled_state()
    qkv_dict, rows_dict, out_dict = st.qkv, st.attn_rows, st.outputs
    st.reset()
    assert st.t == 0
    assert st.importance is None and st.features is None and st.outputs == {}
    assert st.qkv == {} and st.attn_rows == {}
    assert not qkv_dict and not rows_dict and not out_dict  # cleared in place: no stale references survive
    assert st.tensors() == {} and st.nbytes() == 0


def test_state_to_moves_every_tensor() -> None:
    st = _filled_state().to("meta")
    assert all(v.device.type == "meta" for v in st.tensors().values())
    assert len(st.tensors()) == 6
