"""Every method on other libraries' models through rgtp.adapt: Hugging Face ViTDet, ViT, DINOv2 (with and without
registers), CLIP's vision tower, and timm's VisionTransformer where timm imports. Tiny random models built from
configs; nothing is downloaded.

For every adapter: keep ratio 1 without resets equals the unmodified model's forward pass (eager and SDPA attention);
pruning keeps the configured counts and costs fewer MACs; interleaved streams equal separate runs; reset() isolates
videos; an unsupported structure is a one-line error naming what is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rgtp
from rgtp.adapters import AdapterError, adapter_for
from rgtp.config import EventfulConfig, RGTPConfig, ToMeConfig
from rgtp.flops import PAPER_SCOPES
from rgtp.pruning.schedule import FrameKind
from rgtp.runtime import ForcedSelector, stream

transformers = pytest.importorskip("transformers", reason="the Hugging Face adapters need rgtp[hf]")

SMALL = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2}


def _randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Move every parameter off its initial value (positions, tables, layer scales), deterministically."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _vitdet(impl: str = "eager", **kw: Any) -> nn.Module:
    """8x10 tokens at 64x80 (patch 8); windows of 3 (padded) in layers 0 and 2; tables stored for 6x6 (resized)."""
    cfg = transformers.VitDetConfig(
        **SMALL,
        mlp_ratio=2,
        image_size=48,
        pretrain_image_size=48,
        patch_size=8,
        window_size=3,
        window_block_indices=[0, 2],
        use_relative_position_embeddings=True,
        out_features=["stage2", "stage4"],
        **kw,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return _randomize(transformers.VitDetBackbone(cfg))


def _class_model(name: str, impl: str) -> nn.Module:
    t = transformers
    if name == "vit":
        cls, cfg = t.ViTModel, t.ViTConfig(image_size=32, patch_size=8, intermediate_size=64, **SMALL)
    elif name == "dinov2":
        cls, cfg = t.Dinov2Model, t.Dinov2Config(image_size=32, patch_size=8, mlp_ratio=2, **SMALL)
    elif name == "dinov2_registers":
        cfg = t.Dinov2WithRegistersConfig(image_size=32, patch_size=8, mlp_ratio=2, num_register_tokens=2, **SMALL)
        cls = t.Dinov2WithRegistersModel
    else:
        cls, cfg = t.CLIPVisionModel, t.CLIPVisionConfig(image_size=32, patch_size=8, intermediate_size=64, **SMALL)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return _randomize(cls(cfg))


CLASS_MODELS = ("vit", "dinov2", "dinov2_registers", "clip")
SIZES = {"vitdet": (64, 80), **dict.fromkeys(CLASS_MODELS, (32, 32))}
TOKENS = {"vitdet": 80, **dict.fromkeys(CLASS_MODELS, 16)}


def _video(name: str, n: int, seed: int = 0, batch: int = 2) -> list[torch.Tensor]:
    """A slowly moving video: a random image panned by one pixel a frame, plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, *SIZES[name], generator=gen)
    return [torch.roll(base, shifts=t, dims=-1) + 0.02 * torch.randn(base.shape, generator=gen) for t in range(n)]


def _reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unmodified model's outputs, named as the runners name them."""
    with torch.no_grad():
        out = model(pixel_values=x)
    if hasattr(out, "feature_maps"):
        return dict(zip(model.out_features, out.feature_maps, strict=True))
    ref = {"tokens": out.last_hidden_state}
    if out.pooler_output is not None:
        ref["pooled"] = out.pooler_output
    return ref


def _outputs(step: Any) -> dict[str, torch.Tensor]:
    if isinstance(step, rgtp.GridStep):
        return step.features
    return {"tokens": step.tokens, "pooled": step.pooled}


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


def _model(name: str, impl: str = "eager") -> nn.Module:
    return _vitdet(impl) if name == "vitdet" else _class_model(name, impl)


ALL = ("vitdet", *CLASS_MODELS)


