"""ImageNet VID readers (:mod:`rgtp.data.vid`) on tiny fixtures written to ``tmp_path`` in both layouts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from rgtp.data.vid import (
    VID_CLASSES,
    VID_WNIDS,
    VIDDataError,
    VIDDataset,
    VIDFrame,
    load_frame,
    split_at_gaps,
)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

H, W = 48, 64  # fixture frame size

# A fixture video: frame number -> objects [((x1, y1, x2, y2), label)]
Objects = list[tuple[tuple[float, float, float, float], int]]
Video = dict[int, Objects]

VAL_VIDEOS: dict[str, Video] = {
    "ILSVRC2015_val_00000000": {
        0: [((1.0, 2.0, 30.0, 40.0), 4)],
        1: [((2.0, 3.0, 31.0, 41.0), 4), ((10.0, 10.0, 20.0, 20.0), 0)],
        2: [],
        3: [((0.0, 0.0, 63.0, 47.0), 29)],
    },
    "ILSVRC2015_val_00000001": {  # gap between 2 and 5
        0: [],
        1: [((5.0, 6.0, 7.0, 8.0), 9)],
        2: [],
        5: [((11.0, 12.0, 13.5, 14.5), 27)],
        6: [],
    },
    "ILSVRC2015_val_00000002": {0: [((3.0, 4.0, 5.0, 6.0), 12)], 1: []},
}


def write_jpeg(path: Path, size: tuple[int, int] = (H, W), seed: int = 0) -> None:
    """A small noisy RGB JPEG of ``size`` = (H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_vid_xml(path: Path, objects: Objects, size: tuple[int, int] = (H, W), wnids: tuple[str, ...] = VID_WNIDS):
    """An ILSVRC2015 VID annotation file (child order as in the release: xmax, xmin, ymax, ymin)."""
    parts = [f"<annotation><folder>x</folder><filename>{path.stem}</filename>"]
    parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height></size>")
    for track, ((x1, y1, x2, y2), label) in enumerate(objects):
        parts.append(
            f"<object><trackid>{track}</trackid><name>{wnids[label]}</name><bndbox><xmax>{x2:g}</xmax>"
            f"<xmin>{x1:g}</xmin><ymax>{y2:g}</ymax><ymin>{y1:g}</ymin></bndbox><occluded>0</occluded>"
            "<generated>0</generated></object>"
        )
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def write_ilsvrc_fixture(root: Path, split: str, videos: dict[str, Video], subfolder: str | None = None) -> Path:
    """``Data/VID/<split>/[subfolder/]<video>/<NNNNNN>.JPEG`` and the matching ``Annotations`` XMLs."""
    for v, (video, frames) in enumerate(videos.items()):
        rel = Path(subfolder, video) if subfolder else Path(video)
        for index, objects in frames.items():
            write_jpeg(root / "Data" / "VID" / split / rel / f"{index:06d}.JPEG", seed=100 * v + index)
            write_vid_xml(root / "Annotations" / "VID" / split / rel / f"{index:06d}.xml", objects)
    return root


def coco_json(videos: dict[str, Video], categories: list[dict] | None = None) -> tuple[dict, dict[str, str]]:
    """A COCO-style dict as in the Eventful release, plus ``file_name -> Eventful (video_id/frame.jpg)`` paths."""
    images, annotations, where = [], [], {}
    for video, frames in videos.items():
        for index, objects in frames.items():
            file_name = f"{video}_{index:06d}.JPEG"
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": W, "height": H, "frame_id": index})
            where[file_name] = f"{video.rsplit('_', 1)[1]}/{index:06d}.jpg"
            for (x1, y1, x2, y2), label in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "category_id": label + 1, "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                })  # fmt: skip
    if categories is None:
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(VID_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, where


def write_coco_fixture(
    root: Path, split: str, videos: dict[str, Video], arrangement: str = "plain", data: dict | None = None
) -> Path:
    """Write a COCO-style split.

    ``arrangement``: ``"plain"`` (``<root>/<split>.json`` + flat ``<root>/<split>/<file_name>``), ``"tar"``
    (``<root>/annotations/<split>.json`` + flat frames, as ``vid_data.tar`` extracts) or ``"eventful"``
    (``<root>/<split>/labels.json`` + ``<root>/<split>/frames/<video_id>/<frame>.jpg``).
    """
    built, where = coco_json(videos)
    data = built if data is None else data
    json_path = {
        "plain": root / f"{split}.json",
        "tar": root / "annotations" / f"{split}.json",
        "eventful": root / split / "labels.json",
    }[arrangement]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))
    frame_split = split.replace("minival", "val")
    for k, img in enumerate(built["images"]):
        if arrangement == "eventful":
            path = root / frame_split / "frames" / where[img["file_name"]]
        else:
            path = root / frame_split / img["file_name"]
        write_jpeg(path, seed=k)
    return root


