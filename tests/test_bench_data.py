"""The generated benchmark sets: shapes (video detection) and motions (action recognition)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rgtp.data.action import ActionClip, ActionDataError
from rgtp.data.registry import ACTION_DATASETS, build_action_dataset, dataset_for_preset
from rgtp.lab.data.motions import _TAG, MOTION_CLASSES, MotionDataset, _min_gap, _tracks, motion_clip
from rgtp.lab.data.registry import GENERATED_ACTION_SETS
from rgtp.lab.data.shapes import MIN_VISIBLE_PIXELS, SHAPES_CLASSES, _render_split, make_shapes_split
from rgtp.presets import get_preset
from rgtp.training.vivit import ClipSamples, random_view


@pytest.fixture(scope="module")
def rendered() -> list:
    """Eight validation sequences with their instance-id maps."""
    return list(_render_split("val", 8, 32, 0, (160, 256)))


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Accuracy of the best single threshold separating samples ``a`` from ``b`` (0.5: no separation)."""
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))][np.argsort(x, kind="stable")]
    right = (np.cumsum(y == 0) + (y == 1).sum() - np.cumsum(y == 1)) / len(x)  # "b above the threshold"
    return float(max(right.max(), 1.0 - right.min(), 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# Shapes


def test_shapes_determinism_and_disjoint_splits() -> None:
    a = make_shapes_split("val", 2, 6)
    b = make_shapes_split("val", 2, 6)
    assert a.name == "shapes" and a.split == "val" and a.classes == SHAPES_CLASSES and len(SHAPES_CLASSES) == 6
    assert [s.name for s in a] == ["shapes_val_0000", "shapes_val_0001"]
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.frames, t.frames)
        for x, y in zip(s.boxes + s.labels, t.boxes + t.labels, strict=True):
            np.testing.assert_array_equal(x, y)
    first = make_shapes_split("val", 1, 6)[0]  # does not depend on how many sequences follow
    np.testing.assert_array_equal(first.frames, a[0].frames)
    for other in (make_shapes_split("test", 1, 6)[0], make_shapes_split("train", 1, 6)[0], a[1]):
        assert np.abs(other.frames.astype(np.int16) - a[0].frames).mean() > 5
    assert np.abs(make_shapes_split("val", 1, 6, seed=1)[0].frames.astype(np.int16) - a[0].frames).mean() > 5
    with pytest.raises(ValueError, match="unknown shapes split"):
        make_shapes_split("dev")


def test_shapes_default_split() -> None:
    ds = make_shapes_split("val")
    assert len(ds) == 6 and ds.num_frames == 6 * 48
    seq = ds[0]
    assert seq.frames.shape == (48, 160, 256, 3) and seq.frames.dtype == np.uint8
    counts = [len(b) for s in ds for b in s.boxes]
    assert 2.0 <= np.mean(counts) <= 6.0
    widths = np.concatenate([b[:, 2] - b[:, 0] for s in ds for b in s.boxes])
    assert widths.max() <= 89 and np.median(widths) >= 24  # circumradius <= 44: at most 89 px across
    assert float(np.abs(np.diff(seq.frames[:, :, :, 0].astype(np.int16), axis=0)).mean()) > 1.0  # the camera moves


def test_shapes_boxes_are_tight_bounds_of_visible_pixels(rendered: list) -> None:
    for r in rendered:
        seq = r.sequence
        height, width = seq.size
        for t in range(len(seq)):
            expected_boxes, expected_labels = [], []
            for k in range(len(r.kinds)):
                ys, xs = np.nonzero(r.ids[t] == k)
                if ys.size >= MIN_VISIBLE_PIXELS:
                    expected_boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    expected_labels.append(r.kinds[k])
            boxes, labels = seq.boxes[t], seq.labels[t]
            assert boxes.dtype == np.float32 and labels.dtype == np.int64
            np.testing.assert_array_equal(boxes, np.array(expected_boxes, dtype=np.float32).reshape(-1, 4))
            np.testing.assert_array_equal(labels, expected_labels)
            assert np.all((boxes[:, 0] >= 0) & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 2] <= width))
            assert np.all((boxes[:, 1] >= 0) & (boxes[:, 1] < boxes[:, 3]) & (boxes[:, 3] <= height))


