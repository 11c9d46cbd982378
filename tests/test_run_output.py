"""What `rgtp run` draws and records (issue 16, items 2-5): the source's resolution, legible labels and captions,
class names, per-step ViViT figures, and the side-by-side check against the dense model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_VITDET, TINY_VIVIT, vitdet_rgtp, vivit_rgtp
from rgtp.cli import main
from rgtp.config import Preset, save_config
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime.contract import GridStep

pytest.importorskip("av")
pytest.importorskip("PIL")

BACKGROUND = np.array([24, 24, 24])  # the caption panel's colour


def _video(path: Path, frames: int, hw: tuple[int, int], seed: int = 0) -> Path:
    from rgtp.lab.data.synthetic import moving_shapes_video, write_video

    clip, _ = moving_shapes_video(num_frames=frames, height=hw[0], width=hw[1], seed=seed)
    write_video(path, clip)
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _detector(tmp_path: Path, keep: float | None = None, blind: bool = False) -> tuple[Path, Path]:
    """A tiny ViTDet config (YAML) and weights that detect "car" (VID class 6) everywhere (``blind``: nothing)."""
    from rgtp.models.vitdet import ViTDet

    cfg = dataclasses.replace(TINY_VITDET, head=dataclasses.replace(TINY_VITDET.head, num_classes=30))
    torch.manual_seed(0)
    model = ViTDet(cfg)
    with torch.no_grad():
        model.head.roi_heads.box_predictor.cls_score.bias[30 if blind else 6] = 8.0  # type: ignore[union-attr, index]
    torch.save(model.state_dict(), tmp_path / "w.pth")
    method = vitdet_rgtp(reset_every=4) if keep is None else vitdet_rgtp(keep_ratio=keep, reset_every=4)
    save_config(Preset("tiny_vitdet", cfg, method), tmp_path / "det.yaml")
    return tmp_path / "det.yaml", tmp_path / "w.pth"


def _run(tmp_path: Path, video: Path, config: Path, *extra: str) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    from rgtp.io.video import read_frames

    jsonl, out = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    assert main(["run", str(video), "--config", str(config), "--jsonl", str(jsonl), "--out", str(out), *extra]) == 0
    return _records(jsonl), list(read_frames(out))


# --- item 2: the source's resolution --------------------------------------------------------------------------------


def test_the_annotated_video_has_the_source_resolution_and_boxes_in_source_pixels(tmp_path: Path) -> None:
    config, weights = _detector(tmp_path)
    video = _video(tmp_path / "in.mp4", 3, (200, 640))  # the model sees 80 x 25 (+ padding)
    records, frames = _run(tmp_path, video, config, "--weights", str(weights))
    assert len(frames) == 3 and frames[0].shape[1] == 640 and frames[0].shape[0] > 200  # + the caption panel
    boxes = np.array([d["box"] for r in records if "frame" in r for d in r["outputs"]["detections"]])
    assert len(boxes) and boxes[:, 2].max() > 80  # source pixels, not the model input's
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 640).all() and (boxes[:, [1, 3]] <= 200 + 1e-3).all()
    _, half = _run(tmp_path, video, config, "--weights", str(weights), "--out-scale", "0.5")
    assert half[0].shape[1] == 320


def test_narrow_and_tall_videos_are_drawn_legibly_without_exceeding_encoder_limits(tmp_path: Path) -> None:
    from rgtp.run import legible_factor

    assert legible_factor((576, 768)) == 1 and legible_factor((40, 80)) == 6
    assert legible_factor((2000, 64)) == 2  # 128 x 4000: as wide as allowed with a side <= 4096
    config, _ = _detector(tmp_path)
    _, frames = _run(tmp_path, _video(tmp_path / "tall.mp4", 2, (400, 48)), config, "--weights", "random")
    assert frames[0].shape[1] == 48 * 10 and frames[0].shape[0] >= 4000  # an integer multiple of the source


def test_the_token_grid_is_drawn_at_the_source_scale() -> None:
    """One kept token of an 8-pixel patch on a frame 5x the model input covers a 40 x 40 source square."""
    from rgtp.annotate import render_grid_frame

    frame = np.full((200, 400, 3), 128, dtype=np.uint8)
    step = GridStep(1, FrameKind.ROLLOUT, 1, torch.tensor([[11]]), None, None, {}, None)  # row 1, column 1
    img = render_grid_frame(frame, 80 / 400, 8, (10, 10), step, None, ["x"], legend=False)[:200]
    bright = img.mean(axis=2) > 100  # kept tokens keep their brightness, pruned ones are dimmed
    ys, xs = np.nonzero(bright)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (40, 79, 40, 79)


# --- item 3: legibility ---------------------------------------------------------------------------------------------


def test_labels_of_overlapping_boxes_do_not_hide_each_other() -> None:
    from rgtp.viz import _label_place

    placed: list[tuple[float, float, float, float]] = []
    for box in [(0, 0, 60, 50), (2, 1, 62, 52), (4, 0, 64, 48), (1, 2, 58, 49)]:  # at the top edge, overlapping
        x, y = _label_place(box, 40, 12, 200, 100, placed)
        assert 0 <= x <= 160 and 0 <= y <= 88  # inside the frame
        for r in placed:
            assert min(x + 40, r[2]) <= max(x, r[0]) or min(y + 12, r[3]) <= max(y, r[1])
        placed.append((x, y, x + 40, y + 12))


def test_a_label_at_the_top_edge_is_visible_above_the_caption() -> None:
    """The caption lies under the frame, so a box at the top keeps its label (drawn inside the frame)."""
    from rgtp.annotate import render_grid_frame

    frame = np.zeros((120, 200, 3), dtype=np.uint8)
    dets = (np.array([[10.0, 0.0, 90.0, 60.0]]), np.array([0.9]), np.array([0]))
    img = render_grid_frame(frame, 1.0, 8, (15, 25), None, ["person"], ["caption"], dets, legend=False)
    assert img.shape[0] > 120 and (img[120:] == BACKGROUND).all(axis=2).mean() > 0.5  # the panel is below
    assert (img[:12, 10:90] != 0).any(axis=2).mean() > 0.5  # the filled label at the top is drawn


@pytest.mark.parametrize("width", [120, 214, 640])
def test_captions_wrap_instead_of_being_cut_and_carry_a_legend(width: int) -> None:
    from rgtp.viz import caption_panel, text_size_for, wrapped_lines

    line = "frame 9  ROLLOUT  kept 77/256 tokens  0.134 GMACs  201 ms"
    size = text_size_for(160, width)
    panel = caption_panel(width, [line], font_size=size, legend=True)
    pad = max(2, size // 4)
    assert (panel[:, width - pad + 1 :] == BACKGROUND).all()  # nothing runs into the right edge
    bare = caption_panel(width, [line], font_size=size)
    assert panel.shape[0] > bare.shape[0]  # the legend's rows
    assert wrapped_lines(width, [line], font_size=size) == (1 if width == 640 else 2 if width == 214 else 3)
    yellow = (panel[..., 0] > 230) & (panel[..., 1] > 230) & (panel[..., 2] > 100)  # the colour scale's high end
    assert yellow.any()


def test_detections_in_json_carry_class_names(tmp_path: Path) -> None:
    config, weights = _detector(tmp_path)
    records, frames = _run(tmp_path, _video(tmp_path / "in.mp4", 2, (64, 96)), config, "--weights", str(weights))
    dets = [d for r in records if "frame" in r for d in r["outputs"]["detections"]]
    assert dets and {(d["label"], d["class"]) for d in dets} == {(6, "car")}
    # drawn 5x larger (96 -> 480 px), the boxes are still written in the source's pixels
    assert frames[0].shape[1] == 480
    boxes = np.array([d["box"] for d in dets])
    assert (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 64).all() and boxes[:, 2].max() > 40


def test_class_names_come_from_the_weights_not_a_guess_from_the_count() -> None:
    from rgtp.build import bundled_weights
    from rgtp.presets import get_preset
    from rgtp.run import class_names

    peds = get_preset("pedestrians_det_rgtp").model
    assert class_names(peds, str(bundled_weights("pedestrians_det_rgtp"))) == ("person",)
    assert class_names(peds, "my_one_class_detector.pth") is None  # "class 0": we do not know what it detects
    assert class_names(get_preset("vitdet_vid_672_keep512").model, "vitdet_b_vid.pth")[6] == "car"  # type: ignore[index]
    assert class_names(get_preset("motions_rgtp").model, "random") is None


# --- item 4: ViViT runs ---------------------------------------------------------------------------------------------


def test_vivit_records_per_step_figures_and_shows_its_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rgtp import annotate

    captions: list[list[str]] = []
    real = annotate.caption_panel

    def spy(width, lines, **kw):  # type: ignore[no-untyped-def]
        captions.append(list(lines))
        return real(width, lines, **kw)

    monkeypatch.setattr(annotate, "caption_panel", spy)
    save_config(Preset("tiny_vivit", TINY_VIVIT, vivit_rgtp()), tmp_path / "vivit.yaml")
    video = _video(tmp_path / "in.mp4", 24, (48, 80))
    records, frames = _run(tmp_path, video, tmp_path / "vivit.yaml", "--segment-frames", "12")
    steps = [r for r in records if "step" in r and r["clip"] == 0]
    clips = [r["clip_summary"] for r in records if "clip_summary" in r]
    clip = clips[0]
    assert [s["kind"] for s in steps] == ["full", "rollout", "grid", "rollout"]
    assert steps[0]["gmacs_per_view"] > steps[1]["gmacs_per_view"] > 0  # each step its own, not the clip's mean
    assert all("gmacs" not in s and "ms" not in s and s["ms_all_views"] > 0 for s in steps)
    assert [s["frames"] for s in steps] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # the view drawn: 8 of 12 frames
    assert len(frames) == 24 and [c["source_frames"] for c in clips] == [12, 12]
    assert len(captions) == 24
    for c, clip in enumerate(clips):  # each segment's top class under each of its frames, numbered in the video
        top = clip["top5_names"][0]
        for f, caption in enumerate(captions[12 * c : 12 * (c + 1)]):
            assert caption[0].startswith(f"frame {12 * c + f}: ") and any(top in line for line in caption)
    assert "step 1 ROLLOUT" in captions[12 + 2][0]  # frame 14: the second step of the second segment
    summary = records[-1]["run_summary"]
    assert summary["steps"] == 8 and summary["mean_gmacs_per_step_and_view"] > 0
    assert "8 steps of" in capsys.readouterr().out


@pytest.mark.parametrize(("segment", "stride"), [(20, 2), (5, 2), (30, 3)])
def test_the_view_drawn_is_the_view_the_model_sees(segment: int, stride: int) -> None:
    """ViewGeometry.centre names the frames and the crop that make_views gives the centre view."""
    from rgtp.annotate import ViewGeometry
    from rgtp.data.views import make_views

    h, w, crop, views = 48, 96, 32, (3, 2)
    video = np.zeros((segment, h, w, 3), dtype=np.uint8)
    video[..., 0] = (np.arange(segment) * 8)[:, None, None]  # red: the frame index
    video[..., 1] = (np.arange(w) * 2)[None, None, :]  # green: the column
    x = make_views(video, 4, stride, crop, views) * 0.225 + 0.45  # (6, 3, 4, 32, 32), back in [0, 1]
    g = ViewGeometry.centre((h, w), segment, 4, stride, crop, 8, views)
    seen = x[g.index] * 255
    assert [round(float(v) / 8) for v in seen[0, :, 16, 16]] == list(g.frames)
    columns = g.origin[0] + (np.arange(crop) + 0.5) * g.size / crop  # source column under each view column
    assert np.allclose(seen[1, 0, 16].numpy(), 2 * (columns - 0.5), atol=3)
    assert g.cell == pytest.approx(8 * h / crop) and g.size == pytest.approx(h)


# --- item 5: --compare dense ----------------------------------------------------------------------------------------


def test_compare_dense_draws_both_and_scores_the_detections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faster_coco_eval")
    config, weights = _detector(tmp_path)
    video = _video(tmp_path / "in.mp4", 4, (120, 480))
    records, frames = _run(tmp_path, video, config, "--weights", str(weights), "--compare", "dense")
    assert frames[0].shape[1] == 480 + 4 + 480  # pruned | dense
    per_frame = [r for r in records if "frame" in r]
    assert all(r["dense"]["detections"] and r["dense"]["ms"] > 0 for r in per_frame)
    agreement = records[-1]["run_summary"]["agreement_with_dense"]
    assert 0 <= agreement["map50_vs_dense"] <= 100 and agreement["frames"] == 4
    assert "pruned vs dense: map50_vs_dense" in capsys.readouterr().out
    # keeping every token, the pruned model is the dense one: full agreement
    config_all, _ = _detector(tmp_path, keep=1.0)
    records, _ = _run(tmp_path, video, config_all, "--weights", str(weights), "--compare", "dense")
    assert records[-1]["run_summary"]["agreement_with_dense"]["map50_vs_dense"] == 100.0


def test_compare_dense_says_when_there_is_nothing_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("faster_coco_eval")
    config, weights = _detector(tmp_path, blind=True)
    records, frames = _run(
        tmp_path, _video(tmp_path / "in.mp4", 2, (64, 96)), config, "--weights", str(weights), "--compare", "dense"
    )
    agreement = records[-1]["run_summary"]["agreement_with_dense"]
    assert agreement["map50_vs_dense"] is None and "the dense model found nothing" in agreement["note"]
    assert len(frames) == 2 and "nothing to compare" in capsys.readouterr().out


def test_compare_dense_on_vivit_reports_top1_agreement_and_distance(tmp_path: Path) -> None:
    save_config(Preset("tiny_vivit", TINY_VIVIT, vivit_rgtp()), tmp_path / "vivit.yaml")
    video = _video(tmp_path / "in.mp4", 16, (48, 80))
    records, frames = _run(tmp_path, video, tmp_path / "vivit.yaml", "--segment-frames", "8", "--compare", "dense")
    clips = [r["clip_summary"] for r in records if "clip_summary" in r]
    assert len(clips) == 2 and all(0 <= c["agreement"]["total_variation"] <= 1 for c in clips)
    assert all(len(c["agreement"]["dense_top5_names"]) == 5 for c in clips)
    agreement = records[-1]["run_summary"]["agreement_with_dense"]
    assert agreement["clips"] == 2 and agreement["top1_agreement"] in (0.0, 50.0, 100.0)
    assert agreement["mean_total_variation"] > 0  # pruning changed the probabilities a little
    assert len(frames) == 16 and frames[0].shape[1] == 480 + 4 + 480  # pruned | dense, 80 px drawn 6x


def test_compare_dense_is_refused_for_a_dense_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = _video(tmp_path / "in.mp4", 2, (64, 96))
    assert main(["run", str(video), "--preset", "vitdet_vid_672_base", "--compare", "dense"]) == 2
    assert "already runs the dense model" in capsys.readouterr().err


def test_a_caption_taller_than_reserved_does_not_end_the_video(tmp_path: Path) -> None:
    """Every annotated frame is fitted to the first one's size (a video has one frame size)."""
    from rgtp.io.video import VideoWriter, read_frames
    from rgtp.run import _Pictures

    with VideoWriter(tmp_path / "v.mp4", fps=5) as writer:
        pictures = _Pictures(writer, 1.0)
        for h in (100, 130, 90):
            pictures.write(np.full((h, 64, 3), 200, dtype=np.uint8))
    assert [f.shape for f in read_frames(tmp_path / "v.mp4")] == [(100, 64, 3)] * 3


