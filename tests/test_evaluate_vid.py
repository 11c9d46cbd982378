"""End-to-end ImageNet VID evaluation of tiny ViTDet presets on a generated ILSVRC-layout fixture."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_HEAD, TINY_VITDET, vitdet_rgtp
from rgtp.cli import main
from rgtp.config import Preset, save_config
from rgtp.data.vid import VIDDataset
from rgtp.evaluation import vid as vid_eval
from rgtp.evaluation.records import ResumeError
from rgtp.evaluation.vid import evaluate_vid
from rgtp.lab.data.synthetic import write_synthetic_vid
from rgtp.models.vitdet import Detections, ViTDet, resize_scale

pytest.importorskip("pycocotools")

MODEL = dataclasses.replace(TINY_VITDET, head=dataclasses.replace(TINY_HEAD, num_classes=30))
RGTP = Preset("tiny_rgtp", MODEL, vitdet_rgtp(keep_ratio=0.3, reset_every=3), description="tiny RGTP")
DENSE = Preset("tiny_dense", MODEL, None, description="tiny dense")


@pytest.fixture(scope="module")
def vid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 60x96 frames; sequence 2 misses frame 1, so it splits into two sequences (0 | 2, 3)
    return write_synthetic_vid(tmp_path_factory.mktemp("vid"), (5, 4, 4), 60, 96, num_objects=2, skip={(2, 1)})


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ViTDet(MODEL)
    with torch.no_grad():  # make the untrained detector emit boxes of one class
        model.head.roi_heads.box_predictor.cls_score.bias[5] = 4.0  # type: ignore[union-attr, index]
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_sweep_reports_accuracy_compute_and_speed(vid_root: Path, weights: Path, tmp_path: Path) -> None:
    dataset = VIDDataset(vid_root, "val")
    assert [len(s) for s in dataset] == [5, 4, 1, 2]
    results = evaluate_vid(dataset, [DENSE, RGTP], weights, tmp_path, progress=False)
    assert [r.preset for r in results] == ["tiny_dense", "tiny_rgtp"]
    dense, rgtp = results
    for r in results:
        assert r.frames == 12 and r.sequences == 4
        assert 0.0 <= r.map50 <= 100.0 and r.fps > 0
        assert set(r.per_class_ap50) == set(dataset.classes)
        assert r.detector_gmacs_per_frame > r.gmacs_per_frame > 0
    assert dense.full_fraction == 1.0
    # the model is reset per sequence; a FULL frame every 3: sequences of 5, 4, 1, 2 frames -> 2 + 2 + 1 + 1
    assert rgtp.full_fraction == pytest.approx(6 / 12)
    assert rgtp.gmacs_per_frame < dense.gmacs_per_frame
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["preset"] for r in saved] == ["tiny_dense", "tiny_rgtp"]
    lines = (tmp_path / "tiny_rgtp" / "part-000.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 4  # header + one line per sequence
    record = json.loads(lines[1])
    assert [f["kind"] for f in record["frames"]] == ["full", "rollout", "rollout", "full", "rollout"]


def test_perfect_detections_score_100(vid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An oracle head that returns each frame's ground truth (in padded-input pixels) must give mAP50 = 100:
    this checks the frame order, the per-sequence reset, and the mapping of boxes back to frame pixels."""
    dataset = VIDDataset(vid_root, "val")
    truth = iter([f for s in dataset for f in s])

    def oracle(self: ViTDet, features: dict[str, torch.Tensor]) -> list[Detections]:
        frame = next(truth)
        scale = resize_scale(frame.height, frame.width, self.cfg.img_size)
        n = len(frame.labels)
        boxes = torch.tensor(frame.boxes) * scale
        return [Detections(boxes, torch.linspace(0.9, 0.5, n), torch.tensor(frame.labels))]

    monkeypatch.setattr(ViTDet, "detect", oracle)
    (result,) = evaluate_vid(dataset, [RGTP], None, tmp_path, progress=False)
    assert result.map50 == pytest.approx(100.0)


