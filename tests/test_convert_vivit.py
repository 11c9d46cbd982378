"""Checkpoint conversion from TAdaConv's ViViT factorised encoder (.pyth files), on state dicts built here."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_VITDET, TINY_VIVIT
from rgtp.build import load_weights
from rgtp.cli import main
from rgtp.config import Preset, ViViTConfig, from_dict, save_config
from rgtp.convert import EPIC_NOUNS, SOURCES, ConversionError, convert_checkpoint, convert_state
from rgtp.models.vivit import ViViT

K400 = ViViTConfig(img_size=224, num_classes=400)  # the targets of the vivit_k400_* / vivit_epic_* presets
EPIC = ViViTConfig(img_size=320, num_classes=97)
NOUN_HEAD = ("head.linear2.weight", "head.linear2.bias")


def tadaconv_shapes(cfg: ViViTConfig, head: str = "k400") -> dict[str, tuple[int, ...]]:
    """Key -> shape of a TAdaConv ``BaseVideoModel(FactorizedTransformer + TransformerHead[x2])`` state dict.

    ``head``: "k400" (``head.linear``, cfg.num_classes) or "epic" (``head.linear1``, cfg.num_classes verbs, and
    ``head.linear2``, 300 nouns).
    """
    d, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    s: dict[str, tuple[int, ...]] = {
        "backbone.stem.conv1.weight": (d, 3, *cfg.tubelet),
        "backbone.stem.conv1.bias": (d,),
        "backbone.pos_embd": (1, cfg.num_tokens + 1, d),
        "backbone.temp_embd": (1, cfg.num_steps + 1, d),
        "backbone.cls_token": (1, 1, d),
        "backbone.cls_token_out": (1, 1, d),
        "backbone.norm.weight": (d,), "backbone.norm.bias": (d,),
        "backbone.norm_out.weight": (d,), "backbone.norm_out.bias": (d,),
    }  # fmt: skip
    for layers, depth in (("layers", cfg.depth), ("layers_temporal", cfg.temporal_depth)):
        for i in range(depth):
            for name, shape in {
                "norm.weight": (d,), "norm.bias": (d,),
                "attn.to_qkv.weight": (3 * d, d), "attn.to_qkv.bias": (3 * d,),
                "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
                "norm_ffn.weight": (d,), "norm_ffn.bias": (d,),
                "ffn.net.0.weight": (hidden, d), "ffn.net.0.bias": (hidden,),
                "ffn.net.3.weight": (d, hidden), "ffn.net.3.bias": (d,),
            }.items():  # fmt: skip
                s[f"backbone.{layers}.{i}.{name}"] = shape
    if head == "k400":
        s |= {"head.linear.weight": (cfg.num_classes, d), "head.linear.bias": (cfg.num_classes,)}
    else:
        s |= {"head.linear1.weight": (cfg.num_classes, d), "head.linear1.bias": (cfg.num_classes,)}
        s |= {"head.linear2.weight": (EPIC_NOUNS, d), "head.linear2.bias": (EPIC_NOUNS,)}
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=gen) * 0.3 for k, v in shapes.items()}


def save_pyth(state: dict[str, torch.Tensor], path) -> None:  # type: ignore[no-untyped-def]
    """Save like TAdaConv's save_checkpoint (plus an EMA copy, which the conversion must ignore)."""
    ema = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"epoch": 30, "model_state": state, "optimizer_state": {}, "cfg": "{}", "model_ema_state": ema}, path)


def expected_shapes(cfg: ViViTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in ViViT(cfg).state_dict().items()}


