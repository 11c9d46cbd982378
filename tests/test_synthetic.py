"""Tests for rgtp.lab.data.synthetic."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from rgtp.lab.data.shapes import SHAPES_CLASSES
from rgtp.lab.data.synthetic import MOVING_SHAPES, moving_shapes_video, write_video


def test_shape_dtype_and_determinism() -> None:
    video, boxes = moving_shapes_video(num_frames=6, height=90, width=160, num_objects=3, seed=7)
    assert video.shape == (6, 90, 160, 3) and video.dtype == np.uint8
    assert len(boxes) == 6
    video2, boxes2 = moving_shapes_video(num_frames=6, height=90, width=160, num_objects=3, seed=7)
    np.testing.assert_array_equal(video, video2)
    assert boxes == boxes2
    video3, _ = moving_shapes_video(num_frames=6, height=90, width=160, num_objects=3, seed=8)
    assert np.abs(video.astype(np.int16) - video3.astype(np.int16)).mean() > 5.0


def test_frames_change_over_time_and_are_textured() -> None:
    video, _ = moving_shapes_video(num_frames=4, height=64, width=96, seed=1)
    assert np.abs(np.diff(video.astype(np.int16), axis=0)).mean() > 1.0
    assert video[0].std() > 10.0


def test_boxes_inside_frame_and_valid() -> None:
    h, w = 120, 200
    _, boxes = moving_shapes_video(num_frames=30, height=h, width=w, num_objects=5, seed=3)
    assert sum(len(b) for b in boxes) > 0
    for frame_boxes in boxes:
        assert len(frame_boxes) <= 5
        for x1, y1, x2, y2, cls in frame_boxes:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert isinstance(cls, int) and 0 <= cls < len(MOVING_SHAPES)


def test_one_list_of_shape_classes() -> None:
    """The test videos draw the first shapes of the shapes set: their class ids index that set's list."""
    assert MOVING_SHAPES == SHAPES_CLASSES[: len(MOVING_SHAPES)] == ("disc", "square", "triangle")


def test_default_size_is_fast() -> None:
    start = time.perf_counter()
    video, boxes = moving_shapes_video()
    elapsed = time.perf_counter() - start
    assert video.shape == (24, 378, 672, 3)
    assert len(boxes) == 24
    assert elapsed < 2.0  # typically ~0.1 s


def test_no_objects_and_invalid_args() -> None:
    video, boxes = moving_shapes_video(num_frames=2, height=32, width=32, num_objects=0)
    assert video.shape == (2, 32, 32, 3) and boxes == [[], []]
    with pytest.raises(ValueError):
        moving_shapes_video(num_frames=0)
    with pytest.raises(ValueError):
        moving_shapes_video(num_objects=-1)


def test_write_video_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from rgtp.io.video import read_frames, video_info

    video, _ = moving_shapes_video(num_frames=5, height=64, width=96, seed=2)
    path = tmp_path / "shapes.mp4"
    write_video(path, video, fps=8)
    info = video_info(path)
    assert (info.width, info.height) == (96, 64)
    assert info.fps == pytest.approx(8.0)
    decoded = np.stack(list(read_frames(path)))
    assert decoded.shape == video.shape
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", video[0])
