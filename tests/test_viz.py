"""Tests for rgtp.viz."""

from __future__ import annotations

import numpy as np
import pytest

from rgtp.viz import add_caption, colormap, draw_boxes, label_color, overlay_tokens


def test_colormap_shape_range_and_monotone_luminance() -> None:
    values = np.linspace(0.0, 1.0, 50).reshape(5, 10)
    rgb = colormap(values)
    assert rgb.shape == (5, 10, 3) and rgb.dtype == np.uint8
    luma = rgb.reshape(-1, 3).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) > -1.0)  # perceptual maps increase in lightness
    assert luma[-1] - luma[0] > 200
    # clipping and NaN handling
    np.testing.assert_array_equal(colormap(np.array([-1.0, np.nan])), colormap(np.array([0.0, 0.0])))
    np.testing.assert_array_equal(colormap(np.array([5.0])), colormap(np.array([1.0])))


def _checker_kept(gh: int, gw: int) -> np.ndarray:
    return (np.add.outer(np.arange(gh), np.arange(gw)) % 2).astype(bool)


@pytest.mark.parametrize("with_importance", [False, True])
def test_overlay_pruned_darker_than_kept(with_importance: bool) -> None:
    p = 8
    frame = np.full((4 * p, 6 * p, 3), 180, np.uint8)
    kept = _checker_kept(4, 6)
    importance = np.ones((4, 6)) if with_importance else None
    out = overlay_tokens(frame, kept, importance, patch_size=p, outline=False)
    assert out.shape == frame.shape and out.dtype == np.uint8
    kept_px = np.kron(kept, np.ones((p, p), bool))
    assert out[~kept_px].mean() < 0.5 * out[kept_px].mean()
    assert not np.shares_memory(out, frame)
    assert (frame == 180).all()  # input untouched


def test_overlay_importance_changes_colours() -> None:
    frame = np.full((16, 16, 3), 128, np.uint8)
    kept = np.ones((2, 2), bool)
    imp = np.array([[0.0, 1.0], [0.5, 0.25]])
    out = overlay_tokens(frame, kept, imp, patch_size=8, alpha=0.5, outline=False)
    assert out[0:8, 0:8].mean() < out[0:8, 8:16].mean()  # low importance is darker in inferno
    same = overlay_tokens(frame, kept, imp * 7.0, patch_size=8, alpha=0.5, outline=False)
    np.testing.assert_array_equal(out, same)  # normalised by the max


def test_overlay_grid_larger_than_frame_and_smaller() -> None:
    p = 16
    # grid extends past the frame (model pads bottom/right)
    frame = np.full((40, 50, 3), 200, np.uint8)
    kept = np.zeros((3, 4), bool)
    out = overlay_tokens(frame, kept, np.random.default_rng(0).random((3, 4)), patch_size=p)
    assert out.shape == (40, 50, 3)
    assert out.max() < 200  # everything pruned -> darker everywhere
    # frame larger than the grid: outside pixels untouched
    frame = np.full((70, 90, 3), 200, np.uint8)
    out = overlay_tokens(frame, kept, None, patch_size=p, grid=True)
    assert (out[48:, :] == 200).all() and (out[:, 64:] == 200).all()
    assert (out[:48, :64] < 200).all()


def test_overlay_outline_marks_kept_border() -> None:
    kept = np.zeros((3, 3), bool)
    kept[1, 1] = True
    frame = np.full((24, 24, 3), 100, np.uint8)
    out = overlay_tokens(frame, kept, None, patch_size=8, outline=True)
    assert (out[8, 8:16] == 255).all() and (out[8:16, 15] == 255).all()
    assert (out[12, 12] == 100).all()


def test_overlay_validates_shapes() -> None:
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        overlay_tokens(frame, np.ones((2, 2), bool), np.ones((3, 2)), patch_size=8)
    with pytest.raises(ValueError):
        overlay_tokens(frame, np.ones(4, bool), None, patch_size=8)
    with pytest.raises(ValueError):
        overlay_tokens(frame, np.ones((2, 2), bool), None, patch_size=0)
    with pytest.raises(ValueError):
        overlay_tokens(frame.astype(np.float32), np.ones((2, 2), bool), None, patch_size=8)


def test_draw_boxes_changes_border_pixels() -> None:
    pytest.importorskip("PIL")
    frame = np.zeros((80, 100, 3), np.uint8)
    boxes = np.array([[20.0, 30.0, 70.0, 60.0]])
    out = draw_boxes(frame, boxes, ["car"], np.array([0.87]))
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 0).all()
    color = np.array(label_color("car"))
    np.testing.assert_array_equal(out[45, 20], color)  # left border
    np.testing.assert_array_equal(out[60, 45], color)  # bottom border
    assert (out[45, 45] == 0).all()  # interior untouched
    assert (out[10:30, 20:60] != 0).any()  # label above the box
    assert (out[:, 80:] == 0).all() and (out[70:, :] == 0).all()


def test_draw_boxes_colours_are_deterministic_per_label() -> None:
    pytest.importorskip("PIL")
    frame = np.zeros((60, 60, 3), np.uint8)
    boxes = np.array([[5.0, 20.0, 25.0, 40.0], [30.0, 20.0, 55.0, 40.0]])
    a = draw_boxes(frame, boxes, ["dog", "dog"], None)
    b = draw_boxes(frame, boxes, ["dog", "dog"], None)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[30, 5], a[30, 30])
    assert label_color("dog") == label_color("dog")
    assert label_color("dog") != label_color("cat")
    empty = draw_boxes(frame, np.zeros((0, 4)), [], np.zeros(0))
    np.testing.assert_array_equal(empty, frame)
    with pytest.raises(ValueError):
        draw_boxes(frame, boxes, ["dog"], None)


def test_add_caption() -> None:
    pytest.importorskip("PIL")
    frame = np.full((60, 300, 3), 128, np.uint8)
    out = add_caption(frame, "t=3 PRUNED kept 512/1764  57.8 GMACs")
    assert out.shape == frame.shape and out.dtype == np.uint8
    top = out[:12]
    assert (top > 200).any() and (top < 100).any()  # white text on a darkened strip
    assert (out[-10:] == 128).all()  # bottom untouched