def test_shapes_enter_leave_and_occlude(rendered: list) -> None:
    entered = left = occluded = False
    for r in rendered:
        visible = np.stack([(r.ids == k).sum(axis=(1, 2)) for k in range(len(r.kinds))], axis=1)  # (T, K)
        shown = visible >= MIN_VISIBLE_PIXELS
        entered |= bool(np.any(~shown[0] & shown.any(axis=0)))  # absent at first, annotated later
        left |= bool(np.any(shown.any(axis=0) & ~shown[-1]))  # annotated, then gone by the end
        occluded |= bool(np.any((r.areas >= MIN_VISIBLE_PIXELS) & (visible < r.areas)))  # covered by a later object
    assert entered and left and occluded
    assert any(len({len(b) for b in r.sequence.boxes}) > 1 for r in rendered)  # the object count changes


def test_shapes_class_balance() -> None:
    rendered = list(_render_split("train", 16, 12, 0, (160, 256)))
    objects = np.bincount(np.concatenate([r.kinds for r in rendered]), minlength=6)
    assert objects.max() - objects.min() <= 1  # classes are dealt in shuffled blocks of six
    boxes = np.bincount(np.concatenate([lab for r in rendered for lab in r.sequence.labels]), minlength=6)
    assert boxes.min() > 0 and np.all(np.abs(boxes / boxes.mean() - 1) < 0.35)


# ---------------------------------------------------------------------------------------------------------------------
# Motions


def test_motion_clip_is_deterministic() -> None:
    assert len(MOTION_CLASSES) == 10 and len(set(MOTION_CLASSES)) == 10
    clip = motion_clip(3, 11)
    assert clip.shape == (16, 96, 96, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, motion_clip(3, [11]))
    assert not np.array_equal(clip, motion_clip(3, 12))
    assert not np.array_equal(clip, motion_clip(2, 11))
    assert motion_clip(0, 1, num_frames=8, size=64).shape == (8, 64, 64, 3)
    with pytest.raises(ValueError):
        motion_clip(10, 0)


def test_motion_dataset() -> None:
    assert ACTION_DATASETS["motions"] is GENERATED_ACTION_SETS["motions"] is MotionDataset  # the lab adds its sets
    assert dataset_for_preset("motions_base") == dataset_for_preset("motions_rgtp") == "motions"
    ds = build_action_dataset("motions", "generated", "val", num_clips=20)
    assert isinstance(ds, MotionDataset) and len(ds) == 20 and ds.classes == list(MOTION_CLASSES)
    assert ds[3].id == "motions_val_00003" and not ds.hflip
    assert np.bincount([c.label for c in ds], minlength=10).tolist() == [2] * 10
    assert [c.label for c in MotionDataset(split="val", num_clips=7)] == [c.label for c in ds][:7]
    assert ds.describe() == {
        "name": "motions",
        "root": "generated",
        "split": "val",
        "num_frames": 16,
        "size": 96,
        "seed": 0,
        "distractor": True,
        "background": "textured",
        "classes": None,
    }
    video = ds.load(ds[0])
    assert video.shape == (16, 96, 96, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, ds.load(ds[0]))
    train = MotionDataset(split="train")
    assert len(train) == 2000 and np.bincount([c.label for c in train]).tolist() == [200] * 10
    assert len(MotionDataset(split="test")) == 500
    assert not np.array_equal(train.load(train[0]), video)
    with pytest.raises(ActionDataError, match="not a clip"):
        ds.load(ActionClip("motions_val_99999", 0, ds[0].path))
    with pytest.raises(ValueError, match="unknown motions split"):
        MotionDataset(split="dev")


