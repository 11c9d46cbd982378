"""Configs, presets, overrides, serialisation, weights loading, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_VITDET, TINY_VIVIT, vitdet_rgtp, vivit_rgtp
from rgtp.build import WeightsError, build_model, load_weights
from rgtp.cli import main
from rgtp.config import (
    ConfigError,
    Preset,
    SelectionConfig,
    ViTDetConfig,
    from_dict,
    load_config,
    override,
    save_config,
    to_dict,
)
from rgtp.presets import PAPER, get_preset, preset_names

EXPECTED = {
    "vitdet_vid_672_base",
    "vitdet_vid_672_keep768",
    "vitdet_vid_672_keep512",
    "vitdet_vid_672_keep384",
    "vitdet_vid_672_keep196",
    "vitdet_vid_672_keep64",
    "vitdet_vid_1024_base",
    "vitdet_vid_1024_keep2200",
    "vitdet_vid_1024_keep1400",
    "vitdet_vid_1024_keep750",
    "vitdet_vid_1024_keep400",
    "vitdet_vid_1024_keep75",
    "vivit_k400_base",
    "vivit_k400_keep049",
    "vivit_k400_keep0215",
    "vivit_k400_keep0066",
    "vivit_epic_base",
    "vivit_epic_fg300_bg025",
    "vivit_epic_fg180_bg016",
    "vivit_epic_fg120_bg005",
    "vivit_epic_fg160s05_bg009",
    "vivit_epic_fg96s05_bg003",
    "vivit_epic_fg28s05_bg00",
}


def test_every_paper_row_has_a_preset() -> None:
    assert EXPECTED == set(PAPER) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_round_trip(name: str, tmp_path: Path) -> None:
    preset = get_preset(name)
    assert from_dict(Preset, json.loads(json.dumps(to_dict(preset)))) == preset
    save_config(preset, tmp_path / "p.yaml")
    assert load_config(Preset, tmp_path / "p.yaml") == preset


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean vitdet_vid_672_keep512"):
        get_preset("vitdet_vid_672_keep521")


def test_invalid_values_and_keys() -> None:
    with pytest.raises(ConfigError, match="keep_ratio"):
        SelectionConfig(keep_ratio=0.0)
    with pytest.raises(ConfigError, match="keep_ratio"):
        SelectionConfig(keep_ratio=1.2)
    with pytest.raises(ConfigError, match="patch_size"):
        ViTDetConfig(img_size=100)
    preset = get_preset("vitdet_vid_672_keep512")
    with pytest.raises(ConfigError, match="unknown key 'keep'"):
        override(preset, "rgtp.selection.keep=0.2")
    with pytest.raises(ConfigError, match=r"rgtp\.rollout"):
        override(preset, "rgtp.rollout.form=sideways")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(Preset, {**to_dict(preset), "extra": 1})
    with pytest.raises(ConfigError, match="key=value"):
        override(preset, "rgtp.selection.keep_ratio")


def test_override_types() -> None:
    preset = get_preset("vitdet_vid_672_keep512")
    assert override(preset, "rgtp.selection.keep_ratio=0.5").rgtp.selection.keep_ratio == 0.5
    assert override(preset, "rgtp.schedule.reset_every=none").rgtp.schedule.reset_every is None
    assert override(preset, "model.global_blocks=[1, 3]").model.global_blocks == (1, 3)
    assert override(preset, "rgtp.tracking.radius=0").rgtp.tracking.radius == 0


def test_presets_are_frozen() -> None:
    preset = get_preset("vivit_k400_base")
    with pytest.raises(AttributeError):
        preset.name = "x"  # type: ignore[misc]


def test_load_weights_strict(tmp_path: Path) -> None:
    preset = Preset("tiny", TINY_VITDET, vitdet_rgtp())
    model = build_model(preset)
    good = tmp_path / "good.pt"
    torch.save({"model": build_model(preset, seed=1).state_dict()}, good)
    load_weights(model, good)
    state = model.state_dict()
    bad = dict(state)
    bad.pop("net.pos_embed")
    bad["net.extra"] = torch.zeros(1)
    bad["net.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        load_weights(model, tmp_path / "bad.pt")
    assert "net.pos_embed" in str(err.value) and "net.extra" in str(err.value) and "(3, 3)" in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pt"):
        load_weights(model, tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_weights(model, tmp_path / "missing.pt")


def test_cli_flops_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "vivit_k400_keep049", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "vivit_k400_keep049" and out["unit"] == "MAC" and out["clip_tmacs"] > 1.7


def test_cli_flops_prints_the_presets_own_views_and_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "motions_plus"]) == 0
    assert "(1 view x 8 steps)" in capsys.readouterr().out
    assert main(["flops", "vivit_k400_keep049"]) == 0
    assert "(12 views x 16 steps)" in capsys.readouterr().out


def test_cli_presets_has_headers_and_marks_shipped_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "paper", "weights", "description"]
    rows = {line.split()[0]: line.split()[2] for line in lines[1:] if line and not line.startswith("paper:")}
    assert rows["shapes_det_plus"] == rows["pedestrians_det_plus"] == rows["motions_plus"] == "shipped"
    assert rows["vitdet_vid_672_keep512"] == "-"


def test_cli_run_help_names_its_default_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "default pedestrians_det_plus" in " ".join(capsys.readouterr().out.split())


def test_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["flops", "no_such_preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["flops", "vitdet_vid_672_keep512", "--set", "rgtp.selection.keep_ratio=3"]) == 2
    assert "keep_ratio" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.mp4"), "--preset", "vitdet_vid_672_keep512"]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00garbage" * 100)
    assert main(["run", str(tmp_path / "corrupt.mp4"), "--preset", "vitdet_vid_672_keep512"]) == 2
    assert "corrupt.mp4" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["vitdet", "vivit"])
def test_cli_run_tiny_preset_writes_results_and_video(family: str, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from rgtp.io.video import read_frames
    from rgtp.lab.data.synthetic import moving_shapes_video, write_video

    frames, _ = moving_shapes_video(num_frames=10, height=48, width=80, seed=0)
    write_video(tmp_path / "in.mp4", frames)
    if family == "vitdet":
        preset = Preset("tiny_vitdet", TINY_VITDET, vitdet_rgtp(reset_every=4))
    else:
        preset = Preset("tiny_vivit", TINY_VIVIT, vivit_rgtp(), views=(1, 2))
    save_config(preset, tmp_path / "tiny.yaml")
    args = [
        "run",
        str(tmp_path / "in.mp4"),
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--jsonl",
        str(tmp_path / "out.jsonl"),
        "--out",
        str(tmp_path / "out.mp4"),
        "--segment-frames",
        "6",
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    steps = [r for r in records if "kind" in r]
    if family == "vitdet":
        assert [r["frame"] for r in steps] == list(range(10))
        assert [r["kind"] for r in steps[:5]] == ["full", "rollout", "rollout", "rollout", "full"]
        assert steps[1]["kept"] == 30 and steps[0]["kept"] == 100 and steps[1]["gmacs"] < steps[0]["gmacs"]
        assert len(list(read_frames(tmp_path / "out.mp4"))) == 10
    else:  # 10 frames -> segments of 6 and 4 frames (padded to the 8-frame view), 4 steps each
        assert len(steps) == 8 and [r["kept"] for r in steps[:4]] == [16, 10, 8, 10]
        assert len([r for r in records if "clip_summary" in r]) == 2
        # every source frame is drawn once, at its own size (80x48 is drawn 6x larger so the caption is legible)
        out = list(read_frames(tmp_path / "out.mp4"))
        assert len(out) == 10 and out[0].shape[1] == 80 * 6
    assert all(r["weights"] == "random" for r in steps)


def test_cli_run_with_weights_draws_labelled_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With weights that detect something, `rgtp run` logs the detections (in frame pixels) and draws them."""
    pytest.importorskip("av")
    import dataclasses

    import torch

    from rgtp import annotate
    from rgtp.data.vid import VID_CLASSES
    from rgtp.lab.data.synthetic import moving_shapes_video, write_video
    from rgtp.models.vitdet import ViTDet

    cfg = dataclasses.replace(TINY_VITDET, head=dataclasses.replace(TINY_VITDET.head, num_classes=30))
    torch.manual_seed(0)
    model = ViTDet(cfg)
    with torch.no_grad():
        model.head.roi_heads.box_predictor.cls_score.bias[6] = 8.0  # type: ignore[union-attr, index]: "car"
    torch.save(model.state_dict(), tmp_path / "w.pth")
    frames, _ = moving_shapes_video(num_frames=3, height=40, width=80, seed=0)
    write_video(tmp_path / "in.mp4", frames)
    save_config(Preset("tiny_vitdet", cfg, vitdet_rgtp(reset_every=4)), tmp_path / "tiny.yaml")
    drawn: list[list[str]] = []
    real = annotate.draw_boxes

    def spy(frame, boxes, names, *a, **k):  # type: ignore[no-untyped-def]
        drawn.append(names)
        return real(frame, boxes, names, *a, **k)

    monkeypatch.setattr(annotate, "draw_boxes", spy)
    args = [
        "run",
        str(tmp_path / "in.mp4"),
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--weights",
        str(tmp_path / "w.pth"),
        "--jsonl",
        str(tmp_path / "out.jsonl"),
        "--out",
        str(tmp_path / "out.mp4"),
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    dets = records[0]["outputs"]["detections"]
    assert dets and all(d["label"] == 6 for d in dets)
    # 80x40 frames need no resize; boxes are clipped to the padded 80x80 input (as the reference does)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 80 and 0 <= d["box"][1] <= d["box"][3] <= 80 for d in dets)
    assert len(drawn) == 3 and set(drawn[0]) == {VID_CLASSES[6]}
