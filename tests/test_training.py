"""Spatial-feature caching, temporal fine-tuning and whole-model training of tiny ViViTs on generated clips."""

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

from conftest import TINY_VIVIT, randomize_, vivit_rgtp
from rgtp.build import load_weights
from rgtp.cli import main
from rgtp.config import ConfigError, Preset, save_config
from rgtp.data.action import ActionClip, ActionDataError, ActionDataset, preset_views
from rgtp.evaluation.records import ResumeError
from rgtp.models.vivit import ViViT
from rgtp.presets import get_preset
from rgtp.training import (
    FeatureCache,
    cache_spatial,
    default_splits,
    make_config,
    random_view,
    recipe_for,
    train_temporal,
    train_vivit,
)
from rgtp.training import loop as training_loop
from rgtp.training import vivit as vivit_training
from rgtp.training.loop import Trainer
from rgtp.training.vivit import ClassifierTask, TrainConfig

DENSE = Preset("tiny_dense", TINY_VIVIT, None, description="tiny dense ViViT")
RGTP = Preset("tiny_rgtp", TINY_VIVIT, vivit_rgtp(keep_ratio=0.5, reset_every=2), description="tiny RGTP ViViT")
FEATURES = (12, TINY_VIVIT.num_steps, TINY_VIVIT.embed_dim)  # (views, steps, C)


