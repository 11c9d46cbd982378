"""Tests for rgtp.lab.data.pedestrians: loading a boxes file against its video, the HOG builder (when cv2 imports)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from rgtp.cli import main
from rgtp.lab.data.pedestrians import (
    HogParams,
    PedestrianDataError,
    hog_boxes,
    load_pedestrians,
    write_pedestrian_boxes,
)
from rgtp.lab.data.synthetic import moving_shapes_video, write_video
from rgtp.models.vitdet import preprocess_frame, resize_scale

H, W, T = 48, 64, 8  # the tiny video; train = frames 0-5, test = frames 6-7
SIZE = 32  # -> frames 20x27, boxes scaled by 20 / 48


def _boxes(t: int) -> list[list[float]]:
    """Frame t's boxes: a strong one moving right and, on even frames, a weak one."""
    boxes = [[4.0 + t, 6.0, 20.0 + t, 40.0, 2.5]]
    if t % 2 == 0:
        boxes.append([40.0, 10.0, 60.0, 44.0, 0.4])
    return boxes


def _boxes_file(path: Path, video: Path, **changes: Any) -> Path:
    data = {
        "format": "rgtp-pedestrian-boxes",
        "version": 1,
        "video": video.name,
        "sha256": hashlib.sha256(video.read_bytes()).hexdigest(),
        "num_frames": T,
        "height": H,
        "width": W,
        "fps": 10.0,
        "detector": {},
        "frames": [_boxes(t) for t in range(T)],
    }
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ped")
    frames, _ = moving_shapes_video(T, H, W, num_objects=2, seed=3)
    video = folder / "clip.avi"
    write_video(video, frames)
    return video, _boxes_file(folder / "boxes.json", video)


def test_time_split_resize_and_boxes(clip: tuple[Path, Path]) -> None:
    video, boxes = clip
    train = load_pedestrians(video, boxes, "trainval", size=SIZE, min_score=0.5)
    test = load_pedestrians(video, boxes, "test", size=SIZE, min_score=0.5)
    assert (train.num_frames, test.num_frames) == (6, 2)  # floor(0.75 * 8) frames, then the rest
    # val: the end of trainval (here a quarter of it), train: the frames before it
    fit, val = (load_pedestrians(video, boxes, s, size=SIZE) for s in ("train", "val"))
    assert [s.name for s in fit] == ["clip[0:5]"] and [s.name for s in val] == ["clip[5:6]"]
    assert train.classes == test.classes == ("person",)
    assert [s.name for s in train] == ["clip[0:6]"] and [s.name for s in test] == ["clip[6:8]"]
    seq = test[0]
    assert seq.frames.shape == (2, 20, 27, 3) and seq.frames.dtype == np.uint8
    scale = resize_scale(H, W, SIZE)
    np.testing.assert_allclose(seq.boxes[0], np.array([[10, 6, 26, 40]], np.float32) * scale, rtol=1e-6)
    assert seq.labels[0].tolist() == [0] and seq.boxes[0].dtype == np.float32
    # min_score keeps the weak boxes too
    low = load_pedestrians(video, boxes, "test", size=SIZE, min_score=0.3)
    assert [len(b) for b in low[0].boxes] == [2, 1]


def test_frames_need_no_further_resize(clip: tuple[Path, Path]) -> None:
    """The detector's preprocessing gives the same input from the loaded frame as from the original one."""
    from rgtp.io.video import read_frames

    video, boxes = clip
    loaded = load_pedestrians(video, boxes, "all", size=SIZE)[0].frames[3]  # (20, 27, 3)
    original = list(read_frames(video))[3]  # (48, 64, 3)
    x_loaded, s_loaded = preprocess_frame(torch.from_numpy(loaded), SIZE)
    x_orig, _ = preprocess_frame(torch.from_numpy(original), SIZE)
    assert s_loaded == 1.0
    torch.testing.assert_close(x_loaded, x_orig, rtol=0, atol=1e-6)


def test_chunks(clip: tuple[Path, Path]) -> None:
    video, boxes = clip
    train = load_pedestrians(video, boxes, "trainval", size=SIZE, chunk=4)
    assert [s.name for s in train] == ["clip[0:4]", "clip[4:6]"]
    assert [len(s) for s in train] == [4, 2]
    test = load_pedestrians(video, boxes, "test", size=SIZE, chunk=1)
    assert [s.name for s in test] == ["clip[6:7]", "clip[7:8]"]
    whole = load_pedestrians(video, boxes, "all", size=SIZE, chunk=0)
    assert len(whole) == 1 and len(whole[0]) == T
    with pytest.raises(ValueError, match="split"):
        load_pedestrians(video, boxes, "validation")