def hand_mapped(source: dict[str, torch.Tensor], nouns: bool = False) -> dict[str, torch.Tensor]:
    """The TAdaConv -> rgtp renaming, written out key by key (no regexes)."""
    block = {"norm": "norm1", "attn.to_qkv": "attn.qkv", "attn.proj": "attn.proj", "norm_ffn": "norm2",
             "ffn.net.0": "mlp.fc1", "ffn.net.3": "mlp.fc2"}  # fmt: skip
    fixed = {"stem.conv1": "patch_embed", "cls_token": "spatial.cls_token", "pos_embd": "spatial.pos_embed",
             "norm": "spatial.norm", "cls_token_out": "temporal.cls_token", "temp_embd": "temporal.pos_embed",
             "norm_out": "temporal.norm"}  # fmt: skip
    out = {}
    for key, value in source.items():
        if key.startswith("head."):
            module, leaf = key[len("head.") :].split(".")
            ours = {"linear": "head", "linear1": "head", "linear2": "head_noun" if nouns else None}[module]
            if ours is not None:
                out[f"{ours}.{leaf}"] = value
            continue
        rest = key[len("backbone.") :]
        stack, _, tail = rest.partition(".")
        if stack in ("layers", "layers_temporal") and tail[0].isdigit():
            i, tail = tail.split(".", 1)
            module, leaf = tail.rsplit(".", 1)
            out[f"{'spatial' if stack == 'layers' else 'temporal'}.blocks.{i}.{block[module]}.{leaf}"] = value
        elif rest in fixed:
            out[fixed[rest]] = value
        else:
            module, leaf = rest.rsplit(".", 1)
            out[f"{fixed[module]}.{leaf}"] = value
    return out


def tadaconv_logits(sd: dict[str, torch.Tensor], clip: torch.Tensor, heads: int, head: str = "linear") -> torch.Tensor:
    """TAdaConv's FactorizedTransformer + TransformerHead forward in eval mode, written from its documented math."""

    def layer(x: torch.Tensor, p: str) -> torch.Tensor:  # BaseTransformerLayer
        b, n, c = x.shape
        h = F.layer_norm(x, (c,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
        qkv = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), sd[p + "norm_ffn.weight"], sd[p + "norm_ffn.bias"], 1e-6)
        h = F.gelu(F.linear(h, sd[p + "ffn.net.0.weight"], sd[p + "ffn.net.0.bias"]))
        return x + F.linear(h, sd[p + "ffn.net.3.weight"], sd[p + "ffn.net.3.bias"])

    def encoder(x: torch.Tensor, cls: str, pos: str, layers: str, norm: str) -> torch.Tensor:
        x = torch.cat([sd[f"backbone.{cls}"].repeat(x.shape[0], 1, 1), x], dim=1) + sd[f"backbone.{pos}"]
        i = 0
        while f"backbone.{layers}.{i}.norm.weight" in sd:
            x = layer(x, f"backbone.{layers}.{i}.")
            i += 1
        return F.layer_norm(x, x.shape[-1:], sd[f"backbone.{norm}.weight"], sd[f"backbone.{norm}.bias"], 1e-6)[:, 0]

    w = sd["backbone.stem.conv1.weight"]
    x = F.conv3d(clip, w, sd["backbone.stem.conv1.bias"], stride=w.shape[2:])  # (B, C, t, h, w)
    b, c, t = x.shape[:3]
    x = x.reshape(b, c, -1).permute(0, 2, 1).reshape(b * t, -1, c)  # "b (t n) c -> (b t) n c"
    x = encoder(x, "cls_token", "pos_embd", "layers", "norm").reshape(b, t, c)
    x = encoder(x, "cls_token_out", "temp_embd", "layers_temporal", "norm_out")
    return F.linear(x, sd[f"head.{head}.weight"], sd[f"head.{head}.bias"])


def clip_for(cfg: ViViTConfig, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=gen)


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "cfg"), [("vivit-k400", K400), ("vivit-epic", EPIC)])
def test_full_size_layout_maps_every_key(source: str, cfg: ViViTConfig) -> None:
    shapes = tadaconv_shapes(cfg, source.split("-")[1])
    with torch.device("meta"):
        state = {k: torch.empty(v) for k, v in shapes.items()}
    rules, parts = SOURCES[source]
    target = expected_shapes(cfg)
    out, dropped = convert_state(state, rules, target)
    assert set(out) == set(target) and len(target) == 206 - 2  # ViViT-B: 12 + 4 blocks of 12 tensors, no noun head
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v) for k, v in target.items()}
    assert dropped == ([] if source == "vivit-k400" else list(NOUN_HEAD))
    assert out["patch_embed.weight"].shape == (768, 3, 2, 16, 16)
    assert out["spatial.pos_embed"].shape == (1, 197 if cfg is K400 else 401, 768)  # class slot kept (row 0)
    assert out["temporal.pos_embed"].shape == (1, 17, 768)
    assert out["head.weight"].shape == (cfg.num_classes, 768)
    assert set(parts) >= {k.split(".")[0] for k in target}


