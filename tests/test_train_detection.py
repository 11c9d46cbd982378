"""Faster R-CNN training losses and ViTDet detector training (`rgtp train vitdet`) on tiny generated sets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgtp.build import load_weights
from rgtp.cli import main
from rgtp.config import ConfigError, Preset, ViTDetConfig, save_config
from rgtp.data.detection import DetectionSet, DetSequence
from rgtp.evaluation.records import ResumeError
from rgtp.lab.data import registry as detection_sets
from rgtp.lab.data.registry import build_detection_set
from rgtp.lab.data.synthetic import MOVING_SHAPES, moving_shapes_video
from rgtp.lab.recipes import det_recipe
from rgtp.models.frcnn import FRCNNTrainConfig, match_anchors, sample_indices
from rgtp.models.vitdet import ViTDet, preprocess_frame
from rgtp.ops import box_iou
from rgtp.presets import small_detector
from rgtp.training.detection import DetTrainConfig, FrameSamples, lr_factor, train_vitdet
from rgtp.training.loop import Trainer


def tiny_detector(img: int = 64) -> ViTDetConfig:
    """The small detector cut down: 2 blocks of width 32 on (img / 16)^2 tokens, a thin head."""
    base = small_detector(len(MOVING_SHAPES))
    assert base.head is not None
    head = dataclasses.replace(
        base.head, anchor_sizes=(8, 16, 32, 64, 128), pre_nms_topk=100, post_nms_topk=30, box_conv_dim=16,
        box_fc_dim=32, max_detections=20,
    )  # fmt: skip
    side = img // 16
    return dataclasses.replace(
        base, img_size=img, embed_dim=32, depth=2, num_heads=2, window_size=4, global_blocks=(1,),
        pos_embed_grid=side, rel_pos_grid=side, pyramid_dim=16, head=head,
    )  # fmt: skip


TINY = Preset("tiny_det", tiny_detector(), None, description="tiny detector")
HEAD = FRCNNTrainConfig(rpn_batch_per_image=64, roi_batch_per_image=32)


def tiny_set(sequences: int = 2, frames: int = 4, split: str = "train", seed: int = 0) -> DetectionSet:
    """``moving_shapes_video`` clips (40x64, 3 objects) as a detection set."""
    seqs = []
    for i in range(sequences):
        video, boxes = moving_shapes_video(frames, 40, 64, 3, seed=seed * 100 + i)
        seqs.append(
            DetSequence(
                f"{split}{i}",
                video,
                tuple(np.array([b[:4] for b in f], dtype=np.float32).reshape(-1, 4) for f in boxes),
                tuple(np.array([b[4] for b in f], dtype=np.int64) for f in boxes),
            )
        )
    return DetectionSet("tiny", split, MOVING_SHAPES, tuple(seqs))


def config(**overrides: object) -> DetTrainConfig:
    base = {"lr": 2e-3, "epochs": 2, "batch_size": 3, "warmup_steps": 2, "val_batch_size": 4, "head": HEAD}
    return DetTrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------------------------------
# Matching, sampling, losses


def test_anchor_matching_thresholds_and_low_quality_matches() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with box 0: foreground
            [0.0, 0.0, 10.0, 14.0],  # 100 / 140 = 0.71: foreground
            [0.0, 0.0, 10.0, 20.0],  # 0.5: ignored
            [20.0, 20.0, 30.0, 30.0],  # no overlap: background
            [50.0, 50.0, 62.0, 62.0],  # 100 / 144 = 0.69 with box 1: ignored, but box 1's best anchor -> foreground
            [50.0, 50.0, 65.0, 65.0],  # 0.44 with box 1: ignored
        ]
    )
    labels, matched = match_anchors(gt, anchors, (0.3, 0.7))
    assert labels.tolist() == [1, 1, -1, 0, 1, -1]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]
    labels, _ = match_anchors(torch.zeros(0, 4), anchors, (0.3, 0.7))
    assert labels.tolist() == [0] * 6  # no ground truth: every anchor is background


def test_sampling_caps_positives_and_fills_with_negatives() -> None:
    positive = torch.zeros(100, dtype=torch.bool)
    positive[:10] = True
    negative = ~positive
    negative[95:] = False  # ignored anchors are neither
    pos, neg = sample_indices(positive, negative, 16, 0.5, torch.Generator().manual_seed(0))
    assert len(pos) == 8 and len(neg) == 8 and positive[pos].all() and negative[neg].all()
    assert len(set(pos.tolist())) == 8 and len(set(neg.tolist())) == 8
    again = sample_indices(positive, negative, 16, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], pos) and torch.equal(again[1], neg)  # seeded
    few = positive.clone()
    few[3:] = False
    pos, neg = sample_indices(few, negative, 16, 0.5)
    assert len(pos) == 3 and len(neg) == 13  # too few positives: negatives fill the batch
    pos, neg = sample_indices(positive, torch.zeros(100, dtype=torch.bool), 256, 0.25)
    assert len(pos) == 10 and len(neg) == 0


def test_loss_terms_are_finite_with_and_without_objects_and_leave_inference_alone() -> None:
    torch.manual_seed(0)
    model = ViTDet(TINY.model).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.detect(model(images))
    targets = [(torch.tensor([[4.0, 6.0, 30.0, 28.0]]), torch.tensor([2])), (torch.zeros(0, 4), torch.zeros(0))]
    assert model.head is not None
    terms = model.head.loss_terms(model(images), targets, (64, 64), HEAD, seeds=[1, 2])
    assert set(terms.sums) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert terms.counts["loss_rpn_cls"] == 2 * 64  # detectron2: the nominal anchor batch
    assert 0 < terms.counts["loss_cls"] <= 2 * 32
    losses = terms.normalized()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box_reg"] > 0
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert all(p.grad is not None for p in model.parameters())  # every parameter takes part (DDP needs it)
    again = model.head.losses(model(images), targets, (64, 64), HEAD, seeds=[1, 2])
    torch.testing.assert_close(again, losses)  # seeded sampling: the same losses
    with torch.no_grad():
        after = model.detect(model(images))
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a.boxes, b.boxes)
        torch.testing.assert_close(a.scores, b.scores)


def test_a_tiny_model_overfits_one_image() -> None:
    """80 steps on one frame: the classification losses collapse and every object is found with its class."""
    torch.manual_seed(0)
    cfg = tiny_detector(img=128)
    model = ViTDet(dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, post_nms_topk=50)))  # type: ignore[arg-type]
    video, boxes = moving_shapes_video(1, 80, 128, 3, seed=0)
    image, scale = preprocess_frame(torch.from_numpy(video[0]), 128)
    gt = torch.tensor([b[:4] for b in boxes[0]]) * scale
    labels = torch.tensor([b[4] for b in boxes[0]])
    assert model.head is not None and len(set(labels.tolist())) > 1
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    scores = []  # objectness + class cross-entropy (the box losses start at 0: no foreground RoI at first)
    for step in range(80):
        losses = model.head.losses(model(image[None]), [(gt, labels)], (128, 128), HEAD, seeds=[step])
        opt.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        opt.step()
        scores.append(float(losses["loss_rpn_cls"].detach() + losses["loss_cls"].detach()))
    assert np.mean(scores[-5:]) < 0.2 * np.mean(scores[:5])
    model.eval()
    with torch.no_grad():
        det = model.detect(model(image[None]))[0]
    confident = det.scores > 0.5
    iou = box_iou(gt, det.boxes[confident])  # (G, D)
    same = labels[:, None] == det.labels[confident][None, :]
    assert ((iou > 0.5) & same).any(dim=1).all(), (det, gt, labels)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


def test_recipes_schedule_and_flips() -> None:
    assert det_recipe("shapes", lr=1e-3).lr == 1e-3 and det_recipe("shapes").recipe == "shapes"
    with pytest.raises(ConfigError, match="known"):
        det_recipe("nope")
    with pytest.raises(ConfigError):
        DetTrainConfig(epochs=0)
    cfg = DetTrainConfig(warmup_steps=10, warmup_factor=0.1)
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1) and lr_factor(cfg, 10, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.5) and lr_factor(cfg, 110, 110) == pytest.approx(0.0)
    data = tiny_set(1, 2)
    plain, flips = FrameSamples(data, 64, train=False), FrameSamples(data, 64, train=True, hflip=True)
    seen = set()
    for epoch in range(8):
        a, b = plain[(0, epoch)], flips[(0, epoch)]
        flipped = not torch.equal(a.image, b.image)
        seen.add(flipped)
        if flipped:  # the 64-pixel-wide frame fills the width: the padding (rows 40..63) stays below
            torch.testing.assert_close(b.image[:, :40], a.image[:, :40].flip(-1))
            torch.testing.assert_close(b.boxes[:, [0, 2]], 64 - a.boxes[:, [2, 0]])
    assert seen == {True, False}


def test_training_writes_the_run_and_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = tiny_set(2, 4), tiny_set(1, 4, "val", seed=1)
    full = train_vitdet(train, val, tmp_path / "full", TINY, config(), progress=False)
    assert [h["epoch"] for h in full.history] == [1, 2] and full.history[0]["steps"] == 3
    assert all(np.isfinite(h["loss"]) and h["val"]["frames"] == 4 for h in full.history)
    assert full.best["epoch"] in (1, 2) and (tmp_path / "full" / "config.json").is_file()
    lines = (tmp_path / "full" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    load_weights(ViTDet(TINY.model), tmp_path / "full" / "best.pt")

    real = Trainer._train_epoch

    def crash_in_epoch_2(self: Trainer, ddp: object, opt: object, state: object, epoch: int) -> object:
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, ddp, opt, state, epoch)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_vitdet(train, val, tmp_path / "cut", TINY, config(), progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 3  # epoch 1's steps
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    resumed = train_vitdet(train, val, tmp_path / "cut", TINY, config(workers=0), progress=False)
    timeless = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in r.history] for r in (full, resumed)]
    for h in timeless[0] + timeless[1]:
        h["val"].pop("val_seconds")
    assert timeless[0] == timeless[1]
    one, two = state(tmp_path / "full" / "last.pt"), state(tmp_path / "cut" / "last.pt")
    for k in one:
        assert torch.equal(one[k], two[k]), k
    with pytest.raises(ResumeError, match="train"):
        train_vitdet(train, val, tmp_path / "cut", TINY, config(lr=1e-3), progress=False)


TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train_detection import TINY, config, tiny_set
from rgtp.evaluation.dist import cleanup
from rgtp.training.detection import train_vitdet
try:
    train_vitdet(tiny_set(2, 4), tiny_set(1, 4, "val", seed=1), Path({out!r}), TINY, config(epochs=1), progress=False)
finally:
    cleanup()
"""