# ---------------------------------------------------------------------------------------------------------------------
# Keep everything = the unmodified model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ALL)
def test_keep_all_without_reset_equals_the_model(name: str, impl: str) -> None:
    if name == "vitdet" and impl == "sdpa":
        pytest.skip("transformers' VitDet has no SDPA implementation")
    model = _model(name, impl)
    runner = rgtp.adapt(model, keep_ratio=1.0, reset_every=None)
    state = runner.new_state()
    for t, x in enumerate(_video(name, 4)):
        out = runner.step(x, state)
        assert out.kind is (FrameKind.FULL if t == 0 else FrameKind.ROLLOUT)
        assert out.num_kept == TOKENS[name]
        _close(_outputs(out), _reference(model, x))
        torch.testing.assert_close(out.importance.sum(-1), torch.ones(2))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "method", [None, EventfulConfig(keep_ratio=1.0), ToMeConfig(r=0)], ids=["dense", "eventful", "tome"]
)
def test_every_method_without_reduction_equals_the_model(name: str, method: Any) -> None:
    model = _model(name)
    runner = rgtp.adapt(model, method)
    for tick in stream(runner, _video(name, 3)):
        _close(_outputs(tick.output), _reference(model, _video(name, 3)[tick.index]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("method", ["eventful", "tome"])
def test_comparison_methods_reduce_on_every_adapter(name: str, method: str) -> None:
    model = _model(name)
    video = _video(name, 3)
    ticks = list(stream(rgtp.adapt(model, method, keep_ratio=0.5), video))
    kind = {"eventful": FrameKind.GATED, "tome": FrameKind.MERGED}[method]
    assert ticks[-1].output.kind is kind and ticks[-1].output.num_kept < TOKENS[name]
    reference = _reference(model, video[-1])
    for key, value in _outputs(ticks[-1].output).items():
        if key in reference:
            assert value.shape == reference[key].shape and torch.isfinite(value).all(), key


# ---------------------------------------------------------------------------------------------------------------------
# Pruning


@pytest.mark.parametrize("name", ALL)
def test_pruning_keeps_the_configured_counts_and_costs_fewer_macs(name: str) -> None:
    model = _model(name)
    n = TOKENS[name]
    frames = _video(name, 3, batch=1)
    dense = rgtp.adapt(model, "dense")
    pruned = rgtp.adapt(model, keep_ratio=0.25)
    macs = {}
    for label, runner in (("dense", dense), ("pruned", pruned)):
        counts = []
        for tick in stream(runner, frames, count=True):
            counts.append(sum(v for k, v in tick.macs.items() if k in PAPER_SCOPES))
            if label == "pruned" and tick.index > 0:
                assert tick.output.kind is FrameKind.ROLLOUT and tick.output.num_kept == round(0.25 * n)
                assert tick.output.keep_idx.shape == (1, round(0.25 * n))
                assert all(torch.isfinite(v).all() for v in _outputs(tick.output).values())
        macs[label] = counts
    assert macs["pruned"][0] >= macs["dense"][0]  # a full frame, plus the rollout
    assert macs["pruned"][1] < 0.7 * macs["dense"][1]


@pytest.mark.parametrize("name", ["vitdet", "dinov2_registers"])
def test_pruned_tokens_keep_their_buffered_outputs(name: str) -> None:
    model = _model(name)
    runner = rgtp.adapt(model, keep_ratio=0.3)
    ticks = list(stream(runner, _video(name, 2, batch=1)))
    first, second = (_outputs(t.output) for t in ticks)
    keep = ticks[1].output.keep_idx[0]
    if name == "vitdet":  # (1, C, h, w) maps: pruned cells hold the previous frame's output
        old, new = first["stage4"].flatten(2)[0].T, second["stage4"].flatten(2)[0].T  # (N, C)
        p = 0
    else:  # (1, P + N, C) normalised tokens
        old, new = first["tokens"][0], second["tokens"][0]
        p = adapter_for(model).num_prefix
    pruned = torch.ones(old.shape[0] - p, dtype=torch.bool)
    pruned[keep] = False
    torch.testing.assert_close(new[p:][pruned], old[p:][pruned])
    assert not torch.allclose(new[p:][~pruned], old[p:][~pruned])


@pytest.mark.parametrize("name", ALL)
def test_interleaved_streams_equal_separate_runs(name: str) -> None:
    runner = rgtp.adapt(_model(name), keep_ratio=0.4)
    video_a, video_b = _video(name, 4, seed=1, batch=1), _video(name, 4, seed=2, batch=1)

    def run(video: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [_outputs(t.output) for t in stream(runner, video)]

    separate_a, separate_b = run(video_a), run(video_b)
    state_a, state_b = runner.new_state(), runner.new_state()
    for t in range(4):
        _close(_outputs(runner.step(video_a[t], state_a)), separate_a[t])
        _close(_outputs(runner.step(video_b[t], state_b)), separate_b[t])


@pytest.mark.parametrize("name", ALL)
def test_reset_isolates_videos(name: str) -> None:
    runner = rgtp.adapt(_model(name), keep_ratio=0.4)
    video_a, video_b = _video(name, 3, seed=3), _video(name, 3, seed=4)
    expected = [_outputs(t.output) for t in stream(runner, video_b)]
    state = runner.new_state()
    for x in video_a:
        runner.step(x, state)
    assert state.nbytes() > 0
    state.reset()
    assert state.t == 0 and state.nbytes() == 0
    for x, want in zip(video_b, expected, strict=True):
        _close(_outputs(runner.step(x, state)), want)


def test_forced_selection_replays_given_kept_sets() -> None:
    model = _model("dinov2")
    wanted = {1: [0, 3, 5, 15], 2: [1, 2, 8, 9]}
    runner = rgtp.adapt(model, selector=ForcedSelector(lambda t, embeds, grid: torch.tensor(wanted[t])))
    kept = [t.output.keep_idx for t in stream(runner, _video("dinov2", 3))][1:]
    assert [k[0].tolist() for k in kept] == [wanted[1], wanted[2]] and kept[0].shape == (2, 4)


def test_image_size_other_than_the_configs() -> None:
    """Positions (and VitDet's relative tables) are interpolated, as the models do for other sizes."""
    model = _model("dinov2")
    runner = rgtp.adapt(model, keep_ratio=0.5)
    x = torch.randn(1, 3, 48, 40)
    out = runner.step(x, runner.new_state())
    torch.testing.assert_close(out.tokens, _reference(model, x)["tokens"], rtol=1e-4, atol=1e-5)
    assert out.tokens.shape == (1, 1 + 6 * 5, 32)


def test_a_detection_head_anchors_the_vitdet_rollout() -> None:
    """A caller's head (boxes in input pixels) steers the heatmap; without detections every token is an anchor."""
    model = _vitdet()
    box = rgtp.Detections(torch.tensor([[0.0, 0.0, 24.0, 24.0]]), torch.tensor([0.9]), torch.tensor([0]))
    with_head = rgtp.adapt(model, head=lambda features: [box])
    without = rgtp.adapt(model)
    x = _video("vitdet", 1, batch=1)[0]
    a, b = (r.step(x, r.new_state()) for r in (with_head, without))
    assert a.detections == [box] and b.detections is None
    assert not torch.allclose(a.importance, b.importance)


# ---------------------------------------------------------------------------------------------------------------------
# Errors


def test_unsupported_models_get_one_line_errors() -> None:
    with pytest.raises(
        AdapterError, match=r"cannot drive a Linear from torch: supported models are .*transformers's Dinov2Model"
    ):
        rgtp.adapt(nn.Linear(2, 2))
    with pytest.raises(AdapterError, match="residual conv block"):
        rgtp.adapt(_vitdet(residual_block_indices=[1]))
    model = _class_model("vit", "eager")
    layer = model.layers[2] if hasattr(model, "layers") else model.encoder.layer[2]  # transformers 5.x, 4.x
    attention = layer.attention if hasattr(layer.attention, "q_proj") else layer.attention.attention
    del attention._modules["q_proj" if "q_proj" in attention._modules else "query"]
    with pytest.raises(AdapterError, match=r"ViTModel layer 2: no query projection \(looked for 'q_proj'"):
        rgtp.adapt(model)
    dino = _class_model("dinov2", "eager").train()
    runner = rgtp.adapt(dino)
    with pytest.raises(AdapterError, match=r"training mode .* model\.eval\(\)"):
        runner.step(torch.randn(1, 3, 32, 32), runner.new_state())
    with pytest.raises(ValueError, match="box-token selection needs"):
        cfg = RGTPConfig()
        rgtp.adapt(_vitdet(), dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, policy="boxes")))
    with pytest.raises(ValueError, match="a detection head attaches to grid models only"):
        rgtp.adapt(dino.eval(), head=lambda f: [])


def test_a_stream_keeps_one_frame_size() -> None:
    runner = rgtp.adapt(_vitdet(), keep_ratio=0.5)
    state = runner.new_state()
    runner.step(torch.randn(1, 3, 64, 80), state)
    for other in (torch.randn(1, 3, 64, 64), torch.randn(1, 3, 80, 64), torch.randn(2, 3, 64, 80)):
        with pytest.raises(ValueError, match="differ from the stream's previous frame"):
            runner.step(other, state)  # another size, the same token count transposed, another batch


# ---------------------------------------------------------------------------------------------------------------------
# timm


def _timm() -> Any:
    try:
        import timm
    except Exception as exc:  # ImportError, or torchvision's compiled ops failing to load beside the CPU torch
        pytest.skip(f"timm cannot be imported here ({type(exc).__name__}: {exc}); see environment.md on torchvision")
    return timm


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"reg_tokens": 2, "no_embed_class": True}, {"dynamic_img_size": True, "global_pool": "avg"}],
    ids=["plain", "registers", "dynamic"],
)
def test_timm_vision_transformer(kwargs: dict[str, Any]) -> None:
    timm = _timm()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=5, **kwargs)
    model = _randomize(model)
    runner = rgtp.adapt(model, keep_ratio=1.0, reset_every=None)
    state = runner.new_state()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for t in range(3):
            out = runner.step(x + 0.01 * t, state)
            torch.testing.assert_close(out.tokens, model.forward_features(x + 0.01 * t), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.pooled, model(x + 0.01 * t), rtol=1e-4, atol=1e-5)
    pruned: Callable[..., Any] = rgtp.adapt(model, keep_ratio=0.5)
    ticks = list(stream(pruned, [x, x + 0.01]))
    assert ticks[1].output.num_kept == 8 and ticks[1].output.tokens.shape[1] == 16 + model.num_prefix_tokens