def test_errors(clip: tuple[Path, Path], tmp_path: Path) -> None:
    video, boxes = clip
    with pytest.raises(PedestrianDataError, match=r"video not found.*opencv-doc"):
        load_pedestrians(tmp_path / "vtest.avi", boxes, "test")
    with pytest.raises(PedestrianDataError, match="boxes file not found"):
        load_pedestrians(video, tmp_path / "none.json", "test")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "rgtp-pedestrian-boxes", "frames": [')
    with pytest.raises(PedestrianDataError, match="not valid JSON"):
        load_pedestrians(video, bad, "test")
    with pytest.raises(PedestrianDataError, match="not a pedestrian boxes file"):
        load_pedestrians(video, _boxes_file(tmp_path / "f.json", video, format="other"), "test")
    with pytest.raises(PedestrianDataError, match="frame 2"):
        frames = [_boxes(t) for t in range(T)]
        frames[2] = [[1, 2, 3]]
        load_pedestrians(video, _boxes_file(tmp_path / "b.json", video, frames=frames), "test")
    with pytest.raises(PedestrianDataError, match="another video"):
        load_pedestrians(video, _boxes_file(tmp_path / "s.json", video, sha256="0" * 64), "test")
    more = [_boxes(t % T) for t in range(T + 1)]
    with pytest.raises(PedestrianDataError, match="has 8 frames but the boxes file describes 9"):
        load_pedestrians(video, _boxes_file(tmp_path / "n.json", video, num_frames=T + 1, frames=more), "test")
    with pytest.raises(PedestrianDataError, match="num_frames is 9 but 8 frames"):
        load_pedestrians(video, _boxes_file(tmp_path / "c.json", video, num_frames=T + 1), "test")
    with pytest.raises(PedestrianDataError, match="describes 100x48"):
        load_pedestrians(video, _boxes_file(tmp_path / "w.json", video, width=100), "test")


def test_params_validated() -> None:
    with pytest.raises(ValueError, match="win_stride"):
        HogParams(win_stride=4)
    with pytest.raises(TypeError):
        HogParams(bogus=1)  # type: ignore[call-arg]


def test_cli_no_opencv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    assert main(["pedestrian-boxes", str(tmp_path / "v.avi"), "--out", str(tmp_path / "b.json")]) == 2
    assert "pip install 'rgtp[bench]'" in capsys.readouterr().err


def test_cli_missing_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cv2")
    assert main(["pedestrian-boxes", str(tmp_path / "v.avi"), "--out", str(tmp_path / "b.json")]) == 2
    assert "video not found" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_hog_boxes_structure_and_round_trip(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    frames, _ = moving_shapes_video(3, 144, 96, num_objects=2, seed=1)
    video = tmp_path / "tiny.avi"
    write_video(video, frames)
    result = hog_boxes(video, progress=False, upscale=1.5, hit_threshold=-1.0, min_motion=0.0)
    assert result["num_frames"] == 3 and len(result["frames"]) == 3
    assert (result["height"], result["width"], result["video"]) == (144, 96, "tiny.avi")
    assert result["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert result["detector"]["opencv"] == cv2.__version__
    assert result["detector"]["params"]["upscale"] == 1.5 and result["detector"]["params"]["shrink"] == [0.15, 0.1]
    json.dumps(result)
    for boxes in result["frames"]:
        for x1, y1, x2, y2, score in boxes:
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 144 and score >= -1.0
        assert [b[4] for b in boxes] == sorted((b[4] for b in boxes), reverse=True)
    out = write_pedestrian_boxes(video, tmp_path / "sub" / "boxes.json", progress=False, max_frames=2)
    assert json.loads(out.read_text())["num_frames"] == 2
    with pytest.raises(PedestrianDataError, match="has 3 frames"):
        load_pedestrians(video, out, "all", size=64)
    out = write_pedestrian_boxes(video, out, progress=False)
    data = load_pedestrians(video, out, "all", size=64, min_score=-10)
    stored = json.loads(out.read_text())["frames"]
    assert data.num_frames == 3 and [len(b) for b in data[0].boxes] == [len(f) for f in stored]


def test_hog_boxes_frames_smaller_than_the_window(clip: tuple[Path, Path]) -> None:
    pytest.importorskip("cv2")
    result = hog_boxes(clip[0], progress=False, upscale=1.0)  # 48x64 frames: no 64x128 window fits
    assert result["frames"] == [[]] * T