def test_full_size_epic_noun_head_kept_with_nouns() -> None:
    cfg = dataclasses.replace(EPIC, num_nouns=EPIC_NOUNS)
    with torch.device("meta"):
        state = {k: torch.empty(v) for k, v in tadaconv_shapes(cfg, "epic").items()}
    out, dropped = convert_state(state, SOURCES["vivit-epic"][0], expected_shapes(cfg))
    assert dropped == [] and out["head_noun.weight"].shape == (300, 768)


def test_k400_round_trip_gives_tadaconv_logits(tmp_path) -> None:
    source = random_state(tadaconv_shapes(TINY_VIVIT))
    src = tmp_path / "vivit_fac_enc_b16x2_k400.pyth"
    save_pyth(source, src)
    dst = tmp_path / "rgtp.pth"
    report = convert_checkpoint(src, dst, "vivit-k400", TINY_VIVIT)
    assert report.mapped == len(source) and report.dropped == []
    assert report.parts == ("patch_embed", "spatial", "temporal", "head")
    converted = ViViT(TINY_VIVIT).eval()
    load_weights(converted, dst)
    by_hand = ViViT(TINY_VIVIT).eval()
    by_hand.load_state_dict(hand_mapped(source), strict=True)
    clip = clip_for(TINY_VIVIT)
    with torch.no_grad():
        ours = converted(clip)
        torch.testing.assert_close(ours, by_hand(clip), rtol=0, atol=0)
        torch.testing.assert_close(ours, tadaconv_logits(source, clip, TINY_VIVIT.num_heads), rtol=1e-5, atol=1e-5)
    meta = torch.load(dst, weights_only=True)["rgtp_meta"]
    assert meta["family"] == "vivit" and meta["source"] == "vivit-k400"
    assert from_dict(ViViTConfig, meta["config"]) == TINY_VIVIT


def test_epic_noun_head_dropped_by_default_and_kept_with_nouns(tmp_path, caplog) -> None:
    source = random_state(tadaconv_shapes(TINY_VIVIT, "epic"))
    src = tmp_path / "vivit_fac_enc_ek100.pyth"
    save_pyth(source, src)
    clip = clip_for(TINY_VIVIT)
    verbs = tadaconv_logits(source, clip, TINY_VIVIT.num_heads, "linear1")
    nouns = tadaconv_logits(source, clip, TINY_VIVIT.num_heads, "linear2")

    with caplog.at_level(logging.INFO, logger="rgtp.convert"):
        report = convert_checkpoint(src, tmp_path / "verbs.pth", "vivit-epic", TINY_VIVIT)
    assert sorted(report.dropped) == sorted(NOUN_HEAD)
    assert "noun head" in caplog.text and "head.linear2.weight" in caplog.text
    model = ViViT(TINY_VIVIT).eval()
    load_weights(model, tmp_path / "verbs.pth")
    with torch.no_grad():
        torch.testing.assert_close(model(clip), verbs, rtol=1e-5, atol=1e-5)

    cfg = dataclasses.replace(TINY_VIVIT, num_nouns=EPIC_NOUNS)
    report = convert_checkpoint(src, tmp_path / "both.pth", "vivit-epic", cfg)
    assert report.dropped == [] and report.parts[-1] == "head_noun"
    meta = torch.load(tmp_path / "both.pth", weights_only=True)["rgtp_meta"]
    model = ViViT(from_dict(ViViTConfig, meta["config"])).eval()  # rebuilt from the recorded target config
    load_weights(model, tmp_path / "both.pth")
    by_hand = ViViT(cfg).eval()
    by_hand.load_state_dict(hand_mapped(source, nouns=True), strict=True)
    with torch.no_grad():
        logits = model(clip)
        torch.testing.assert_close(logits, by_hand(clip), rtol=0, atol=0)
        v, n = model.split(logits)
        torch.testing.assert_close(v, verbs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(n, nouns, rtol=1e-5, atol=1e-5)

    with pytest.raises(ConversionError, match=r"head\.linear2\.weight -> head_noun\.weight: \(300, 32\)"):
        convert_checkpoint(src, tmp_path / "o.pth", "vivit-epic", dataclasses.replace(TINY_VIVIT, num_nouns=10))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update({"head.pre_logits.fc.weight": torch.zeros(32, 32)}), "head.pre_logits.fc.weight"),
        (lambda s: s.update({"backbone.layers.0.attn.extra": torch.zeros(2)}), "backbone.layers.0.attn.extra"),
        (lambda s: s.pop("backbone.temp_embd"), "temporal.pos_embed"),
        (lambda s: s.pop("backbone.layers_temporal.0.ffn.net.3.bias"), "temporal.blocks.0.mlp.fc2.bias"),
        (lambda s: s.update({"backbone.pos_embd": torch.zeros(1, 16, 32)}), "backbone.pos_embd -> spatial.pos_embed"),
        (lambda s: s.update({"backbone.layers.2.attn.to_qkv.weight": torch.zeros(64, 32)}), "(64, 32)"),
    ],
    ids=["extra-head", "extra-block-key", "missing-table", "missing-bias", "pos-without-cls", "qkv-shape"],
)
def test_extra_missing_and_misshapen_keys_are_named(tmp_path, edit, named: str) -> None:  # type: ignore[no-untyped-def]
    source = random_state(tadaconv_shapes(TINY_VIVIT))
    edit(source)
    src = tmp_path / "bad.pyth"
    save_pyth(source, src)
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(src, tmp_path / "out.pth", "vivit-k400", TINY_VIVIT)
    assert named in str(err.value)
    assert not (tmp_path / "out.pth").exists()


