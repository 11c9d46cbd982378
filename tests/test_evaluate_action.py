"""Multi-view action evaluation (rgtp.evaluation.action): accuracy against a direct computation, failures, nouns,
sweeps sharing decoding and models, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_VIVIT, vivit_rgtp
from rgtp.build import build_model, build_runner
from rgtp.config import Preset
from rgtp.data.action import ActionClip, ActionDataError, ActionDataset, preset_views
from rgtp.evaluation.action import action_table, evaluate_action
from rgtp.evaluation.records import ResumeError
from rgtp.runtime import run_clip

MODEL = dataclasses.replace(TINY_VIVIT, num_classes=9)  # more classes than top-5
DENSE = Preset("tiny_vivit_dense", MODEL, None, temporal_stride=2)
PRUNED = Preset("tiny_vivit_rgtp", MODEL, vivit_rgtp(keep_ratio=0.5), temporal_stride=2)


class FakeClips(ActionDataset):
    """Random clips of different lengths and sizes; ids listed in ``broken`` fail to load; counts loads."""

    def __init__(self, labels: list[int], nouns: list[int] | None = None, broken: tuple[str, ...] = ()) -> None:
        clips = [
            ActionClip(f"clip{i}", label, Path(f"clip{i}.mp4"), noun=-1 if nouns is None else nouns[i])
            for i, label in enumerate(labels)
        ]
        super().__init__(clips, [f"c{k}" for k in range(MODEL.num_classes)])
        self.broken = set(broken)
        self.loads = 0

    def load(self, clip: ActionClip) -> np.ndarray:
        self.loads += 1
        if clip.id in self.broken:
            raise ActionDataError(f"{clip.path}: cannot decode (test)")
        i = int(clip.id[4:])
        rng = np.random.default_rng(i)
        return rng.integers(0, 256, size=(10 + 3 * i, 36 + 2 * i, 44, 3), dtype=np.uint8)  # (T, H, W, 3)


def _model(preset: Preset, seed: int = 0) -> torch.nn.Module:
    return build_model(preset, seed=seed)


def _direct_top(preset: Preset, weights: Path, dataset: FakeClips) -> list[list[int]]:
    """Top-5 per clip computed without the evaluation code (runtime on the views, mean logits, softmax)."""
    model = build_model(preset)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    runtime = build_runner(preset, model)
    out = []
    for clip in dataset:
        logits = run_clip(runtime, preset_views(dataset.load(clip), preset)).logits  # (views, classes)
        out.append(logits.mean(0).softmax(-1).topk(5).indices.tolist())
    return out


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pth"
    torch.save({"model": _model(DENSE, seed=3).state_dict()}, path)
    return path


def test_accuracy_matches_direct_computation_and_failures_are_listed(tmp_path: Path, weights: Path) -> None:
    probe = FakeClips([0] * 5)
    tops = {p.name: _direct_top(p, weights, probe) for p in (DENSE, PRUNED)}
    # Labels: clips 0, 1 right at top-1 for the dense model; clip 2 right only within top-5; clip 3 wrong; 4 broken.
    labels = [tops["tiny_vivit_dense"][0][0], tops["tiny_vivit_dense"][1][0], tops["tiny_vivit_dense"][2][3]]
    wrong = next(k for k in range(9) if k not in tops["tiny_vivit_dense"][3])
    dataset = FakeClips([*labels, wrong, 0], broken=("clip4",))

    results = evaluate_action("vivit-k400", dataset, [DENSE, PRUNED], weights, tmp_path / "out", progress=False)
    dense, pruned = results
    assert (dense.clips, dense.failed, list(dense.failed_ids)) == (4, 1, ["clip4"])
    assert "cannot decode" in dense.failed_ids["clip4"]
    assert dense.top1 == pytest.approx(50.0) and dense.top5 == pytest.approx(75.0)
    expected = [dataset[i].label in tops["tiny_vivit_rgtp"][i][:1] for i in range(4)]
    assert pruned.top1 == pytest.approx(100.0 * sum(expected) / 4)
    assert pruned.tmacs_per_clip < dense.tmacs_per_clip and dense.clips_per_s > 0
    assert dataset.loads == 5  # one decode per clip for both presets
    assert dense.noun_top1 is None
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["preset"] for r in saved] == ["tiny_vivit_dense", "tiny_vivit_rgtp"]
    assert "| tiny_vivit_rgtp | 4 | 1 |" in action_table(results)


def test_resume_reruns_only_failed_clips(tmp_path: Path, weights: Path) -> None:
    dataset = FakeClips([0, 1, 2], broken=("clip1",))
    first = evaluate_action("vivit-k400", dataset, [PRUNED], weights, tmp_path, progress=False)[0]
    assert first.failed == 1
    dataset.broken.clear()  # the file was repaired
    dataset.loads = 0
    second = evaluate_action("vivit-k400", dataset, [PRUNED], weights, tmp_path, progress=False)[0]
    assert dataset.loads == 1  # only the failed clip ran again
    assert (second.clips, second.failed) == (3, 0)
    dataset.loads = 0
    third = evaluate_action("vivit-k400", dataset, [PRUNED], weights, tmp_path, progress=False)[0]
    assert dataset.loads == 0 and third.top1 == second.top1
    with pytest.raises(ResumeError):
        evaluate_action("vivit-k400", dataset, [PRUNED], None, tmp_path, progress=False)  # other weights


def test_noun_head_from_weights_gives_noun_and_action_accuracy(tmp_path: Path) -> None:
    with_nouns = dataclasses.replace(DENSE, model=dataclasses.replace(MODEL, num_nouns=7))
    model = _model(with_nouns, seed=1)
    path = tmp_path / "nouns.pth"
    torch.save({"model": model.state_dict()}, path)
    probe = FakeClips([0, 0])
    with torch.no_grad():
        logits = [model(preset_views(probe.load(c), with_nouns)) for c in probe]  # (views, 9 + 7)
    verbs = [int(x[:, :9].mean(0).argmax()) for x in logits]
    nouns = [int(x[:, 9:].mean(0).argmax()) for x in logits]
    dataset = FakeClips(verbs, nouns=[nouns[0], (nouns[1] + 1) % 7])
    result = evaluate_action("vivit-epic", dataset, [DENSE], path, tmp_path / "out", progress=False)[0]
    assert result.top1 == 100.0 and result.noun_top1 == 50.0 and result.action_top1 == 50.0
    assert "action top-1" in action_table([result])


def test_wrong_class_count_is_refused(tmp_path: Path) -> None:
    dataset = FakeClips([0])
    dataset.classes = dataset.classes[:3]
    with pytest.raises(ValueError, match="predicts 9 classes but the dataset has 3"):
        evaluate_action("vivit-k400", dataset, [DENSE], None, tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# The command line on a generated Kinetics-400 layout, in one process and under torchrun


K400_MODEL = dataclasses.replace(TINY_VIVIT, num_classes=400)


@pytest.fixture
def k400_root(tmp_path: Path) -> Path:
    """A val split of 5 clips: 4 short mp4 files and one whose file is missing."""
    pytest.importorskip("av")
    from rgtp.data.kinetics import KINETICS400_CLASSES
    from rgtp.io.video import VideoWriter

    root = tmp_path / "k400"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i in range(5):
        label = KINETICS400_CLASSES[7 * i]
        rows.append(f"{label},vid{i},{i},{i + 10},val")
        if i == 3:
            continue  # missing
        path = root / "val" / f"vid{i}_{i:06d}_{i + 10:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = np.random.default_rng(i).integers(0, 256, size=(12 + 4 * i, 40, 56, 3), dtype=np.uint8)
        with VideoWriter(path, 25.0) as writer:
            for frame in frames:
                writer.write(frame)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.csv").write_text("\n".join(rows) + "\n")
    return root


def _cli_args(tmp_path: Path, root: Path) -> list[str]:
    from rgtp.config import save_config

    config = tmp_path / "tiny_k400.json"
    save_config(Preset("tiny_k400", K400_MODEL, vivit_rgtp(keep_ratio=0.5), temporal_stride=2), config)
    weights = tmp_path / "k400.pth"
    torch.save({"model": _model(Preset("x", K400_MODEL), seed=5).state_dict()}, weights)
    return [
        "evaluate",
        "vivit-k400",
        "--config",
        str(config),
        "--weights",
        str(weights),
        "--data",
        str(root),
        "--quiet",
    ]


def test_cli_evaluate_k400(k400_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rgtp.cli import main

    assert main([*_cli_args(tmp_path, k400_root), "--out-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| tiny_k400 | 4 | 1 |" in printed
    result = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    error = result["failed_ids"]["vid3_000003_000013"]
    assert list(result["failed_ids"]) == ["vid3_000003_000013"] and "video file not found" in error
    val = k400_root / "val"
    assert f"{val}/vid3_000003_000013.* and {val}/*/vid3_000003_000013.*" in error  # both layouts searched


def test_torchrun_two_processes_match_one_k400(k400_root: Path, tmp_path: Path) -> None:
    """Sharded evaluation with 2 CPU processes (gloo): the same per-clip predictions and accuracy as one process."""
    import os
    import subprocess
    import sys

    from rgtp.cli import main

    common = _cli_args(tmp_path, k400_root)
    assert main([*common, "--out-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rgtp"]
    proc = subprocess.run(
        [*cmd, *common, "--out-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted((tmp_path / "two" / "tiny_k400").glob("part-*.jsonl"))
    assert [p.name for p in parts] == ["part-000.jsonl", "part-001.jsonl"]

    def predictions(run: str) -> dict[str, list[int]]:
        lines = [
            json.loads(x)
            for p in sorted((tmp_path / run / "tiny_k400").glob("part-*.jsonl"))
            for x in p.read_text().splitlines()[1:]
        ]
        return {r["key"]: r.get("top", r.get("error")) for r in lines}

    assert predictions("two") == predictions("one")
    one = json.loads((tmp_path / "one" / "results.json").read_text())[0]
    two = json.loads((tmp_path / "two" / "results.json").read_text())[0]
    assert (two["clips"], two["failed"], two["top1"], two["top5"]) == (
        one["clips"],
        one["failed"],
        one["top1"],
        one["top5"],
    )


def test_more_clips_extend_a_finished_run_and_nothing_readable_is_an_error(tmp_path: Path, weights: Path) -> None:
    """--max-items 2 then 3: the two finished clips are kept. A split of which no clip reads is an error that names
    where the media were searched, not top-1 0.00."""
    evaluate_action("vivit-k400", FakeClips([0, 1]), [PRUNED], weights, tmp_path, progress=False)
    more = FakeClips([0, 1, 2])
    result = evaluate_action("vivit-k400", more, [PRUNED], weights, tmp_path, progress=False)[0]
    assert more.loads == 1 and result.clips == 3
    broken = FakeClips([0, 1], broken=("clip0", "clip1"))
    with pytest.raises(ActionDataError, match=r"none of the 2 clips of split 'val' could be read \(media searched in"):
        evaluate_action("vivit-k400", broken, [PRUNED], weights, tmp_path / "b", progress=False)