class FakeClips(ActionDataset):
    """Random uint8 clips (12 frames, 36x44) whose brightness depends on the label; ``bad`` clips fail to load."""

    name = "fake"

    def __init__(self, n: int, bad: tuple[int, ...] = (), offset: int = 0, nouns: bool = False) -> None:
        clips = [
            ActionClip(f"clip{offset + i}", i % 5, Path(f"/videos/{offset + i}.mp4"), noun=(i % 3 if nouns else -1))
            for i in range(n)
        ]
        super().__init__(clips, [f"class{k}" for k in range(5)], ["a", "b", "c"] if nouns else None)
        self.bad = {f"clip{offset + i}" for i in bad}
        self.loads: list[str] = []

    def load(self, clip: ActionClip) -> np.ndarray:
        self.loads.append(clip.id)
        if clip.id in self.bad:
            raise ActionDataError(f"cannot decode {clip.path}")
        rng = np.random.default_rng(int(clip.id[4:]))
        frames = rng.integers(0, 60, (12, 36, 44, 3)) + 40 * clip.label
        return frames.astype(np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.save({"model": randomize_(ViViT(TINY_VIVIT)).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    """RGTP features: train = 12 clips (clip 3 fails to load), val = 6 clips."""
    root = tmp_path_factory.mktemp("cache")
    cache_spatial(FakeClips(12, bad=(3,)), RGTP, weights, root, "train", progress=False)
    cache_spatial(FakeClips(6, offset=100), RGTP, weights, root, "val", progress=False)
    return root


def config(**overrides: object) -> TrainConfig:
    base = {"lr": 3e-3, "epochs": 2, "batch_size": 4, "dropout": 0.0}
    return make_config("k400", **{**base, **overrides})


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------------------------------
# Caching


def test_cache_layout_and_failures(cache: Path) -> None:
    files = sorted(p.name for p in (cache / "train").glob("*.npz"))
    assert files == [f"{i:07d}.npz" for i in range(12) if i != 3]
    meta = json.loads((cache / "train" / "meta.json").read_text())
    assert meta["preset"] == "tiny_rgtp" and meta["config"]["name"] == "tiny_rgtp"
    assert meta["count"] == 12 and meta["written"] == 11 and meta["feature_shape"] == list(FEATURES)
    assert meta["failed"] == [{"index": 3, "id": "clip3", "error": "cannot decode /videos/3.mp4"}]
    features = FeatureCache(cache / "train")
    assert len(features) == 11
    x, label, noun = features[(4, 0)]  # the 5th file is clip 5
    assert x.shape == FEATURES and x.dtype == torch.float32 and (label, noun) == (0, -1)
    with np.load(cache / "train" / "0000005.npz") as data:
        assert str(data["id"]) == "clip5"


def test_cache_resumes_and_refuses_another_run(tmp_path: Path, weights: Path) -> None:
    data = FakeClips(5, bad=(1,))
    first = cache_spatial(data, DENSE, weights, tmp_path, "val", dtype="float16", progress=False)
    assert first.written == 4 and first.failed == {"clip1": "cannot decode /videos/1.mp4"}
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "val").glob("*.npz")}
    again = FakeClips(5)  # clip 1 can be read now
    second = cache_spatial(again, DENSE, weights, tmp_path, "val", dtype="float16", progress=False)
    assert again.loads == ["clip1"]  # only the missing clip ran again
    assert second.written == 5 and not second.failed
    assert json.loads((tmp_path / "val" / "meta.json").read_text())["failed"] == []
    assert all((tmp_path / "val" / n).stat().st_mtime_ns == t for n, t in before.items())
    assert FeatureCache(tmp_path / "val")[0][0].shape == FEATURES
    with pytest.raises(ResumeError, match="preset"):
        cache_spatial(again, RGTP, weights, tmp_path, "val", dtype="float16", progress=False)


def test_rgtp_features_differ_from_dense(tmp_path: Path, cache: Path, weights: Path) -> None:
    cache_spatial(FakeClips(2), DENSE, weights, tmp_path, "train", progress=False)
    dense = FeatureCache(tmp_path / "train")[0][0]
    pruned = FeatureCache(cache / "train")[0][0]
    assert dense.shape == pruned.shape == FEATURES
    assert not torch.allclose(dense, pruned, atol=1e-3)
    model = ViViT(TINY_VIVIT)
    load_weights(model, weights)
    with torch.no_grad():
        expected = model.spatial_features(preset_views(FakeClips(1).load(FakeClips(1)[0]), DENSE))
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


CACHE_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_training import RGTP, FakeClips
from rgtp.evaluation.dist import cleanup
from rgtp.training import cache_spatial
try:
    cache_spatial(FakeClips(12, bad=(3,)), RGTP, Path({weights!r}), Path({out!r}), "train", progress=False)
finally:
    cleanup()
"""


def test_torchrun_cache_matches_one_process(cache: Path, weights: Path, tmp_path: Path) -> None:
    """2 gloo processes write the files of one process; the first lists every process's failures in meta.json."""
    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT.format(tests=str(Path(__file__).parent), weights=str(weights), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = FeatureCache(cache / "train"), FeatureCache(tmp_path / "train")
    assert [f.name for f in two.files] == [f.name for f in one.files]
    assert two.meta["failed"] == one.meta["failed"] and two.meta["written"] == 11 and two.meta["complete"]
    for i in range(len(one)):
        torch.testing.assert_close(two[i][0], one[i][0])


# ---------------------------------------------------------------------------------------------------------------------
# Temporal fine-tuning


def test_recipes() -> None:
    k400, epic = (make_config(recipe_for(get_preset(n))) for n in ("vivit_k400_keep049", "vivit_epic_fg180_bg016"))
    assert (k400.recipe, k400.lr, k400.epochs, k400.batch_size) == ("k400", 2e-6, 10, 16)
    assert (epic.recipe, epic.lr, epic.epochs, epic.batch_size) == ("epic", 1e-5, 5, 8)
    for cfg in (k400, epic):
        assert (cfg.weight_decay, cfg.seed, cfg.dropout, cfg.double_softmax) == (0.05, 42, 0.5, False)
    assert make_config("epic", lr=1e-3, epochs=None).lr == 1e-3
    with pytest.raises(ConfigError, match="recipe"):
        recipe_for(DENSE)  # 5 classes: neither Kinetics nor EPIC
    import rgtp.lab.recipes  # noqa: F401  (the lab's recipe of the small motions ViViT joins the paper's)

    motions = make_config(recipe_for(get_preset("motions_base")))
    assert (motions.recipe, motions.lr, motions.cosine) == ("motions", 3e-4, True)
    assert default_splits(motions, get_preset("motions_base")) == ("train", "val")


def test_double_softmax_loss() -> None:
    model = ViViT(TINY_VIVIT)
    logits, labels, nouns = torch.randn(6, 5), torch.arange(6) % 5, torch.full((6,), -1)
    plain = vivit_training._losses(model, logits, labels, nouns, False, double=False)
    double = vivit_training._losses(model, logits, labels, nouns, False, double=True)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    ce_of_probs = torch.nn.functional.cross_entropy(logits.softmax(-1), labels, reduction="none")
    torch.testing.assert_close(double, ce_of_probs)


def test_fine_tuning_reduces_loss_and_trains_only_the_temporal_model(
    cache: Path, weights: Path, tmp_path: Path
) -> None:
    result = train_temporal(cache, tmp_path, RGTP, weights, config(epochs=4), ("train", "val"), progress=False)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4] and history == result.history
    losses = [h["train_loss"] for h in history[1:]]
    assert losses[-1] < losses[0]
    assert history[0]["val"]["clips"] == 6 and history[1]["train_samples"] == 11 and history[1]["steps"] == 3
    start, last, best = state(weights), state(tmp_path / "last.pt"), state(tmp_path / "best.pt")
    for name, value in last.items():
        moved = not torch.equal(value, start[name])
        assert moved == name.startswith(("temporal.", "head.")), name
    for path in ("last.pt", "best.pt"):  # loadable as evaluation weights
        load_weights(ViViT(TINY_VIVIT), tmp_path / path)
    best_epoch = max(history, key=lambda h: h["val"]["top1"])["epoch"]
    assert result.best["epoch"] == best_epoch
    assert torch.load(tmp_path / "best.pt", weights_only=True)["rgtp_meta"]["epoch"] == best_epoch
    if best_epoch == 4:
        assert all(torch.equal(best[k], last[k]) for k in last)

    cfg = config(epochs=1, double_softmax=True)
    double = train_temporal(cache, tmp_path / "double", RGTP, weights, cfg, ("train", "val"), progress=False)
    loss = double.history[1]["train_loss"]
    assert np.log(1 + 4 / np.e) <= loss <= np.log(4 + np.e)  # the cross-entropy of probabilities is bounded
    assert not torch.equal(state(tmp_path / "double" / "last.pt")["head.weight"], start["head.weight"])


def test_resume_gives_the_same_weights(
    cache: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(epochs=3, dropout=0.5)  # dropout: the random state must continue exactly too
    whole = train_temporal(cache, tmp_path / "whole", RGTP, weights, cfg, ("train", "val"), progress=False)

    real = Trainer._train_epoch

    def crash_in_epoch_2(self: Trainer, ddp: object, opt: object, state: object, epoch: int) -> object:
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, ddp, opt, state, epoch)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_temporal(cache, tmp_path / "cut", RGTP, weights, cfg, ("train", "val"), progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    resumed = train_temporal(cache, tmp_path / "cut", RGTP, weights, cfg, ("train", "val"), progress=False)
    a, b = state(tmp_path / "whole" / "last.pt"), state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in whole.history]
    again = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in resumed.history]
    for h in (*strip, *again):
        h["val"] = {k: v for k, v in h["val"].items() if k != "val_seconds"}
    assert again == strip

    more = train_temporal(cache, tmp_path / "cut", RGTP, weights, config(epochs=4, dropout=0.5), progress=False)
    assert [h["epoch"] for h in more.history] == [0, 1, 2, 3, 4]  # more epochs continue the run
    with pytest.raises(ResumeError, match="train"):
        train_temporal(cache, tmp_path / "cut", RGTP, weights, config(epochs=4, lr=1.0), progress=False)


