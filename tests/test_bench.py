"""The offline benchmark: method grids, targets, report files, and tiny end-to-end runs of `rgtp bench`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rgtp.bench.methods import BASELINES, action_variants, detection_variants, select_methods
from rgtp.bench.report import check_targets, interpolate, markdown_table, plot
from rgtp.build import build_model
from rgtp.cli import main
from rgtp.config import ConfigError, Preset, RGTPConfig
from rgtp.presets import PRESETS, get_preset


def test_every_method_has_at_least_five_budgets() -> None:
    det, act = get_preset("shapes_det_rgtp").rgtp, get_preset("motions_rgtp").rgtp
    for variants in (detection_variants(det), action_variants(act)):
        methods = {v.method for v in variants}
        assert {"dense", "RGTP", "Eventful", "ToMe", "random", "uniform"} <= methods
        for method in methods - {"dense"}:
            assert sum(v.method == method for v in variants) >= 5, method
        assert len({v.name for v in variants}) == len(variants)
    assert "MaskVD boxes" in {v.method for v in detection_variants(get_preset("shapes_det_rgtp").rgtp)}


def test_twice_the_resets_halves_the_reset_interval() -> None:
    """The "RGTP 2x resets" variant is RGTP with half the preset's reset interval and nothing else changed."""
    for preset, variants in (("shapes_det_rgtp", detection_variants), ("motions_rgtp", action_variants)):
        base = get_preset(preset).rgtp
        assert base is not None and base.schedule.reset_every is not None
        twice = {v.setting: v.config for v in variants(base) if v.method == "RGTP 2x resets"}
        plain = {v.setting: v.config for v in variants(base) if v.method == "RGTP"}
        assert len(twice) >= 5
        for setting, cfg in twice.items():
            assert isinstance(cfg, RGTPConfig)
            assert cfg.schedule.reset_every == base.schedule.reset_every // 2
            assert dataclasses.replace(cfg, schedule=base.schedule) == plain[setting]


def test_select_methods() -> None:
    variants = action_variants(get_preset("motions_rgtp").rgtp)
    chosen = select_methods(variants, ["rgtp", "ToMe"])
    assert {v.method for v in chosen} == {"dense", "RGTP", "ToMe"}
    with pytest.raises(ValueError, match="unknown method"):
        select_methods(variants, ["nope"])


def _rec(method: str, setting: str, gmacs: float, acc: float) -> dict:
    return {"method": method, "setting": setting, "gmacs": gmacs, "accuracy": acc, "state_mb": 0.0, "ms_per_frame": 1.0}