# --- issue 18: several videos at once ------------------------------------------------------------------------------


def test_several_videos_run_as_one_batch_and_each_matches_its_own_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rgtp run a b c` steps the videos together (a shorter one leaves the batch when it ends); each video's JSON
    lines hold the same kept counts and detections as running it alone."""
    config, weights = _detector(tmp_path)
    videos = [_video(tmp_path / f"v{i}.mp4", n, hw, seed=i) for i, (n, hw) in enumerate([(5, (64, 96)), (3, (80, 80)),
                                                                                       (5, (72, 64))])]  # fmt: skip
    out = tmp_path / "many"
    args = ["--config", str(config), "--weights", str(weights)]
    assert main(["run", *map(str, videos), "--out-dir", str(out), *args]) == 0
    for video in videos:
        together = _records(out / f"{video.stem}.tiny_vitdet.jsonl")
        alone_path = tmp_path / f"{video.stem}.alone.jsonl"
        assert main(["run", str(video), "--jsonl", str(alone_path), *args]) == 0
        alone = _records(alone_path)
        assert len(together) == len(alone) and "run_summary" in together[-1]
        for a, b in zip(alone[:-1], together[:-1], strict=True):
            assert (a["frame"], a["kind"], a["kept"], a["gmacs"]) == (b["frame"], b["kind"], b["kept"], b["gmacs"])
            boxes_a = [d["box"] for d in a["outputs"]["detections"]]
            boxes_b = [d["box"] for d in b["outputs"]["detections"]]
            assert np.allclose(boxes_a, boxes_b, atol=0.2)
    assert max(r["batch"] for r in _records(out / "v0.tiny_vitdet.jsonl") if "batch" in r) == 3
    assert main(["run", *map(str, videos[:2]), "--out", str(tmp_path / "x.mp4"), *args]) == 2
    assert "several videos write to --out-dir" in capsys.readouterr().err