def test_noun_head_is_trained_on_request_when_the_cache_has_nouns(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY_VIVIT, num_nouns=3)
    torch.manual_seed(1)
    weights = tmp_path / "nouns.pth"
    torch.save({"model": ViViT(cfg).state_dict()}, weights)
    for split, n in (("train", 6), ("val", 3)):
        cache_spatial(FakeClips(n, nouns=True), DENSE, weights, tmp_path / "cache", split, progress=False)
    frozen = train_temporal(tmp_path / "cache", tmp_path / "verbs", DENSE, weights, config(epochs=1), progress=False)
    assert frozen.history[-1]["epoch"] == 1  # by default (the paper) the noun head stays as it was
    assert torch.equal(state(tmp_path / "verbs" / "last.pt")["head_noun.weight"], state(weights)["head_noun.weight"])
    cfg = config(epochs=1, max_steps=1, train_nouns=True)
    result = train_temporal(tmp_path / "cache", tmp_path / "run", DENSE, weights, cfg, progress=False)
    assert result.history[1]["steps"] == 1 and result.history[1]["train_samples"] == 4
    assert {"noun_top1", "action_top1"} <= set(result.history[-1]["val"])
    assert not torch.equal(state(tmp_path / "run" / "last.pt")["head_noun.weight"], state(weights)["head_noun.weight"])