def test_easy_motions_leave_out_the_distractor_and_the_texture() -> None:
    full = motion_clip(4, 5)
    easy = motion_clip(4, 5, distractor=False, background="flat")
    flat = motion_clip(4, 5, background="flat")
    assert easy.shape == full.shape and not np.array_equal(easy, full)
    # flat: every frame's most common colour is the same one, darker than the textured background
    counted = (np.unique(f.reshape(-1, 3), axis=0, return_counts=True) for f in easy)  # per frame
    mode = [tuple(colours[np.argmax(counts)]) for colours, counts in counted]
    assert len(set(mode)) == 1 and np.mean(mode[0]) < full.mean()
    # the same paths: where the easy clip differs from its flat background is where the actor is in the full clip
    actor = np.any(easy != np.array(mode[0], dtype=np.uint8), axis=-1)  # (T, H, W)
    both = np.any(flat != np.array(mode[0], dtype=np.uint8), axis=-1)  # actor and distractor
    assert actor.any() and np.all(both[actor]) and both.sum() > actor.sum()
    with pytest.raises(ValueError, match="unknown motions background"):
        motion_clip(0, 0, background="plain")


def test_motion_dataset_options() -> None:
    full = MotionDataset(split="val")
    pair = MotionDataset(split="val", num_clips=30, classes=["move_left", "move_right"], distractor=False)
    assert len(pair) == 30 and np.bincount([c.label for c in pair]).tolist() == [15, 15]
    assert pair.classes == list(MOTION_CLASSES) and pair.describe()["classes"] == [0, 1]
    by_id = {c.id: c for c in full}
    for clip in pair:  # the full set's clips, under the same ids and labels, in stream order
        assert by_id[clip.id].label == clip.label
    assert [c.id for c in pair] == sorted(c.id for c in pair)
    clip = pair[0]
    seed = [_TAG, 0, 2, 1, int(clip.id[-5:])]  # the stream of clip i of val (split id 2)
    np.testing.assert_array_equal(pair.load(clip), motion_clip(clip.label, seed, distractor=False))
    with pytest.raises(ValueError, match="subset"):
        MotionDataset(split="val", classes=["jump"])
    with pytest.raises(ValueError, match="subset"):
        MotionDataset(split="val", classes=[])
    with pytest.raises(ValueError, match="unknown motions background"):
        MotionDataset(split="val", background="plain")
    easy = build_action_dataset("motions-easy", "generated", "val", num_clips=3, cache=True)
    assert (easy.distractor, easy.background) == (False, "flat") and easy.describe()["name"] == "motions"
    first = easy.load(easy[0])
    first[:] = 0  # the caller's copy: the cached clip is untouched
    np.testing.assert_array_equal(easy.load(easy[0]), motion_clip(easy[0].label, [_TAG, 0, 2, 1, 0], **EASY))


EASY = {"distractor": False, "background": "flat"}


