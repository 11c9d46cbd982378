"""What a user meets on bad input and interruptions: one-line errors, and outputs that stay valid (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rgtp.cli import main

pytest.importorskip("av")


def _video(path: Path, frames: int = 12, size: tuple[int, int] = (96, 128)) -> Path:
    from rgtp.lab.data.synthetic import moving_shapes_video, write_video

    write_video(path, moving_shapes_video(frames, size[0], size[1], seed=0)[0])
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect status 2 and a one-line error; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("rgtp: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_malformed_config_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nmodel: [unclosed\n")
    assert "not valid YAML" in _error(capsys, ["show", "--config", str(bad_yaml)])
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    assert "not valid JSON" in _error(capsys, ["flops", "--config", str(bad_json)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_or_unknown_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = str(_video(tmp_path / "v.mp4", 2))
    assert "CUDA is not available" in _error(capsys, ["run", video, "--preset", "shapes_det_rgtp", "--device", "cuda"])
    assert "unknown device 'gpu0'" in _error(capsys, ["run", video, "--device", "gpu0"])


def test_a_file_of_random_bytes_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(os.urandom(4096))
    video = str(_video(tmp_path / "v.mp4", 2))
    err = _error(capsys, ["run", video, "--preset", "shapes_det_rgtp", "--weights", str(weights)])
    assert "is not a PyTorch checkpoint" in err and "weights_only" not in err


@pytest.mark.parametrize("option", [["--max-frames", "0"], ["--segment-frames", "0"], ["--max-frames", "-3"]])
def test_counts_below_one_are_rejected(tmp_path: Path, option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "v.mp4"), *option])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_run_uses_the_shipped_weights_by_default(tmp_path: Path) -> None:
    from rgtp.build import bundled_weights

    video = _video(tmp_path / "v.mp4", 3, (160, 256))
    jsonl = tmp_path / "out.jsonl"
    assert main(["run", str(video), "--preset", "shapes_det_rgtp", "--jsonl", str(jsonl)]) == 0
    lines = _frame_records(jsonl)
    assert len(lines) == 3 and {x["weights"] for x in lines} == {str(bundled_weights("shapes_det_rgtp"))}
    assert main(["run", str(video), "--preset", "shapes_det_rgtp", "--jsonl", str(jsonl), "--weights", "random"]) == 0
    assert {x["weights"] for x in _frame_records(jsonl)} == {"random"}


def test_run_defaults_to_the_detector_trained_on_real_footage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first `rgtp run my_video.mp4` runs a trained model and says what it was trained on and what it detects."""
    from rgtp.build import bundled_weights

    video = _video(tmp_path / "v.mp4", 2, (120, 160))
    jsonl = tmp_path / "out.jsonl"
    assert main(["run", str(video), "--jsonl", str(jsonl)]) == 0
    weights = bundled_weights("pedestrians_det_rgtp")
    assert weights is not None and weights.stat().st_size < 8e6  # fp16, a few MB
    assert {x["weights"] for x in _frame_records(jsonl)} == {str(weights)}
    summary = json.loads(jsonl.read_text().splitlines()[-1])["run_summary"]
    assert summary["preset"] == "pedestrians_det_plus" and "vtest.avi" in summary["model"]
    out = capsys.readouterr().out
    assert "trained on real footage" in out and "person" in out and "RANDOM" not in out


def _frame_records(jsonl: Path) -> list[dict]:
    """The per-frame records of a run's JSON lines (every line must parse; the last one is the run's summary)."""
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    return [x for x in lines if "frame" in x]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_run_after_a_frame_with_valid_outputs(tmp_path: Path, signum: int, status: int) -> None:
    """The current frame finishes, the video is closed (it plays), the JSON lines hold every finished frame."""
    from rgtp.io.video import read_frames

    video = _video(tmp_path / "v.mp4", 400, (160, 256))
    jsonl, out = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "rgtp", "run", str(video), "--preset", "shapes_det_rgtp"]
    proc = subprocess.Popen(
        [*cmd, "--jsonl", str(jsonl), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not jsonl.is_file() or len(jsonl.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-2000:]
    records = _frame_records(jsonl)  # every line is whole
    summary = json.loads(jsonl.read_text().splitlines()[-1])["run_summary"]
    assert summary["interrupted_by"] == signal.Signals(signum).name and summary["frames"] == len(records)
    assert 3 <= len(records) < 400
    assert len(list(read_frames(out))) == len(records)  # the annotated video plays, one frame per record
    assert f"STOPPED by {signal.Signals(signum).name} after {len(records)} frames" in stdout
    assert "Traceback" not in stderr


def _faststart_mp4(path: Path, frames: int = 30) -> Path:
    """An mp4 with its index at the front, so that a truncated copy still decodes up to the cut."""
    import av
    import numpy as np

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 160, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 255, (160, 256, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_damaged_video_warns_and_strict_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _faststart_mp4(tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    jsonl = tmp_path / "out.jsonl"
    with caplog.at_level("WARNING"):
        assert main(["run", str(cut), "--preset", "shapes_det_rgtp", "--jsonl", str(jsonl)]) == 0
    decoded = len(_frame_records(jsonl))
    assert 0 < decoded < 30 and f"ends at frame {decoded} of the 30" in caplog.text
    err = _error(capsys, ["run", str(cut), "--preset", "shapes_det_rgtp", "--jsonl", str(jsonl), "--strict"])
    assert f"ends at frame {decoded} of the 30" in err


def test_overrides_are_validated_together_and_give_a_derived_identity(capsys: pytest.CaptureFixture[str]) -> None:
    """The order of --set does not matter for validity; a changed preset is no longer the paper's row."""
    assert main(["flops", "vitdet_vid_1024_base", "--set", "model.embed_dim=64", "--set", "model.num_heads=2"]) == 0
    out = capsys.readouterr().out
    assert "preset vitdet_vid_1024_base+" in out and "paper None" in out
    assert main(["flops", "vitdet_vid_672_keep512", "--set", "rgtp.selection.keep_ratio=0.29"]) == 0  # unchanged
    assert "preset vitdet_vid_672_keep512 (" in capsys.readouterr().out
    assert main(["flops", "vitdet_vid_672_keep512", "--set", "rgtp.selection.keep_ratio=0.2"]) == 0
    assert "paper 174.84" not in capsys.readouterr().out