def train_args(cache: Path, weights: Path, config_file: Path, out: Path) -> list[str]:
    return [
        "train", "temporal", "--cache", str(cache), "--config", str(config_file), "--weights", str(weights),
        "--out", str(out), "--recipe", "k400", "--set", "train.lr=3e-3", "--set", "train.epochs=2",
        "--set", "train.batch_size=5", "--set", "train.dropout=0", "--quiet",
    ]  # fmt: skip


def test_cli_torchrun_two_processes_match_one(
    cache: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 gloo processes give the weights of 1 process; batches of 5 over 11 clips leave rank 1 empty in the last."""
    config_file = tmp_path / "tiny.json"
    save_config(RGTP, config_file)
    assert main(train_args(cache, weights, config_file, tmp_path / "one")) == 0
    assert "best top-1" in capsys.readouterr().out
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rgtp"]
    proc = subprocess.run(
        [*cmd, *train_args(cache, weights, config_file, tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("temporal fine-tuning of") == 1  # only the first process logs
    one, two = state(tmp_path / "one" / "last.pt"), state(tmp_path / "two" / "last.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    h1, h2 = (
        [json.loads(line) for line in (tmp_path / d / "history.jsonl").read_text().splitlines()] for d in ("one", "two")
    )
    for a, b in zip(h1, h2, strict=True):
        assert a["val"]["clips"] == b["val"]["clips"] == 6 and a["val"]["top1"] == b["val"]["top1"]
        assert a.get("train_loss", 0) == pytest.approx(b.get("train_loss", 0), rel=1e-5)
    # the preset defaults to the cache's; a missing cache is a clean error
    assert main(["train", "temporal", "--cache", str(tmp_path / "none"), "--weights", str(weights), "--out", "x"]) == 2
    assert "no feature cache" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Whole-model training


def test_random_view() -> None:
    video = FakeClips(1).load(FakeClips(1)[0])
    a = random_view(video, DENSE, np.random.default_rng(0))
    b = random_view(video, DENSE, np.random.default_rng(0))
    assert a.shape == (3, TINY_VIVIT.num_frames, 32, 32) and torch.equal(a, b)
    assert any(not torch.equal(a, random_view(video, DENSE, np.random.default_rng(s))) for s in range(1, 5))
    views = preset_views(video, DENSE)  # same normalisation and resize as the evaluation views
    assert abs(a.mean().item() - views.mean().item()) < 0.2


def test_whole_model_training(tmp_path: Path, weights: Path) -> None:
    train, val = FakeClips(7, bad=(2,)), FakeClips(3, offset=50)
    result = train_vivit(train, val, tmp_path, DENSE, weights, config(epochs=2, batch_size=3), progress=False)
    assert [h["steps"] for h in result.history[1:]] == [3, 3]
    assert result.history[1]["train_samples"] == 6 and result.history[-1]["val"]["clips"] == 3
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed == {"train": {"clip2": "cannot decode /videos/2.mp4"}, "val": {}}
    start, last = state(weights), state(tmp_path / "last.pt")
    assert not torch.equal(last["spatial.blocks.0.attn.qkv.weight"], start["spatial.blocks.0.attn.qkv.weight"])
    load_weights(ViViT(TINY_VIVIT), tmp_path / "best.pt")


def test_cli_cache_and_train_vivit_through_the_registry(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = pytest.importorskip("rgtp.data.registry")
    if not hasattr(registry, "ACTION_DATASETS"):
        pytest.skip("rgtp.data.registry has no ACTION_DATASETS table")
    monkeypatch.setitem(
        registry.ACTION_DATASETS, "fake", lambda root, split, **kw: FakeClips(4, bad=(1,), offset=len(split))
    )
    config_file = tmp_path / "tiny.json"
    save_config(DENSE, config_file)
    common = ["--config", str(config_file), "--weights", str(weights), "--dataset", "fake", "--data", str(tmp_path)]
    assert main(["cache-spatial", *common, "--split", "val", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert json.loads((tmp_path / "c" / "val" / "meta.json").read_text())["written"] == 3
    run = ["train", "vivit", *common, "--set", "train.epochs=1", "--out", str(tmp_path / "r"), "--recipe", "k400"]
    settings = ["train.max_steps=1", "train.batch_size=2", "train.precision=bf16", "train.stop_top1=99"]
    assert main([*run, "--quiet", *(a for s in settings for a in ("--set", s))]) == 0
    assert (tmp_path / "r" / "last.pt").is_file()
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert recorded["precision"] == "bf16" and recorded["stop_top1"] == 99.0


def test_curriculum_chains_stages_through_best_weights(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rgtp.data import registry
    from rgtp.lab.recipes import CURRICULA, Stage, train_curriculum

    built: list[tuple[str, str, dict]] = []

    def fake(name: str) -> object:
        def build(root: str, split: str, **options: object) -> FakeClips:
            built.append((name, split, options))
            return FakeClips(4, offset=len(split))

        return build

    monkeypatch.setitem(registry.ACTION_DATASETS, "fake-easy", fake("fake-easy"))
    monkeypatch.setitem(registry.ACTION_DATASETS, "fake", fake("fake"))
    cfg = config(epochs=1, batch_size=2, max_steps=1)
    stages = (Stage("pair", "fake-easy", cfg, ("class0", "class1")), Stage("full", "fake", cfg))
    results = train_curriculum(stages, tmp_path, tmp_path / "run", DENSE, weights, progress=False, cache=True)
    assert [r.out_dir.name for r in results] == ["1-pair", "2-full"]
    assert built == [
        ("fake-easy", "train", {"cache": True, "classes": ["class0", "class1"]}),
        ("fake-easy", "val", {"cache": True, "classes": ["class0", "class1"]}),
        ("fake", "train", {"cache": True}),
        ("fake", "val", {"cache": True}),
    ]
    recorded = [json.loads((r.out_dir / "config.json").read_text())["run"]["weights"] for r in results]
    assert recorded == [str(weights), str(tmp_path / "run" / "1-pair" / "best.pt")]
    # a finished curriculum is not trained again
    before = (results[-1].out_dir / "best.pt").stat().st_mtime_ns
    train_curriculum(stages, tmp_path, tmp_path / "run", DENSE, weights, progress=False, cache=True)
    assert (results[-1].out_dir / "best.pt").stat().st_mtime_ns == before
    # a stage below its min_top1 is trained again from the same start with the next seed
    retry = (Stage("pair", "fake-easy", cfg, None, 100.0, 2),)
    (attempt,) = train_curriculum(retry, tmp_path, tmp_path / "retry", DENSE, weights, progress=False)
    assert attempt.best["top1"] < 100.0 and attempt.out_dir.name == "1-pair-try2"
    seeds = [
        json.loads((tmp_path / "retry" / d / "config.json").read_text())["config"]["seed"]
        for d in ("1-pair", "1-pair-try2")
    ]
    assert seeds == [cfg.seed, cfg.seed + 1]
    with pytest.raises(ConfigError, match="tries"):
        Stage("x", "fake", cfg, tries=0)
    # the benchmark's curriculum: the easy pair, the easy set, then the full set, all in the motions datasets
    motions = CURRICULA["motions"]
    assert [s.dataset for s in motions] == ["motions-easy", "motions-easy", "motions"]
    assert motions[0].classes == ("move_right", "move_left") and all(s.cfg.clip_grad == 1.0 for s in motions)
    assert motions[0].min_top1 == 90.0 and motions[0].tries > 1
    assert all(s.cfg.precision == "bf16" for s in motions)


def test_training_options_are_validated() -> None:
    from rgtp.training.detection import DetTrainConfig

    with pytest.raises(ConfigError, match="clip_grad"):
        TrainConfig(clip_grad=0.0)
    with pytest.raises(ConfigError, match="stop_top1"):
        TrainConfig(stop_top1=0.0)
    for build in (TrainConfig, DetTrainConfig):
        with pytest.raises(ConfigError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
            build(precision="fp16")


def test_bf16_autocast_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from rgtp.training import common

    for native in (True, False):
        monkeypatch.setattr(common, "native_bf16", lambda device, native=native: native)
        with common.training_autocast("bf16", "cpu"):
            assert torch.is_autocast_enabled("cpu") is native
        with common.training_autocast("fp32", "cpu"):
            assert not torch.is_autocast_enabled("cpu")


def test_bf16_training_takes_a_nearby_step(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed precision changes the step (the forward runs in bfloat16) but not by much; weights stay float32."""
    from rgtp.training import common

    monkeypatch.setattr(common, "native_bf16", lambda device: True)  # emulated where the CPU lacks it: slow, not wrong
    train, val = FakeClips(4), FakeClips(2, offset=50)
    steps = {}
    for precision in ("fp32", "bf16"):
        cfg = config(epochs=1, batch_size=4, precision=precision)
        train_vivit(train, val, tmp_path / precision, DENSE, weights, cfg, progress=False)
        steps[precision] = state(tmp_path / precision / "last.pt")
    key = "spatial.blocks.0.attn.qkv.weight"
    start, a, b = state(weights)[key], steps["fp32"][key], steps["bf16"][key]
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    assert 0 < (a - b).norm() < 0.5 * (a - start).norm()


def test_stop_top1_ends_training_and_resumes_stopped(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([20.0, 50.0, 96.0, 99.0, 99.0, 99.0])  # val top-1 before training, then after each epoch

    def validate(task: object, epoch: int, info: object, progress: bool) -> tuple[dict, dict]:
        return {"clips": 2, "top1": next(scores), "top5": 100.0, "loss": 1.0}, {}

    monkeypatch.setattr(ClassifierTask, "validate", validate)
    cfg = config(epochs=5, batch_size=4, max_steps=1, stop_top1=95.0)
    result = train_vivit(FakeClips(4), FakeClips(2, offset=50), tmp_path, DENSE, weights, cfg, progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2] and result.best == {"epoch": 2, "top1": 96.0}
    again = train_vivit(FakeClips(4), FakeClips(2, offset=50), tmp_path, DENSE, weights, cfg, progress=False)
    assert [h["epoch"] for h in again.history] == [0, 1, 2]  # resuming a stopped run trains nothing more
    more = dataclasses.replace(cfg, stop_top1=None)  # but without the stop it goes on (same schedule)
    resumed = train_vivit(FakeClips(4), FakeClips(2, offset=50), tmp_path, DENSE, weights, more, progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------------------------------
# The edges of training (issue 16): every one a clear error, nothing written that is not valid


def test_features_of_another_preset_are_refused(cache: Path, weights: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(RGTP, name="tiny_other", rgtp=vivit_rgtp(keep_ratio=0.25))
    with pytest.raises(ValueError, match=r"holds features of preset 'tiny_rgtp', not of 'tiny_other'"):
        train_temporal(cache, tmp_path / "run", other, weights, config(), ("train", "val"), progress=False)
    changed = dataclasses.replace(RGTP, rgtp=vivit_rgtp(keep_ratio=0.25))  # the same name, another config
    with pytest.raises(ValueError, match="was cached with another tiny_rgtp"):
        train_temporal(cache, tmp_path / "run", changed, weights, config(), ("train", "val"), progress=False)


def test_a_diverging_run_stops_and_keeps_valid_files(cache: Path, weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        config(lr=float("inf"))
    run = tmp_path / "run"
    with pytest.raises(training_loop.NonFiniteLossError, match="not finite"):
        train_temporal(cache, run, RGTP, weights, config(lr=1e30, epochs=3), ("train", "val"), progress=False)
    for line in (run / "history.jsonl").read_text().splitlines():  # what was written is valid JSON (epoch 0 at least)
        record = json.loads(line)
        assert record["epoch"] == 0 or all(np.isfinite(v) for v in (record["train_loss"], record["val"]["loss"]))
    for name in ("last.pt", "best.pt"):
        if (run / name).is_file():
            assert all(torch.isfinite(v).all() for v in state(run / name).values() if v.is_floating_point())


def test_damaged_feature_file_names_its_path(cache: Path, tmp_path: Path) -> None:
    import shutil

    from rgtp.training.cache import CacheError, FeatureCache

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    cached = FeatureCache(copy / "train")
    victim = cached.files[2]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.raises(CacheError, match=rf"{victim.name}: unreadable cached features"):
        cached[2]


def test_training_commands_share_one_rule_for_their_arguments(
    cache: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "tiny.json"
    save_config(RGTP, config_file)
    base = train_args(cache, weights, config_file, tmp_path / "run")
    assert main([*base, "--set", "train.epochs=0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert main([*base, "--set", "train.no_such_setting=1"]) == 2
    assert "--set train.*: override 'no_such_setting': unknown key" in capsys.readouterr().err
    assert main(["flops", "vitdet_vid_672_keep512", "--set", "train.lr=1"]) == 2
    assert "train.* settings are for `rgtp train`" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = base.index("--out") + 1
    assert main([*base[:out], str(a_file), *base[out + 1 :]]) == 2
    assert "is a file: the run needs a directory" in capsys.readouterr().err
    assert main(["train", "vitdet", "--data", "shapes", "--out", str(tmp_path / "d"), "--set", "train.epochs=0"]) == 2
    assert "epochs >= 1" in capsys.readouterr().err