def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    """8 frames in global batches of 3: ranks take 2 + 1 frames, and rank 1 has none in the last batch."""
    train, val = tiny_set(2, 4), tiny_set(1, 4, "val", seed=1)
    one = train_vitdet(train, val, tmp_path / "one", TINY, config(epochs=1), progress=False)
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = state(tmp_path / "one" / "last.pt"), state(tmp_path / "two" / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    two = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert two[0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-4)
    assert two[0]["val"]["frames"] == 4 and two[0]["val"]["map50"] == pytest.approx(one.history[0]["val"]["map50"])


# ---------------------------------------------------------------------------------------------------------------------
# Registry and command line


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known sets: shapes, pedestrians"):
        build_detection_set("nope", "train")
    with pytest.raises(ConfigError, match="--video"):
        build_detection_set("pedestrians", "train")
    with pytest.raises(FileNotFoundError, match="video"):
        build_detection_set("pedestrians", "train", video=tmp_path / "none.avi", boxes=tmp_path / "none.json")


def test_cli_trains_on_a_registered_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(
        detection_sets.DETECTION_SETS, "tiny", lambda split, **kw: tiny_set(2, 3, split, seed=len(split))
    )
    config_file = tmp_path / "tiny.json"
    save_config(TINY, config_file)
    out = tmp_path / "run"
    args = [
        "train",
        "vitdet",
        "--config",
        str(config_file),
        "--data",
        "tiny",
        "--out",
        str(out),
        "--max-sequences",
        "1",
    ]
    settings = ["epochs=1", "batch_size=2", "max_steps=2", "lr=1e-3", "val_frames=2", "precision=bf16"]
    assert main([*args, *(a for s in settings for a in ("--set", f"train.{s}")), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best mAP50" in printed and "last.pt" in printed
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["steps"] == 2 and history[0]["val"]["frames"] == 2
    run = json.loads((out / "config.json").read_text())
    assert run["config"]["recipe"] == "shapes" and run["run"]["data"]["train"]["frames"] == 3
    assert run["config"]["precision"] == "bf16"
    load_weights(ViTDet(TINY.model), out / "last.pt")
    assert main(["train", "vitdet", "--config", str(config_file), "--data", "nope", "--out", str(out)]) == 2
    assert "unknown detection set 'nope'" in capsys.readouterr().err
    assert main(["train", "vitdet", "--data", "pedestrians", "--out", str(out)]) == 2
    assert "--video" in capsys.readouterr().err