def test_interpolation_and_targets() -> None:
    curve = [(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]
    assert interpolate(curve, 3.0) == pytest.approx(65.0)
    assert interpolate(curve, 0.5) is None and interpolate(curve, 5.0) is None
    records = [
        _rec("dense", "", 10.0, 80.0),
        _rec("RGTP", "keep 0.2", 3.0, 78.0),
        _rec("RGTP", "keep 0.4", 5.0, 79.8),
        _rec("Eventful", "keep 0.3", 4.0, 79.5),  # RGTP at 4.0: 78.9 < 79.5
        _rec("ToMe", "keep 0.5", 4.5, 70.0),
        _rec("random", "keep 0.9", 9.0, 80.0),  # outside RGTP's range: not judged
        _rec("RGTP no reset", "keep 0.3", 4.0, 99.0),  # an ablation, not a baseline
    ]
    t = check_targets(records)
    assert t["budget_gmacs"] == pytest.approx(4.0)
    assert t["rgtp_accuracy_at_budget"] == pytest.approx(78.9)
    assert t["loss_at_budget"] == pytest.approx(1.1) and t["target_loss_met"] is False
    assert t["baseline_points_judged"] == 2 and t["baseline_points_beaten"] == 1
    assert t["baselines_lost_to"] == ["Eventful keep 0.3"] and t["target_baselines_met"] is False
    assert "RGTP no reset" not in BASELINES


def test_table_and_plot(tmp_path: Path) -> None:
    records = [_rec("dense", "", 10.0, 80.0), _rec("RGTP", "keep 0.2", 3.0, 78.0), _rec("RGTP", "keep 0.4", 5.0, 79.0)]
    table = markdown_table(records, "mAP50 (%)", "GMACs per frame", "frame")
    assert table.count("\n") == 4 and "| RGTP | keep 0.2 | 78.00 | 3.0000 | 30% | 1.0 | 1.00× |" in table
    pytest.importorskip("matplotlib")
    path = plot(records, tmp_path / "p.png", "title", "mAP50 (%)", "GMACs per frame")
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------------
# Tiny end-to-end runs: the real commands on tiny models and a few frames (they must run, not meet the targets)


@pytest.fixture
def tiny_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("shapes_det_base", "shapes_det_rgtp", "motions_base", "motions_rgtp"):
        build = PRESETS[name]
        monkeypatch.setitem(PRESETS, name, lambda build=build: dataclasses.replace(build(), model=_tiny_model(build())))


def _tiny_model(preset: Preset):
    cfg = preset.model
    if preset.family == "vitdet":
        return dataclasses.replace(
            cfg,
            embed_dim=32,
            depth=4,
            num_heads=2,
            global_blocks=(1, 3),
            pyramid_dim=16,
            head=dataclasses.replace(cfg.head, box_conv_dim=16, box_fc_dim=32),
        )
    return dataclasses.replace(cfg, embed_dim=32, depth=4, temporal_depth=1, num_heads=2)  # ToMe needs 4 blocks


def _save_weights(preset_name: str, path: Path) -> Path:
    torch.save({"model": build_model(get_preset(preset_name)).state_dict()}, path)
    return path


@pytest.mark.parametrize(
    ("task", "dense", "items", "methods"),
    [
        ("detection", "shapes_det_base", "1", "RGTP,MaskVD boxes,uniform"),
        ("action", "motions_base", "3", "RGTP,Eventful,ToMe,random"),
    ],
)
def test_bench_cli_end_to_end(
    tmp_path: Path, tiny_presets: None, task: str, dense: str, items: str, methods: str
) -> None:
    weights = _save_weights(dense, tmp_path / "w.pt")
    out = tmp_path / "out"
    args = [
        "bench",
        task,
        "--weights",
        str(weights),
        "--out-dir",
        str(out),
        "--max-items",
        items,
        "--quiet",
        "--timing",
        "1",
        "--timing-rounds",
        "1",
        "--methods",
        methods,
    ]
    if task == "detection":
        args += ["--max-frames", "3"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["records"]} == {"dense", *methods.split(",")}
    for r in results["records"]:
        assert r["gmacs"] > 0 and 0.0 <= r["accuracy"] <= 100.0
        assert r["ms_per_" + ("frame" if task == "detection" else "clip")] > 0
    dense_rec = next(r for r in results["records"] if r["method"] == "dense")
    rgtp = [r for r in results["records"] if r["method"] == "RGTP"]
    assert len(rgtp) >= 5 and all(r["gmacs"] < dense_rec["gmacs"] for r in rgtp)
    assert "targets" in results and (out / "table.md").read_text().startswith("# ")
    assert (out / "plot.png").stat().st_size > 1000
    # resuming reuses every finished variant
    log_size = sum(p.stat().st_size for p in (out / "log").glob("*.jsonl"))
    assert main(args) == 0
    assert sum(p.stat().st_size for p in (out / "log").glob("*.jsonl")) == log_size


def test_every_variant_runs(tiny_presets: None) -> None:
    """Each method at each budget builds and runs two frames (detection) or one clip (action) on a tiny model."""
    from rgtp.bench.methods import build_variant
    from rgtp.runtime import run_clip, stream

    det = build_model(get_preset("shapes_det_base"))
    frames = [torch.randn(1, 3, 256, 256) for _ in range(2)]
    for variant in detection_variants(get_preset("shapes_det_rgtp").rgtp):
        ticks = list(stream(build_variant(variant, det), frames))
        assert ticks[-1].output.detections is not None and ticks[-1].state_nbytes >= 0, variant.name
    vivit = build_model(get_preset("motions_base"))
    clip = torch.randn(1, 3, 16, 80, 80)
    for variant in action_variants(get_preset("motions_rgtp").rgtp):
        assert run_clip(build_variant(variant, vivit), clip).pooled.shape == (1, 8, 32), variant.name


def test_bench_errors(tmp_path: Path) -> None:
    from rgtp.bench import run_bench

    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_bench("nope", out_dir=tmp_path)
    weights = str(_save_weights("pedestrians_det_base", tmp_path / "w.pt"))
    with pytest.raises(ConfigError, match=r"needs --video vtest\.avi"):
        run_bench("pedestrians", out_dir=tmp_path, weights=weights)
