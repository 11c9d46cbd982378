"""Tests for rgtp.io.video (PyAV round trips and error handling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from rgtp.io.video import (  # noqa: E402
    VideoDecodeError,
    VideoInfo,
    VideoWriter,
    read_frames,
    video_info,
)


def _smooth_frame(h: int, w: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 90 * np.sin((x + shift) / 11.0)
    g = 128 + 90 * np.cos(y / 9.0)
    b = 40 + 3 * (x + y) * 150 / (h + w)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _write(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    frames = [_smooth_frame(48, 64, shift=3 * i) for i in range(6)]
    path = tmp_path / f"clip{suffix}"
    _write(path, frames, fps=12.0)

    info = video_info(path)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(12.0, rel=1e-3)
    assert info.num_frames in (None, 6)

    decoded = list(read_frames(path))
    assert len(decoded) == 6
    for got, want in zip(decoded, frames, strict=True):
        assert got.shape == (48, 64, 3)
        assert got.dtype == np.uint8
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).mean() < 6.0


def test_max_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write(path, [_smooth_frame(32, 32, i) for i in range(5)])
    assert len(list(read_frames(path, max_frames=2))) == 2
    assert list(read_frames(path, max_frames=0)) == []
    with pytest.raises(ValueError):
        read_frames(path, max_frames=-1)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        read_frames(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        video_info(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4") as excinfo:
        list(read_frames(path))
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.__cause__ is not None or "no decodable" in str(excinfo.value)
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4"):
        video_info(path)


def test_truncated_mp4(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write(path, [_smooth_frame(32, 48, i) for i in range(8)])
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the mp4 index (moov) is at the end
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4"):
        list(read_frames(cut))


def test_truncated_mkv_never_fails_silently_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    _write(path, [_smooth_frame(32, 48, i) for i in range(8)])
    data = path.read_bytes()
    for n in (64, len(data) // 3, len(data) // 2):
        cut = tmp_path / f"cut{n}.mkv"
        cut.write_bytes(data[:n])
        try:
            frames = list(read_frames(cut))
        except VideoDecodeError as exc:
            assert str(cut) in str(exc)
        else:
            assert 1 <= len(frames) <= 8
            assert all(f.shape == (32, 48, 3) for f in frames)


def test_zero_frames_is_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    _write(path, [_smooth_frame(32, 32, i) for i in range(3)])
    data = path.read_bytes()
    first_cluster = data.find(bytes.fromhex("1F43B675"))  # Matroska Cluster element ID
    assert first_cluster > 0
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(data[:first_cluster])  # valid header, no frame data
    with pytest.raises(VideoDecodeError, match=r"empty\.mkv"):
        list(read_frames(empty))


def test_odd_size_is_padded_by_edge_replication(tmp_path: Path) -> None:
    frame = _smooth_frame(33, 47)
    frame[:, -1] = (250, 20, 20)  # distinctive last column and row
    frame[-1, :] = (20, 250, 20)
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 10, options={"crf": "10"}) as writer:
        writer.write(frame)
        writer.write(frame)
        assert writer.frame_size == (33, 47)
    info = video_info(path)
    assert (info.width, info.height) == (48, 34)
    got = next(iter(read_frames(path))).astype(np.int16)
    assert got.shape == (34, 48, 3)
    assert np.abs(got[:33, :47] - frame).mean() < 6.0
    # the padded column/row replicate the last column/row
    assert np.abs(got[5:25, 47] - got[5:25, 46]).mean() < 20.0
    assert np.abs(got[33, 5:40] - got[32, 5:40]).mean() < 20.0


def test_size_mismatch(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "m.mp4", 10) as writer:
        writer.write(np.zeros((32, 48, 3), np.uint8))
        with pytest.raises(ValueError, match=r"64x32.*48x32"):
            writer.write(np.zeros((32, 64, 3), np.uint8))


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gif"):
        VideoWriter(tmp_path / "x.gif", 10)
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", 0)
    with pytest.raises(FileNotFoundError):
        VideoWriter(tmp_path / "missing_dir" / "x.mp4", 10)
    writer = VideoWriter(tmp_path / "x.mp4", 10)
    with pytest.raises(ValueError, match="uint8"):
        writer.write(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        writer.write(np.zeros((8, 8), np.uint8))
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(np.zeros((8, 8, 3), np.uint8))


def test_missing_pyav_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ImportError, match=r"rgtp\[video\]"):
        VideoWriter(tmp_path / "x.mp4", 10)
    with pytest.raises(ImportError, match=r"rgtp\[video\]"):
        read_frames(tmp_path / "x.mp4")
