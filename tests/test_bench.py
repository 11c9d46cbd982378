"""The offline benchmark: method grids, targets, report files, and tiny end-to-end runs of `rgtp bench`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rgtp.build import build_model
from rgtp.cli import main
from rgtp.config import ConfigError, Preset, RGTPConfig
from rgtp.lab.bench.methods import ABLATIONS, BASELINES, action_variants, detection_variants, select_methods
from rgtp.lab.bench.report import check_targets, markdown_table, plot
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
    default = {v.method for v in select_methods(variants, None)}
    assert not default & set(ABLATIONS) and {"RGTP+", "RGTP staggered", "Eventful"} <= default
    assert {v.method for v in select_methods(variants, ["all"])} == {v.method for v in variants}
    with pytest.raises(ValueError, match="unknown method"):
        select_methods(variants, ["nope"])


def _rec(method: str, setting: str, gmacs: float, acc: float) -> dict:
    return {"method": method, "setting": setting, "gmacs": gmacs, "accuracy": acc, "state_mb": 0.0, "ms_per_frame": 1.0}


def test_targets_on_the_best_rgtp_point() -> None:
    records = [
        _rec("dense", "", 10.0, 80.0),
        _rec("RGTP", "keep 0.2", 3.0, 78.0),
        _rec("RGTP", "keep 0.4", 5.0, 79.8),
        _rec("RGTP+", "keep 0.1", 3.5, 78.5),  # a variant beyond the paper counts as RGTP
        _rec("Eventful", "keep 0.3", 4.0, 79.5),  # best RGTP at <= 4.0: 78.5 < 79.5
        _rec("ToMe", "keep 0.5", 4.5, 70.0),
        _rec("random", "keep 0.9", 9.0, 80.0),  # RGTP keep 0.4 at 5.0 < 9.0 is 79.8: lost
        _rec("uniform", "keep 0.1", 1.0, 10.0),  # cheaper than every RGTP point: lost, however low
        _rec("RGTP no reset", "keep 0.3", 4.0, 99.0),  # an ablation: neither a baseline nor RGTP
    ]
    t = check_targets(records)
    assert t["budget_gmacs"] == pytest.approx(4.0)
    assert t["rgtp_at_budget"] == "RGTP+ keep 0.1" and t["rgtp_accuracy_at_budget"] == pytest.approx(78.5)
    assert t["loss_at_budget"] == pytest.approx(1.5) and t["target_loss_met"] is False
    assert t["baseline_points_judged"] == 4 and t["baseline_points_beaten"] == 1
    assert t["baselines_lost_to"] == ["Eventful keep 0.3", "random keep 0.9", "uniform keep 0.1"]
    assert t["target_baselines_met"] is False
    assert "RGTP no reset" not in BASELINES


def test_state_and_latency_targets() -> None:
    records = [
        _rec("dense", "", 10.0, 80.0),
        {**_rec("RGTP", "keep 0.2", 3.0, 78.0), "state_mb": 2.0, "p50_ms_per_frame": 10.0, "p95_ms_per_frame": 30.0},
        {**_rec("RGTP staggered", "keep 0.2", 3.2, 78.0), "state_mb": 2.5, "p50_ms_per_frame": 10.0},
        {**_rec("Eventful", "keep 0.3", 4.0, 70.0), "state_mb": 10.0},
    ]
    records[2]["p95_ms_per_frame"] = 12.0
    t = check_targets(records)
    assert t["rgtp_state_mb"] == 2.5 and t["eventful_state_mb"] == 10.0 and t["target_state_met"] is True
    assert t["p95_over_p50"] == {"RGTP keep 0.2": 3.0, "RGTP staggered keep 0.2": 1.2}
    assert t["staggered_p95_over_p50"] == 1.2 and t["target_latency_met"] is True
    from rgtp.lab.bench.tasks import _targets_text

    text = _targets_text(t)
    assert "Target 3" in text and "Target 4" in text and "up to 3.00" in text


def test_frontier_table() -> None:
    from rgtp.lab.bench.report import frontier_table

    records = [_rec("dense", "", 10.0, 80.0), _rec("RGTP", "a", 2.5, 70.0), _rec("RGTP", "b", 3.5, 75.0)]
    records.append({**_rec("Eventful", "a", 5.0, 79.0), "state_mb": 4.0})
    table = frontier_table(records, (0.3, 0.5))
    assert "| RGTP | 70.00 | 75.00 | 0.00 |" in table and "| Eventful |  | 79.00 | 4.00 |" in table


def test_sweep_rows_take_the_best_point_within_the_budget() -> None:
    from rgtp.lab.bench.tasks import sweep_rows

    def result(acc: float) -> dict:
        records = [_rec("dense", "", 10.0, 80.0), _rec("RGTP", "a", 3.0, acc), _rec("RGTP", "b", 5.0, 99.0)]
        return {"targets": {"budget_gmacs": 4.0}, "records": records}

    rows = sweep_rows({0: result(70.0), 3: result(60.0)})
    assert rows == {"dense": [80.0, 80.0], "RGTP": [70.0, 60.0]}
    late = {"targets": {"budget_gmacs": 2.0}, "records": [_rec("dense", "", 10.0, 80.0), _rec("ToMe", "", 3.0, 1.0)]}
    assert sweep_rows({0: late}) == {"dense": [80.0], "ToMe": [None]}  # no point within the budget


def test_table_and_plot(tmp_path: Path) -> None:
    records = [_rec("dense", "", 10.0, 80.0), _rec("RGTP", "keep 0.2", 3.0, 78.0), _rec("RGTP", "keep 0.4", 5.0, 79.0)]
    table = markdown_table(records, "mAP50 (%)", "GMACs per frame", "frame")
    assert table.count("\n") == 4 and "| RGTP | keep 0.2 | 78.00 | 3.0000 | 30% | 1.0 |  |  | 1.00× |" in table
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
    # --retime measures the timing rounds again and nothing else
    before = sum(len(p.read_text().splitlines()) for p in (out / "log").glob("*.jsonl"))
    assert main([*args, "--retime"]) == 0
    lines = [line for p in sorted((out / "log").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert len(lines) == before + 1 and json.loads(lines[-1])["key"] == "time/0"


def test_every_variant_runs(tiny_presets: None) -> None:
    """Each method at each budget builds and runs two frames (detection) or one clip (action) on a tiny model."""
    from rgtp.lab.bench.methods import build_variant
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
    from rgtp.lab.bench import run_bench

    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_bench("nope", out_dir=tmp_path)
    weights = str(_save_weights("pedestrians_det_base", tmp_path / "w.pt"))
    with pytest.raises(ConfigError, match=r"needs --video vtest\.avi"):
        run_bench("pedestrians", out_dir=tmp_path, weights=weights)


def test_cuts_and_sweep_tasks_run(tmp_path: Path, tiny_presets: None) -> None:
    from rgtp.lab.bench.tasks import run_sweep

    weights = str(_save_weights("shapes_det_base", tmp_path / "w.pt"))
    args = ["--weights", weights, "--quiet", "--timing", "2", "--timing-rounds", "1", "--methods", "RGTP+,uniform"]
    assert main(["bench", "cuts", "--out-dir", str(tmp_path / "cuts"), "--max-items", "2", *args]) == 0
    cuts = json.loads((tmp_path / "cuts" / "results.json").read_text())
    assert cuts["data"]["sequences"][0].endswith("_cut16") and cuts["targets"]["p95_over_p50"]
    summary = run_sweep(tmp_path / "sweep", weights, ["RGTP+"], 1, 3, 2, 1, "cpu", False, speeds=(0, 6))
    assert summary["speeds"] == [0, 6] and set(summary["best_within_budget"]) == {"dense", "RGTP+"}
    assert (tmp_path / "sweep" / "pan6" / "results.json").is_file() and (tmp_path / "sweep" / "plot.png").is_file()
    assert "6 px/frame" in (tmp_path / "sweep" / "table.md").read_text()


def test_agreement_task_on_a_video(tmp_path: Path) -> None:
    """The label-free check on a small generated video with the shipped models (a few frames, RGTP only)."""
    pytest.importorskip("av")
    from rgtp.lab.data.synthetic import moving_shapes_video, write_video

    clip, _ = moving_shapes_video(num_frames=16, height=96, width=128, seed=0)
    video = tmp_path / "v.mp4"
    write_video(video, clip)
    args = ["bench", "agreement", "--video", str(video), "--out-dir", str(tmp_path / "a"), "--max-frames", "16"]
    assert main([*args, "--quiet", "--timing", "0", "--methods", "RGTP+"]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    dense = next(r for r in results["records"] if r["method"] == "dense")
    assert dense["accuracy"] in (0.0, 100.0)  # the dense model agrees with itself (0 when it detects nothing)
    assert {r["method"] for r in results["action"]["records"]} == {"dense", "RGTP+"}
    assert results["action"]["clips"] == 1 and results["action"]["records"][0]["accuracy"] == 100.0
    with pytest.raises(ConfigError, match="needs --video"):
        from rgtp.lab.bench import run_bench

        run_bench("agreement", out_dir=tmp_path / "b")


def test_resume_accepts_logged_configs_without_options_added_since() -> None:
    from rgtp.lab.bench.evaluate import same_config
    from rgtp.lab.bench.methods import Variant

    variant = next(v for v in detection_variants(get_preset("shapes_det_rgtp").rgtp) if v.name == "RGTP keep 0.1")
    logged = variant.describe()["config"]
    old = {k: v for k, v in logged.items() if k not in ("pruned_output", "pruned_context")}  # written before them
    old["schedule"] = {k: v for k, v in old["schedule"].items() if k not in ("refresh", "trigger", "cut")}
    assert same_config(json.loads(json.dumps(old)), variant)
    other = {**logged, "pruned_output": "fresh"}
    assert not same_config(other, variant) and not same_config({**logged, "typo": 1}, variant)
    assert same_config(None, Variant("dense", "", None)) and not same_config(logged, Variant("dense", "", None))