def expected_names() -> list[str]:
    return ["ILSVRC2015_val_00000000", "ILSVRC2015_val_00000001#0", "ILSVRC2015_val_00000001#1",
            "ILSVRC2015_val_00000002"]  # fmt: skip


def check_val_content(ds: VIDDataset) -> None:
    """Names, lengths, frame numbers, boxes and labels of the ``VAL_VIDEOS`` fixture."""
    assert ds.names == expected_names()
    assert [len(s) for s in ds] == [4, 3, 2, 2]
    assert ds.num_frames == 11
    assert ds[1].indices == [0, 1, 2] and ds[2].indices == [5, 6]
    assert ds[1].video == ds[2].video == "ILSVRC2015_val_00000001"
    for seq in ds:
        for frame in seq:
            objects = VAL_VIDEOS[seq.video][frame.index]
            assert (frame.width, frame.height) == (W, H)
            assert frame.boxes.dtype == np.float32 and frame.boxes.shape == (len(objects), 4)
            assert frame.labels.dtype == np.int64 and frame.labels.shape == (len(objects),)
            np.testing.assert_array_equal(frame.boxes, np.array([o[0] for o in objects], np.float32).reshape(-1, 4))
            np.testing.assert_array_equal(frame.labels, [o[1] for o in objects])
    empty = ds[0][2]
    assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == np.float32 and empty.labels.shape == (0,)
    image = load_frame(ds[3][0])
    assert image.shape == (H, W, 3) and image.dtype == np.uint8


# ------------------------------------------------------------------------------------------------------------------
# split_at_gaps and the data classes
# ------------------------------------------------------------------------------------------------------------------