def test_interrupted_run_resumes(
    vid_root: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = VIDDataset(vid_root, "val")
    reference = evaluate_vid(dataset, [RGTP], weights, tmp_path / "ref", progress=False)[0]

    real = vid_eval._run_sequence
    calls: list[str] = []

    def crash_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[3].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vid_eval, "_run_sequence", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate_vid(dataset, [RGTP], weights, tmp_path / "run", progress=False)
    calls.clear()
    monkeypatch.setattr(vid_eval, "_run_sequence", lambda *a, **k: (calls.append(a[3].name), real(*a, **k))[1])
    resumed = evaluate_vid(dataset, [RGTP], weights, tmp_path / "run", progress=False)[0]
    assert calls == [s.name for s in dataset.sequences[2:]]  # only the unfinished sequences ran again
    assert resumed.map50 == pytest.approx(reference.map50)
    assert resumed.frames == reference.frames and resumed.full_fraction == reference.full_fraction


def test_resume_refuses_results_of_another_run(vid_root: Path, weights: Path, tmp_path: Path) -> None:
    dataset = VIDDataset(vid_root, "val", max_sequences=1)
    evaluate_vid(dataset, [RGTP], weights, tmp_path, progress=False)
    other = dataclasses.replace(RGTP, rgtp=vitdet_rgtp(keep_ratio=0.5, reset_every=3))
    with pytest.raises(ResumeError, match="preset"):
        evaluate_vid(dataset, [other], weights, tmp_path, progress=False)


def test_truncated_last_line_is_ignored(vid_root: Path, weights: Path, tmp_path: Path) -> None:
    dataset = VIDDataset(vid_root, "val", max_sequences=2)
    evaluate_vid(dataset, [RGTP], weights, tmp_path, progress=False)
    part = tmp_path / "tiny_rgtp" / "part-000.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed while writing sequence 2
    (result,) = evaluate_vid(dataset, [RGTP], weights, tmp_path, progress=False)
    assert result.frames == 9
    assert len(part.read_text().splitlines()) == 3


def test_class_count_mismatch_is_an_error(vid_root: Path, tmp_path: Path) -> None:
    dataset = VIDDataset(vid_root, "val", max_sequences=1)
    three = dataclasses.replace(RGTP, model=TINY_VITDET)  # a 3-class head
    with pytest.raises(ValueError, match="3 classes"):
        evaluate_vid(dataset, [three], None, tmp_path, progress=False)


def evaluate_args(tmp_path: Path, vid_root: Path, weights: Path) -> list[str]:
    """`rgtp evaluate` arguments for the tiny RGTP preset (saved as a config file) on the fixture."""
    config = tmp_path / "tiny.json"
    save_config(RGTP, config)
    data = ["--data", str(vid_root), "--split", "val", "--quiet"]
    return ["evaluate", "vitdet-vid", "--config", str(config), "--weights", str(weights), *data]


def test_cli_evaluate(vid_root: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = evaluate_args(tmp_path, vid_root, weights)
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| tiny_rgtp |" in printed and "results.json" in printed
    missing = ["evaluate", "vitdet-vid", "--config", str(tmp_path / "tiny.json"), "--data", str(tmp_path / "no")]
    assert main(missing) == 2
    assert "not found" in capsys.readouterr().err


def test_torchrun_two_processes_match_one(vid_root: Path, weights: Path, tmp_path: Path) -> None:
    """Sharded evaluation with 2 CPU processes (gloo) gives the same predictions and mAP as a single process."""
    common = evaluate_args(tmp_path, vid_root, weights)
    assert main([*common, "--out-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rgtp",
        *common,
        "--out-dir",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted((tmp_path / "two" / "tiny_rgtp").glob("part-*.jsonl"))
    assert [p.name for p in parts] == ["part-000.jsonl", "part-001.jsonl"]
    one = json.loads((tmp_path / "one" / "results.json").read_text())[0]
    two = json.loads((tmp_path / "two" / "results.json").read_text())[0]
    assert two["frames"] == one["frames"] == 12
    assert math.isclose(two["map50"], one["map50"], abs_tol=1e-9)
    assert two["full_fraction"] == one["full_fraction"]


def test_a_run_of_the_first_sequences_extends_to_more(vid_root: Path, weights: Path, tmp_path: Path) -> None:
    """--max-items N, then a larger N: the finished sequences are kept and only the new ones run."""
    evaluate_vid(VIDDataset(vid_root, "val", max_sequences=1), [RGTP], weights, tmp_path, progress=False)
    more = VIDDataset(vid_root, "val", max_sequences=3)
    calls: list[str] = []
    real = vid_eval._run_sequence
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vid_eval, "_run_sequence", lambda *a, **k: (calls.append(a[3].name), real(*a, **k))[1])
        (result,) = evaluate_vid(more, [RGTP], weights, tmp_path, progress=False)
    assert calls == [s.name for s in more.sequences[1:]] and result.sequences == 3
