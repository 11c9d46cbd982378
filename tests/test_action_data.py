"""Kinetics-400 and EPIC-KITCHENS-100 readers on tiny generated videos, JPEG folders and CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from conftest import TINY_VIVIT  # noqa: E402
from rgtp.config import ConfigError, Preset  # noqa: E402
from rgtp.data.action import ActionDataError, preset_views  # noqa: E402
from rgtp.data.epic import EpicKitchens, parse_timestamp  # noqa: E402
from rgtp.data.kinetics import KINETICS400_CLASSES, Kinetics400  # noqa: E402
from rgtp.data.registry import ACTION_DATASETS, build_action_dataset, dataset_for_preset  # noqa: E402
from rgtp.io.video import VideoWriter, read_clip  # noqa: E402

BASE, STEP = 10, 4  # frame i is a uniform grey of level BASE + STEP * i


def _level(i: int) -> int:
    return BASE + STEP * i


def _write_video(path: Path, n: int, fps: float = 50.0, size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps) as writer:
        for i in range(n):
            writer.write(np.full((*size, 3), _level(i), dtype=np.uint8))
    return path


def _indices(video: np.ndarray) -> list[int]:
    """The frame index each decoded frame shows (codec error is well below STEP / 2)."""
    return [round((float(frame.mean()) - BASE) / STEP) for frame in video]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Decoding helper


def test_read_clip_range_resampling_and_resize(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "v.mp4", 40, fps=50)  # frame i at i / 50 s
    assert _indices(read_clip(path, 0.2, 0.4)) == list(range(10, 20))  # [start, stop)
    assert _indices(read_clip(path, fps=25)) == list(range(0, 40, 2))  # every other frame
    assert _indices(read_clip(path, 0.6, fps=100)) == [i for i in range(30, 40) for _ in range(2)]  # repeated
    assert read_clip(path, short_side=24).shape == (40, 24, 32, 3)
    with pytest.raises(ValueError, match="stop"):
        read_clip(path, 0.5, 0.5)
    with pytest.raises(ValueError, match="no decodable frames"):  # VideoDecodeError: past the end
        read_clip(path, 5.0, 6.0)


# ---------------------------------------------------------------------------------------------------------------------
# Kinetics-400


def _k400(root: Path, by_class: bool) -> dict[str, str]:
    """A val split: two videos, one missing, one corrupt; returns {id: label}."""
    rows = [
        ["zumba", "bbb", 5, 15, "val"],
        ["abseiling", "aaa", 0, 10, "val"],
        ["passing American football (in game)", "ccc", 120, 130, "val"],  # missing
        ["yoga", "ddd", 1, 11, "val"],  # corrupt
    ]
    _write_csv(root / "annotations" / "val.csv", ["label", "youtube_id", "time_start", "time_end", "split"], rows)
    for label, yid, start, end, _ in rows[:2]:
        folder = root / "val" / label if by_class else root / "val"
        _write_video(folder / f"{yid}_{start:06d}_{end:06d}.mp4", 20, fps=25)
    corrupt = (root / "val" / "yoga" if by_class else root / "val") / "ddd_000001_000011.mp4"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    return {f"{yid}_{start:06d}_{end:06d}": label for label, yid, start, end, _ in rows}


@pytest.mark.parametrize("by_class", [False, True], ids=["flat", "class-folders"])
def test_kinetics_layouts_labels_and_errors(tmp_path: Path, by_class: bool) -> None:
    labels = _k400(tmp_path, by_class)
    ds = Kinetics400(tmp_path, "validation", short_side=None)  # "validation" is an alias of "val"
    assert len(KINETICS400_CLASSES) == 400 and list(KINETICS400_CLASSES) == sorted(KINETICS400_CLASSES)
    assert ds.classes == list(KINETICS400_CLASSES)
    assert [c.id for c in ds] == sorted(labels)  # sorted by id
    for clip in ds:
        assert ds.classes[clip.label] == labels[clip.id]
    assert ds[0].label == 0 and ds[1].label == 399  # abseiling, zumba
    assert ds.missing() == ["ccc_000120_000130"]
    video = ds.load(ds[0])
    assert video.shape == (20, 48, 64, 3) and video.dtype == np.uint8
    assert _indices(video) == list(range(20))  # 25 fps video read at 25 fps: unchanged
    with pytest.raises(ActionDataError, match=r"ccc_000120_000130: video file not found \(searched .*ccc_000120"):
        ds.load(ds[2])
    with pytest.raises(ActionDataError, match=r"ddd_000001_000011\.mp4"):
        ds.load(ds[3])


def test_kinetics_fps_resize_and_overrides(tmp_path: Path) -> None:
    csv_path = _write_csv(
        tmp_path / "my.csv", ["label", "youtube_id", "time_start", "time_end", "split"], [["yoga", "x", 0, 10, "val"]]
    )
    _write_video(tmp_path / "clips" / "x_000000_000010.mp4", 40, fps=50)
    ds = Kinetics400(tmp_path, "val", annotations=csv_path, videos_dir=tmp_path / "clips", short_side=24)
    video = ds.load(ds[0])
    assert video.shape == (20, 24, 32, 3)  # 50 -> 25 fps, 48x64 -> 24x32
    assert _indices(video) == list(range(0, 40, 2))
    native = Kinetics400(tmp_path, annotations=csv_path, videos_dir=tmp_path / "clips", fps=None, short_side=None)
    assert native.load(native[0]).shape == (40, 48, 64, 3)


def test_kinetics_bad_annotations(tmp_path: Path) -> None:
    with pytest.raises(ActionDataError, match=r"val\.csv"):
        Kinetics400(tmp_path)  # no CSV
    bad = _write_csv(tmp_path / "a.csv", ["label", "youtube_id", "time_start"], [["yoga", "x", 0]])
    with pytest.raises(ActionDataError, match=r"a\.csv.*time_end"):
        Kinetics400(tmp_path, annotations=bad)
    header = ["label", "youtube_id", "time_start", "time_end", "split"]
    bad = _write_csv(tmp_path / "b.csv", header, [["yoga", "x", 0, 10, "val"], ["not a class", "y", 0, 10, "val"]])
    with pytest.raises(ActionDataError, match=r"b\.csv line 3.*not a class"):
        Kinetics400(tmp_path, annotations=bad)
    ok = _write_csv(tmp_path / "ok.csv", header, [["Air_Drumming", "x", 0, 10, "test"], ["", "y", 0, 10, "test"]])
    assert [c.label for c in Kinetics400(tmp_path, annotations=ok)] == [1, -1]  # normalised name; no label
    bad = _write_csv(tmp_path / "c.csv", header, [["yoga", "x", "zero", 10, "val"]])
    with pytest.raises(ActionDataError, match=r"c\.csv line 2"):
        Kinetics400(tmp_path, annotations=bad)


# ---------------------------------------------------------------------------------------------------------------------
# EPIC-KITCHENS-100

_EPIC_HEADER = [
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
]  # fmt: skip


def _epic_row(
    nid: str, video: str, start: str, stop: str, frames: tuple[int, int], verb: int, noun: int
) -> list[object]:
    return [nid, video[:3], video, "00:00:00.00", start, stop, *frames, "open tap", "open", verb, "tap", noun,
            "['tap']", f"[{noun}]"]  # fmt: skip


def _epic_csv(root: Path) -> None:
    rows = [
        _epic_row("P01_01_0", "P01_01", "00:00:00.20", "00:00:00.50", (11, 25), 2, 7),  # frames 10..24 (0-based)
        _epic_row("P01_01_1", "P01_01", "00:00:00.90", "00:00:01.10", (46, 55), 0, 299),  # frames 45..54
        _epic_row("P01_02_0", "P01_02", "00:00:00.00", "00:00:00.40", (1, 20), 96, 0),  # missing
        _epic_row("P01_03_0", "P01_03", "00:00:00.00", "00:00:00.40", (1, 20), 1, 1),  # corrupt
    ]
    _write_csv(root / "EPIC_100_validation.csv", _EPIC_HEADER, rows)


@pytest.mark.parametrize("official", [False, True], ids=["videos", "participant-videos"])
def test_epic_video_segments(tmp_path: Path, official: bool) -> None:
    _epic_csv(tmp_path)
    video = tmp_path / "P01" / "videos" / "P01_01.MP4" if official else tmp_path / "videos" / "P01_01.mp4"
    _write_video(video, 60, fps=50)  # 1.2 s
    corrupt = video.with_name(f"P01_03{video.suffix}")
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    ds = build_action_dataset("epic", tmp_path, "val", short_side=None)
    assert isinstance(ds, EpicKitchens) and ds.layout == "video"
    assert ds.classes == [f"verb_{k}" for k in range(97)] and len(ds.nouns) == 300
    assert [(c.id, c.label, c.noun) for c in ds] == [
        ("P01_01_0", 2, 7), ("P01_01_1", 0, 299), ("P01_02_0", 96, 0), ("P01_03_0", 1, 1)
    ]  # fmt: skip
    assert ds[0].path == video and ds[0].start == pytest.approx(0.2) and ds[0].stop == pytest.approx(0.5)
    assert _indices(ds.load(ds[0])) == list(range(10, 25))
    segment = ds.load(ds[1])
    assert segment.shape == (10, 48, 64, 3) and _indices(segment) == list(range(45, 55))
    assert ds.missing() == ["P01_02_0"]
    with pytest.raises(ActionDataError, match=r"P01_02\.mp4"):
        ds.load(ds[2])
    with pytest.raises(ActionDataError, match=rf"P01_03\{video.suffix}"):
        ds.load(ds[3])
    resized = EpicKitchens(tmp_path, short_side=24, fps=25.0)
    assert resized.load(resized[1]).shape == (5, 24, 32, 3)


def test_epic_jpeg_frames_and_class_names(tmp_path: Path) -> None:
    _epic_csv(tmp_path)
    _write_csv(
        tmp_path / "EPIC_100_verb_classes.csv",
        ["id", "key", "instances", "category"],
        [[k, f"v{k}", "[]", "x"] for k in range(97)],
    )
    _write_csv(
        tmp_path / "EPIC_100_noun_classes.csv",
        ["id", "key", "instances", "category"],
        [[k, f"n{k}", "[]", "x"] for k in range(300)],
    )
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for number in range(1, 56):  # 1-based: frame_0000000001.jpg shows index 0
        Image.fromarray(np.full((48, 64, 3), _level(number - 1), dtype=np.uint8)).save(
            folder / f"frame_{number:010d}.jpg", quality=95
        )
    (folder / "frame_0000000050.jpg").unlink()  # a hole inside segment 1
    ds = EpicKitchens(tmp_path, "validation", short_side=24)
    assert ds.layout == "frames" and ds.classes[2] == "v2" and ds.nouns[299] == "n299"
    assert ds[0].frames == (11, 25) and ds[0].path == folder
    video = ds.load(ds[0])
    assert video.shape == (15, 24, 32, 3) and _indices(video) == list(range(10, 25))
    assert ds.missing() == ["P01_02_0", "P01_03_0"]
    with pytest.raises(ActionDataError, match=r"frame_0000000050\.jpg"):
        ds.load(ds[1])
    with pytest.raises(ActionDataError, match=r"rgb_frames[/\\]P01_02"):
        ds.load(ds[2])
    with pytest.raises(ValueError, match="fps"):
        EpicKitchens(tmp_path, fps=25.0)
    forced = EpicKitchens(tmp_path, layout="video")
    assert forced[0].frames is None and forced[0].path == tmp_path / "videos" / "P01_01.mp4"


def test_epic_bad_annotations(tmp_path: Path) -> None:
    assert parse_timestamp("00:01:02.34") == pytest.approx(62.34)
    assert parse_timestamp("1:00:00") == 3600
    with pytest.raises(ActionDataError, match=r"EPIC_100_train\.csv"):
        EpicKitchens(tmp_path, "train")
    rows = [_epic_row("a", "P01_01", "00:00:00.20", "00:00:00.50", (11, 25), 2, 7),
            _epic_row("b", "P01_01", "00:00:xx", "00:00:00.50", (11, 25), 2, 7)]  # fmt: skip
    _write_csv(tmp_path / "EPIC_100_train.csv", _EPIC_HEADER, rows)
    with pytest.raises(ActionDataError, match=r"EPIC_100_train\.csv line 3.*00:00:xx"):
        EpicKitchens(tmp_path, "train")
    _write_csv(tmp_path / "ann" / "EPIC_100_train.csv", _EPIC_HEADER[:10], [r[:10] for r in rows])
    with pytest.raises(ActionDataError, match=r"EPIC_100_train\.csv: missing column.*verb_class"):
        EpicKitchens(tmp_path, "train", annotations=tmp_path / "ann")
    rows = [_epic_row("a", "P01_01", "00:00:00.20", "00:00:00.50", (11, 25), 97, 7)]
    _write_csv(tmp_path / "EPIC_100_train.csv", _EPIC_HEADER, rows)
    with pytest.raises(ActionDataError, match=r"line 2.*out of range"):
        EpicKitchens(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------------------------
# Registry and views


def test_registry(tmp_path: Path) -> None:
    assert {"kinetics400", "epic-kitchens", "epic"} <= set(ACTION_DATASETS)
    with pytest.raises(ConfigError, match=r"kinetics400.*epic-kitchens"):
        build_action_dataset("ucf101", tmp_path, "val")
    assert dataset_for_preset("vivit_k400_keep049") == "kinetics400"
    assert dataset_for_preset("vivit_epic_base") == "epic-kitchens"
    with pytest.raises(ConfigError, match="vitdet_vid_672_keep512"):
        dataset_for_preset("vitdet_vid_672_keep512")


def test_preset_views_of_a_loaded_clip(tmp_path: Path) -> None:
    csv_path = _write_csv(
        tmp_path / "val.csv", ["label", "youtube_id", "time_start", "time_end", "split"], [["yoga", "x", 0, 10, "val"]]
    )
    _write_video(tmp_path / "val" / "x_000000_000010.mp4", 30, fps=25, size=(40, 72))
    ds = build_action_dataset("kinetics400", tmp_path, "val", annotations=csv_path, short_side=TINY_VIVIT.img_size)
    video = ds.load(ds[0])
    assert video.shape == (30, 32, 58, 3)  # 40x72 -> short side 32, long side round(72 * 32 / 40) = 58 (57.6)
    preset = Preset("tiny_k400", TINY_VIVIT, temporal_stride=2)
    views = preset_views(video, preset)
    assert views.shape == (12, 3, TINY_VIVIT.num_frames, TINY_VIVIT.img_size, TINY_VIVIT.img_size)