def test_cli_classes_option(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    from rgtp.cli import main

    args = ["train", "vivit", "--preset", "motions_base", "--dataset", "kinetics400", "--data", str(tmp_path)]
    assert main([*args, "--classes", "move_left", "--out", str(tmp_path / "r")]) == 2
    said = caplog.text + capsys.readouterr().err
    assert "--classes is an option of the generated motions sets, not of kinetics400" in said


def _sample_tracks(label: int, n: int) -> list:
    return [_tracks(label, np.random.default_rng([label, i]), 16, 96) for i in range(n)]


def test_motion_classes_are_in_the_motion() -> None:
    tracks = {label: _sample_tracks(label, 40) for label in range(10)}
    name = {c: i for i, c in enumerate(MOTION_CLASSES)}
    for cls, axis, sign in (("move_right", 0, 1), ("move_left", 0, -1), ("move_down", 1, 1), ("move_up", 1, -1)):
        for actor, _ in tracks[name[cls]]:
            assert sign * (actor.centres[-1, axis] - actor.centres[0, axis]) > 20
            assert abs(actor.centres[-1, 1 - axis] - actor.centres[0, 1 - axis]) < 4
    for cls, sign in (("rotate_cw", 1), ("rotate_ccw", -1)):
        assert all(sign * (a.angles[-1] - a.angles[0]) > 2 for a, _ in tracks[name[cls]])
    for cls, sign in (("grow", 1), ("shrink", -1)):
        assert all(sign * np.log(a.radii[-1] / a.radii[0]) > np.log(1.4) for a, _ in tracks[name[cls]])
    for actor, _ in tracks[name["oscillate"]]:
        step = np.diff(actor.centres, axis=0)
        turns = np.sum(np.sum(step[1:] * step[:-1], axis=1) < 0)  # the direction reverses
        assert turns >= 2 and np.ptp(actor.centres, axis=0).max() < 25
    for actor, other in tracks[name["collide"]]:
        distance = np.hypot(*(actor.centres - other.centres).T)
        touch = int(distance.argmin())
        assert 4 <= touch <= 11 and distance[0] > distance[touch] + 8 and distance[-1] > distance[touch] + 3
        assert _min_gap(actor.centres, actor.radii, other.centres, other.radii) < 0
    # outside collide, the distractor keeps (almost always) clear of the actor and barely moves
    apart = [_min_gap(a.centres, a.radii, o.centres, o.radii) >= 0 for c in range(9) for a, o in tracks[c]]
    assert np.mean(apart) > 0.95
    assert all(np.hypot(*(o.centres[-1] - o.centres[0])) < 0.4 * 15 + 1e-6 for c in range(9) for _, o in tracks[c])
    for c in range(10):  # every object stays inside the frame
        for a, o in tracks[c]:
            for tr in (a, o):
                assert np.all(tr.centres - tr.radii[:, None] >= 0) and np.all(tr.centres + tr.radii[:, None] <= 96)


def test_single_frames_do_not_tell_the_class() -> None:
    name = {c: i for i, c in enumerate(MOTION_CLASSES)}
    rng = np.random.default_rng(0)
    pairs = (("move_right", "move_left", "x"), ("move_down", "move_up", "y"), ("grow", "shrink", "r"))
    for a, b, what in pairs:
        samples = []
        for cls in (a, b):
            values = []
            for actor, _ in _sample_tracks(name[cls], 200):
                t = int(rng.integers(16))  # a frame at a random time
                values.append(actor.radii[t] if what == "r" else actor.centres[t, "xy".index(what)])
            samples.append(np.array(values))
        assert _best_threshold_accuracy(*samples) < 0.6, (a, b)
    # the first frame's colours say nothing either (same backgrounds, looks and camera for every class)
    for a, b in (("move_right", "move_left"), ("grow", "shrink"), ("rotate_cw", "collide")):
        means = [
            np.array([motion_clip(name[c], [7, name[c], i])[0].mean(axis=(0, 1)) for i in range(30)]) for c in (a, b)
        ]
        assert max(_best_threshold_accuracy(means[0][:, k], means[1][:, k]) for k in range(3)) < 0.72, (a, b)


def test_training_views_of_motions_are_never_flipped() -> None:
    preset = get_preset("motions_base")
    ds = MotionDataset(split="val", num_clips=2)
    video = ds.load(ds[0])
    plain = random_view(video, preset, np.random.default_rng(0), flip=False)
    flipped = 0
    for s in range(8):  # a full-size 16-frame clip: the flip is the only random choice
        assert torch.equal(random_view(video, preset, np.random.default_rng(s), flip=False), plain)
        view = random_view(video, preset, np.random.default_rng(s))
        flipped += int(torch.equal(view, plain.flip(-1)))
        assert torch.equal(view, plain) or torch.equal(view, plain.flip(-1))
    assert 0 < flipped < 8
    samples = ClipSamples(ds, preset, train=True)
    for epoch in range(6):
        x, label, _ = samples[(0, epoch)]
        assert label == ds[0].label and torch.equal(x[0], plain)
