"""The runner contract, the registries and the driver: every method on every model family the same way."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
import torch

from conftest import TINY_VITDET, TINY_VIVIT, vitdet_rgtp, vivit_rgtp
from rgtp.accounting import count_preset
from rgtp.cli import main
from rgtp.config import ConfigError, EventfulConfig, Preset, RGTPConfig, ToMeConfig, from_dict, override, to_dict
from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT
from rgtp.presets import get_preset
from rgtp.pruning.schedule import FrameKind
from rgtp.pruning.state import StreamState
from rgtp.runtime import (
    METHODS,
    SELECTORS,
    ClassStep,
    GridStep,
    Selector,
    make_runner,
    method_name,
    register_selector,
    run_clip,
    stream,
)
from rgtp.timing import measure, measure_interleaved, stopwatch

GRID_METHODS: dict[str, Any] = {
    "dense": None,
    "rgtp": vitdet_rgtp(keep_ratio=0.3),
    "eventful": EventfulConfig(keep_ratio=0.3),
    "tome": ToMeConfig(keep_ratio=0.5, spread="front"),
}
CLS_METHODS: dict[str, Any] = {**GRID_METHODS, "rgtp": vivit_rgtp(keep_ratio=0.5)}
#: What each method reports for a reduced step.
REDUCED = {"dense": FrameKind.FULL, "rgtp": FrameKind.ROLLOUT, "eventful": FrameKind.GATED, "tome": FrameKind.MERGED}


def _frames(n: int, batch: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(batch, 3, TINY_VITDET.img_size, TINY_VITDET.img_size, generator=gen)
    return [torch.roll(base, shifts=t, dims=-1) for t in range(n)]


@pytest.mark.parametrize("name", sorted(GRID_METHODS))
def test_every_method_on_a_grid_model_follows_the_contract(tiny_vitdet: ViTDet, name: str) -> None:
    runner = make_runner(tiny_vitdet, GRID_METHODS[name], head=tiny_vitdet.detect)
    assert method_name(GRID_METHODS[name]) == name
    state = runner.new_state()
    assert isinstance(state, StreamState) and state.nbytes() == 0
    outs = [runner.step(x, state) for x in _frames(3)]
    assert all(type(o) is GridStep and o.detections is not None for o in outs)
    assert [o.t for o in outs] == [0, 1, 2] and state.t == 3
    assert outs[1].kind is REDUCED[name]
    assert (outs[1].num_kept < TINY_VITDET.num_tokens) == (name != "dense")
    state.reset()
    assert state.t == 0 and state.nbytes() == 0


@pytest.mark.parametrize("name", sorted(CLS_METHODS))
def test_every_method_on_a_class_token_model_follows_the_contract(tiny_vivit: ViViT, name: str) -> None:
    runner = make_runner(tiny_vivit, CLS_METHODS[name])
    clip = torch.randn(2, 3, TINY_VIVIT.num_frames, TINY_VIVIT.img_size, TINY_VIVIT.img_size)
    out = run_clip(runner, clip)
    assert out.logits.shape == (2, TINY_VIVIT.num_classes) and out.pooled.shape == (2, TINY_VIVIT.num_steps, 32)
    assert all(type(s) is ClassStep and s.tokens is None for s in out.steps)  # ViViT: no dense output
    assert out.steps[1].kind is REDUCED[name]
    # stateless methods batch a clip's steps; stepping them one by one gives the same class tokens
    state = runner.new_state()
    tokens = tiny_vivit.embed(clip)
    one_by_one = torch.stack([runner.step(tokens[:, t], state).pooled for t in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(one_by_one, out.pooled, rtol=1e-4, atol=1e-5)


def test_selectors_are_registered_and_a_caller_may_add_one(tiny_vitdet: ViTDet) -> None:
    assert set(SELECTORS) >= {"rollout", "uniform", "random", "boxes"}

    class Corner(Selector):
        def __init__(self, cfg: RGTPConfig) -> None:
            pass

        def choose(self, choice: Any) -> tuple[torch.Tensor, None]:
            return torch.arange(choice.k).expand(choice.embeds.shape[0], -1), None

    register_selector("corner", Corner)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_selector("corner", Corner)
        named = vitdet_rgtp(keep_ratio=0.2)
        named = dataclasses.replace(named, selection=dataclasses.replace(named.selection, policy="corner"))
        for runner in (
            make_runner(tiny_vitdet, vitdet_rgtp(keep_ratio=0.2), selector=Corner(RGTPConfig())),
            make_runner(tiny_vitdet, named),  # by the registered name, through the config
        ):
            outs = [t.output for t in stream(runner, _frames(2))]
            assert outs[1].kind is FrameKind.PRUNED and outs[1].keep_idx.tolist() == [list(range(20))]
            assert outs[1].importance is None  # a selector without guidance: no rollout is computed
    finally:
        del SELECTORS["corner"]


def test_method_registry_errors(tiny_vivit: ViViT) -> None:
    assert set(METHODS) == {"dense", "rgtp", "eventful", "tome"}
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        make_runner(tiny_vivit, "fast")
    with pytest.raises(ValueError, match="takes none"):
        make_runner(tiny_vivit, EventfulConfig(k=3), selector=Selector())
    with pytest.raises(ValueError, match="no registered method takes a dict"):
        method_name({})


def test_presets_name_their_method_and_every_command_builds_it() -> None:
    base = get_preset("shapes_det_rgtp")
    assert base.method == "rgtp" and base.method_config is base.rgtp
    eventful = override(override(base, "rgtp=null"), "eventful.keep_ratio=0.3")
    assert eventful.method == "eventful" and eventful.eventful == EventfulConfig(keep_ratio=0.3)
    tome = override(get_preset("motions_base"), "tome.keep_ratio=0.35")
    assert tome.method == "tome" and tome.tome == ToMeConfig(keep_ratio=0.35)
    assert get_preset("motions_base").method == "dense"
    data = to_dict(eventful)
    assert data["method"] == "eventful" and from_dict(Preset, data) == eventful
    with pytest.raises(ConfigError, match="a preset runs one method, but rgtp and eventful are set"):
        override(base, "eventful.keep_ratio=0.3")
    rgtp_on_dense = override(get_preset("shapes_det_base"), "rgtp.selection.keep_ratio=0.2")
    assert rgtp_on_dense.rgtp == dataclasses.replace(
        RGTPConfig(), selection=dataclasses.replace(RGTPConfig().selection, keep_ratio=0.2)
    )
    for preset in (eventful, tome):
        acc = count_preset(preset)
        assert acc.method == preset.method and (acc.pruned_frame_gmacs or acc.clip_tmacs)


def test_flops_of_a_data_dependent_selector_is_a_nominal_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "shapes_det_rgtp", "--set", "rgtp.selection.policy=boxes", "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)
    assert acc["kept"] == {"full": 256, "pruned": 77} and "data-dependent" in acc["note"]
    assert main(["flops", "shapes_det_base", "--set", "eventful.keep_ratio=0.3"]) == 0
    out = capsys.readouterr().out
    assert "method eventful" in out and "GATED frame" in out


def test_stream_times_and_counts_each_step(tiny_vitdet: ViTDet) -> None:
    runner = make_runner(tiny_vitdet, vitdet_rgtp(keep_ratio=0.3))
    timed = list(stream(runner, _frames(3), timed=True))
    assert [t.index for t in timed] == [0, 1, 2] and all(t.seconds > 0 and t.macs is None for t in timed)
    counted = list(stream(runner, _frames(3), count=True))
    assert counted[1].macs["backbone"] < counted[0].macs["backbone"] and counted[1].seconds is None
    assert counted[-1].state_nbytes > 0
    state = runner.new_state()
    list(stream(runner, _frames(2), state=state))
    assert state.t == 2  # a given state is continued


def test_measure_summarises_after_warmup() -> None:
    calls = []
    stats = measure(lambda: (calls.append(1), time.sleep(0.002)), warmup=2, iters=3)
    assert len(calls) == 5 and stats.n == 3 and stats.min_ms <= stats.median_ms <= stats.max_ms
    assert stats.min_ms >= 1.5
    samples = measure_interleaved([], 1, 2)
    assert samples == {}
    with stopwatch("cpu") as elapsed:
        time.sleep(0.001)
    assert elapsed[0] >= 0.001
    with pytest.raises(ValueError, match="iters"):
        measure(lambda: None, iters=0)