def test_split_at_gaps():
    assert split_at_gaps([]) == []
    assert split_at_gaps([7]) == [[0]]
    assert split_at_gaps([0, 1, 2, 5, 6]) == [[0, 1, 2], [3, 4]]
    assert split_at_gaps([3, 5, 7]) == [[0], [1], [2]]
    assert split_at_gaps(np.arange(4, 9)) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="strictly increasing"):
        split_at_gaps([0, 2, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        split_at_gaps([3, 1])


def test_constants_and_frame_validation(tmp_path):
    assert len(VID_CLASSES) == len(VID_WNIDS) == 30 == len(set(VID_WNIDS))
    assert VID_CLASSES[4] == "bird" and VID_WNIDS[4] == "n01503061" and VID_CLASSES[-1] == "zebra"
    boxes = np.array([[1, 2, 3, 4]], np.float64)
    frame = VIDFrame(str(tmp_path / "a.JPEG"), 3, W, H, boxes, [5])
    assert isinstance(frame.path, Path) and frame.boxes.dtype == np.float32 and frame.labels.dtype == np.int64
    assert not frame.boxes.flags.writeable and boxes.flags.writeable  # caller's array untouched
    empty = VIDFrame(tmp_path / "b.JPEG", 0, W, H, [], [])
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.num_objects == 0
    with pytest.raises(ValueError, match="labels"):
        VIDFrame(tmp_path / "c.JPEG", 0, W, H, boxes, [30])
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        VIDFrame(tmp_path / "c.JPEG", 0, W, H, np.zeros((1, 3)), [0])


# ------------------------------------------------------------------------------------------------------------------
# ILSVRC2015 layout
# ------------------------------------------------------------------------------------------------------------------


def test_ilsvrc_val(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", VAL_VIDEOS)
    ds = VIDDataset(tmp_path, "val")
    assert ds.layout == "ilsvrc" and ds.classes == VID_CLASSES
    check_val_content(ds)
    assert ds[0][0].path == tmp_path / "Data/VID/val/ILSVRC2015_val_00000000/000000.JPEG"
    assert VIDDataset(tmp_path, "vid_val", layout="ilsvrc").names == expected_names()


def test_ilsvrc_train_nested_folders(tmp_path):
    write_ilsvrc_fixture(tmp_path, "train", {"ILSVRC2015_train_00000001": {0: [], 1: []}}, "ILSVRC2015_VID_train_0001")
    write_ilsvrc_fixture(
        tmp_path, "train", {"ILSVRC2015_train_00000000": {0: [((1, 1, 9, 9), 25)], 2: []}}, "ILSVRC2015_VID_train_0000"
    )
    ds = VIDDataset(tmp_path, "train", layout="ilsvrc")
    assert ds.names == ["ILSVRC2015_train_00000000#0", "ILSVRC2015_train_00000000#1", "ILSVRC2015_train_00000001"]
    first = ds[0][0]
    assert first.path == tmp_path / "Data/VID/train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000/000000.JPEG"
    assert first.labels.tolist() == [25] and first.boxes.tolist() == [[1, 1, 9, 9]]


def test_ilsvrc_missing_jpeg_and_missing_xml(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", VAL_VIDEOS)
    jpeg = tmp_path / "Data/VID/val/ILSVRC2015_val_00000001/000005.JPEG"
    jpeg.unlink()
    with pytest.raises(VIDDataError, match="image file missing") as err:
        VIDDataset(tmp_path, "val")
    assert str(jpeg) in str(err.value)
    write_jpeg(jpeg)
    xml = tmp_path / "Annotations/VID/val/ILSVRC2015_val_00000002/000001.xml"
    xml.unlink()
    with pytest.raises(VIDDataError, match="annotation file missing") as err:
        VIDDataset(tmp_path, "val")
    assert str(xml) in str(err.value)


def test_ilsvrc_unknown_wnid_and_bad_xml(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", VAL_VIDEOS)
    xml = tmp_path / "Annotations/VID/val/ILSVRC2015_val_00000000/000001.xml"
    xml.write_text(xml.read_text().replace(VID_WNIDS[0], "n99999999"))
    with pytest.raises(VIDDataError, match="n99999999") as err:
        VIDDataset(tmp_path, "val")
    assert str(xml) in str(err.value)
    xml.write_text("<annotation><size><width>64</wid")
    with pytest.raises(VIDDataError, match="cannot parse") as err:
        VIDDataset(tmp_path, "val")
    assert str(xml) in str(err.value)


def test_ilsvrc_selection(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", VAL_VIDEOS)
    assert VIDDataset(tmp_path, max_sequences=2).names == expected_names()[:2]
    assert VIDDataset(tmp_path, max_sequences=0).names == []
    ds = VIDDataset(tmp_path, sequence_names=["ILSVRC2015_val_00000001"])
    assert ds.names == expected_names()[1:3]
    ds = VIDDataset(tmp_path, sequence_names=["ILSVRC2015_val_00000002", "ILSVRC2015_val_00000001#1"])
    assert ds.names == expected_names()[2:]
    assert ds.by_name("ILSVRC2015_val_00000002") is ds[1]
    with pytest.raises(ValueError, match="close matches: ILSVRC2015_val_00000002"):
        VIDDataset(tmp_path, sequence_names=["ILSVRC2015_val_0000002"])


# ------------------------------------------------------------------------------------------------------------------
# COCO-style layout
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arrangement", ["plain", "tar", "eventful"])
def test_coco_arrangements(tmp_path, arrangement):
    write_coco_fixture(tmp_path, "vid_val", VAL_VIDEOS, arrangement)
    ds = VIDDataset(tmp_path, "val")  # "val" finds vid_val
    assert ds.layout == "coco" and ds.classes == VID_CLASSES
    check_val_content(ds)
    if arrangement == "eventful":
        assert ds[0][1].path == tmp_path / "vid_val/frames/00000000/000001.jpg"
    else:
        assert ds[0][1].path == tmp_path / "vid_val/ILSVRC2015_val_00000000_000001.JPEG"
    assert VIDDataset(tmp_path, "vid_val", layout="coco").names == expected_names()


def test_coco_minival_uses_val_frames(tmp_path):
    write_coco_fixture(tmp_path, "vid_minival", {"ILSVRC2015_val_00000002": VAL_VIDEOS["ILSVRC2015_val_00000002"]})
    ds = VIDDataset(tmp_path, "minival")
    assert ds.names == ["ILSVRC2015_val_00000002"] and ds[0][0].path.parent == tmp_path / "vid_val"


def test_coco_boxes_labels_and_category_names(tmp_path):
    videos = {"ILSVRC2015_val_00000007": {0: [((10, 20, 40, 30), 0), ((0, 0, 1, 1), 29)], 1: []}}
    data, _ = coco_json(videos, categories=[{"id": 1, "name": "plane"}, {"id": 30, "name": "zebra"}])
    data["annotations"][0]["bbox"] = [10.5, 20, 30, 10]  # xywh
    write_coco_fixture(tmp_path, "vid_val", videos, data=data)
    ds = VIDDataset(tmp_path, "vid_val")
    assert ds.classes[0] == "plane" and ds.classes[1:] == VID_CLASSES[1:]
    frame = ds[0][0]
    np.testing.assert_array_equal(frame.boxes, np.array([[10.5, 20, 40.5, 30], [0, 0, 1, 1]], np.float32))
    assert frame.labels.tolist() == [0, 29]
    assert ds[0][1].boxes.shape == (0, 4) and ds[0][1].boxes.dtype == np.float32


@pytest.mark.parametrize("category_id", [0, 31, 2.5, "3", None])
def test_coco_bad_category_id(tmp_path, category_id):
    data, _ = coco_json(VAL_VIDEOS)
    data["annotations"][1]["category_id"] = category_id
    write_coco_fixture(tmp_path, "vid_val", VAL_VIDEOS, data=data)
    with pytest.raises(VIDDataError, match="category_id") as err:
        VIDDataset(tmp_path, "vid_val")
    assert str(tmp_path / "vid_val.json") in str(err.value)


def test_coco_bad_json_entries(tmp_path):
    data, _ = coco_json(VAL_VIDEOS)
    data["annotations"][0]["image_id"] = 999
    write_coco_fixture(tmp_path, "vid_val", VAL_VIDEOS, data=data)
    with pytest.raises(VIDDataError, match="unknown image_id 999"):
        VIDDataset(tmp_path, "vid_val")
    data, _ = coco_json(VAL_VIDEOS)
    data["images"][0]["file_name"] = "no_frame_number.JPEG"
    (tmp_path / "vid_val.json").write_text(json.dumps(data))
    with pytest.raises(VIDDataError, match="<video_id>_<frame number>"):
        VIDDataset(tmp_path, "vid_val")
    (tmp_path / "vid_val.json").write_text("{not json")
    with pytest.raises(VIDDataError, match="cannot read annotation JSON") as err:
        VIDDataset(tmp_path, "vid_val")
    assert str(tmp_path / "vid_val.json") in str(err.value)


def test_coco_missing_frame(tmp_path):
    write_coco_fixture(tmp_path, "vid_val", VAL_VIDEOS, "eventful")
    missing = tmp_path / "vid_val/frames/00000001/000005.jpg"
    missing.unlink()
    with pytest.raises(VIDDataError, match="not found") as err:
        VIDDataset(tmp_path, "vid_val")
    assert str(missing) in str(err.value)
    ds = VIDDataset(tmp_path, "vid_val", max_sequences=1)  # only the selected frames must exist
    assert ds.names == expected_names()[:1]
    (tmp_path / "vid_val" / "frames").rename(tmp_path / "elsewhere")  # first frame not found anywhere
    with pytest.raises(VIDDataError, match="looked for") as err:
        VIDDataset(tmp_path, "vid_val")
    assert str(tmp_path / "vid_val/frames/00000000/000000.jpg") in str(err.value)
    ds = VIDDataset(tmp_path, "vid_val", frames_dir=tmp_path / "elsewhere", sequence_names=["ILSVRC2015_val_00000000"])
    assert ds[0][0].path == tmp_path / "elsewhere/00000000/000000.jpg"


# ------------------------------------------------------------------------------------------------------------------
# Layout detection, missing splits, frame loading
# ------------------------------------------------------------------------------------------------------------------


def test_auto_layout_prefers_coco_and_missing_split(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", {"ILSVRC2015_val_00000009": {0: []}})
    assert VIDDataset(tmp_path, "val").layout == "ilsvrc"
    write_coco_fixture(tmp_path, "vid_val", VAL_VIDEOS)
    assert VIDDataset(tmp_path, "val").layout == "coco"
    assert VIDDataset(tmp_path, "val", layout="ilsvrc").names == ["ILSVRC2015_val_00000009"]
    with pytest.raises(VIDDataError, match=r"not found; looked for COCO-style JSON at .* and ILSVRC2015") as err:
        VIDDataset(tmp_path, "test")
    assert str(tmp_path / "test.json") in str(err.value)
    assert str(tmp_path / "Annotations" / "VID" / "test") in str(err.value)
    with pytest.raises(VIDDataError, match="ILSVRC2015 annotation folder") as err:
        VIDDataset(tmp_path, "train", layout="ilsvrc")
    assert "COCO" not in str(err.value)
    with pytest.raises(VIDDataError, match="root folder not found"):
        VIDDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="layout"):
        VIDDataset(tmp_path, layout="voc")  # type: ignore[arg-type]


def test_load_frame_errors(tmp_path):
    path = tmp_path / "frame.JPEG"
    write_jpeg(path)
    image = load_frame(str(path))
    assert image.shape == (H, W, 3) and image.dtype == np.uint8 and image.flags.writeable
    with pytest.raises(VIDDataError, match="not found") as err:
        load_frame(tmp_path / "missing.JPEG")
    assert str(tmp_path / "missing.JPEG") in str(err.value)
    garbage = tmp_path / "garbage.JPEG"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(VIDDataError, match="cannot read image") as err:
        load_frame(garbage)
    assert str(garbage) in str(err.value)
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(VIDDataError, match="cannot read image") as err:
        load_frame(VIDFrame(truncated, 0, W, H, [], []))
    assert str(truncated) in str(err.value)
    with pytest.raises(VIDDataError, match="32x48") as err:
        load_frame(VIDFrame(path, 0, 32, 48, [], []))
    assert str(path) in str(err.value)


def test_size_mismatch_from_annotation(tmp_path):
    write_ilsvrc_fixture(tmp_path, "val", {"ILSVRC2015_val_00000000": {0: [], 1: []}})
    write_jpeg(tmp_path / "Data/VID/val/ILSVRC2015_val_00000000/000001.JPEG", size=(40, 64))
    ds = VIDDataset(tmp_path)
    load_frame(ds[0][0])
    with pytest.raises(VIDDataError, match="64x40") as err:
        load_frame(ds[0][1])
    assert str(ds[0][1].path) in str(err.value)


def test_progress_is_logged(tmp_path, caplog):
    write_ilsvrc_fixture(tmp_path, "val", VAL_VIDEOS)
    with caplog.at_level(logging.INFO, logger="rgtp.data.vid"):
        VIDDataset(tmp_path, progress=False)
    assert any("annotation files" in r.getMessage() for r in caplog.records)