def test_wrong_head_or_family_is_rejected(tmp_path) -> None:
    k400 = tmp_path / "k400.pyth"
    save_pyth(random_state(tadaconv_shapes(TINY_VIVIT)), k400)
    with pytest.raises(ConversionError, match=r"matched by no rule: head\.linear\.weight"):
        convert_checkpoint(k400, tmp_path / "o.pth", "vivit-epic", TINY_VIVIT)
    with pytest.raises(ConversionError, match="ViViTConfig model, not a ViTDetConfig"):
        convert_checkpoint(k400, tmp_path / "o.pth", "vivit-k400", TINY_VITDET)  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="matched by no rule"):
        convert_checkpoint(k400, tmp_path / "o.pth", "vitdet-vid", TINY_VITDET)
    with pytest.raises(ConversionError, match=r"shape mismatch.*\(1, 197, 768\)"):  # the default target: ViViT-B K400
        convert_checkpoint(k400, tmp_path / "o.pth", "vivit-k400")


def test_cli_convert_vivit(tmp_path, capsys) -> None:
    config = tmp_path / "tiny_vivit.json"
    save_config(Preset("tiny_vivit", TINY_VIVIT), config)
    k400, epic = tmp_path / "k400.pyth", tmp_path / "epic.pyth"
    save_pyth(random_state(tadaconv_shapes(TINY_VIVIT)), k400)
    save_pyth(random_state(tadaconv_shapes(TINY_VIVIT, "epic")), epic)

    assert main(["convert", "vivit", str(k400), str(tmp_path / "a.pth"), "--config", str(config)]) == 0
    assert "vivit-k400: 60 tensors mapped" in capsys.readouterr().out
    load_weights(ViViT(TINY_VIVIT), tmp_path / "a.pth")

    argv = ["convert", "vivit", str(epic), str(tmp_path / "b.pth"), "--source", "epic", "--config", str(config)]
    assert main(argv) == 0
    assert "2 dropped on purpose" in capsys.readouterr().out
    load_weights(ViViT(TINY_VIVIT), tmp_path / "b.pth")
    assert main([*argv, "--nouns"]) == 0
    meta = torch.load(tmp_path / "b.pth", weights_only=True)["rgtp_meta"]
    assert meta["config"]["num_nouns"] == EPIC_NOUNS and meta["parts"][-1] == "head_noun"
    load_weights(ViViT(dataclasses.replace(TINY_VIVIT, num_nouns=EPIC_NOUNS)), tmp_path / "b.pth")

    # default presets: vivit_k400_base (224: 197 positions) and vivit_epic_base (320: 401 positions)
    assert main(["convert", "vivit", str(k400), str(tmp_path / "o.pth")]) == 2
    assert "(1, 197, 768)" in capsys.readouterr().err
    assert main(["convert", "vivit", str(epic), str(tmp_path / "o.pth"), "--source", "epic"]) == 2
    assert "(1, 401, 768)" in capsys.readouterr().err
    for bad, message in [
        (["--source", "vid"], "not a vivit source"),
        (["--nouns"], "--nouns"),
        (["--preset", "vitdet_vid_672_base"], "not a vivit model"),
    ]:
        assert main(["convert", "vivit", str(k400), str(tmp_path / "o.pth"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
