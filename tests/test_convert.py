"""Checkpoint conversion from detectron2's ViTDet layouts, on state dicts built here with the full key layout."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from conftest import TINY_VITDET
from rgtp.build import WeightsError, load_weights
from rgtp.cli import main
from rgtp.config import Preset, ViTDetConfig, save_config
from rgtp.convert import SOURCES, ConversionError, convert_checkpoint, convert_state, read_checkpoint
from rgtp.models.vitdet import ViTDet


def detectron2_vitdet_shapes(cfg: ViTDetConfig, head: str = "vid") -> dict[str, tuple[int, ...]]:
    """Key -> shape of a detectron2 GeneralizedRCNN state dict with ViT + SimpleFeaturePyramid (detectron2's names).

    ``head``: "vid" (RPN with two convs + 4conv1fc box head, 30 classes), "coco" (the same plus a mask head, 80
    classes) or "none".
    """
    d, p, out = cfg.embed_dim, cfg.patch_size, cfg.pyramid_dim
    hidden, head_dim = int(d * cfg.mlp_ratio), d // cfg.num_heads
    s: dict[str, tuple[int, ...]] = {
        "backbone.net.pos_embed": (1, cfg.pos_embed_grid**2 + 1, d),  # pre-trained with a class-token slot
        "backbone.net.patch_embed.proj.weight": (d, 3, p, p),
        "backbone.net.patch_embed.proj.bias": (d,),
    }
    for i in range(cfg.depth):
        b = f"backbone.net.blocks.{i}."
        size = cfg.rel_pos_grid if i in cfg.global_blocks else cfg.window_size
        for name, shape in {
            "norm1.weight": (d,),
            "norm1.bias": (d,),
            "attn.qkv.weight": (3 * d, d),
            "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d),
            "attn.proj.bias": (d,),
            "attn.rel_pos_h": (2 * size - 1, head_dim),
            "attn.rel_pos_w": (2 * size - 1, head_dim),
            "norm2.weight": (d,),
            "norm2.bias": (d,),
            "mlp.fc1.weight": (hidden, d),
            "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (d, hidden),
            "mlp.fc2.bias": (d,),
        }.items():
            s[b + name] = shape

    def conv_norm(prefix: str, cin: int, k: int) -> None:
        s[f"{prefix}.weight"] = (out, cin, k, k)
        s[f"{prefix}.norm.weight"] = (out,)
        s[f"{prefix}.norm.bias"] = (out,)

    s.update(
        {
            "backbone.simfp_2.0.weight": (d, d // 2, 2, 2),
            "backbone.simfp_2.0.bias": (d // 2,),
            "backbone.simfp_2.1.weight": (d // 2,),
            "backbone.simfp_2.1.bias": (d // 2,),
            "backbone.simfp_2.3.weight": (d // 2, d // 4, 2, 2),
            "backbone.simfp_2.3.bias": (d // 4,),
            "backbone.simfp_3.0.weight": (d, d // 2, 2, 2),
            "backbone.simfp_3.0.bias": (d // 2,),
        }
    )
    conv_norm("backbone.simfp_2.4", d // 4, 1)
    conv_norm("backbone.simfp_2.5", out, 3)
    conv_norm("backbone.simfp_3.1", d // 2, 1)
    conv_norm("backbone.simfp_3.2", out, 3)
    conv_norm("backbone.simfp_4.0", d, 1)
    conv_norm("backbone.simfp_4.1", out, 3)
    conv_norm("backbone.simfp_5.1", d, 1)
    conv_norm("backbone.simfp_5.2", out, 3)
    if head == "none":
        return s
    det = cfg.head
    assert det is not None
    classes = det.num_classes if head == "vid" else 80
    a = len(det.aspect_ratios)
    for k in range(det.rpn_convs):
        s[f"proposal_generator.rpn_head.conv.conv{k}.weight"] = (out, out, 3, 3)
        s[f"proposal_generator.rpn_head.conv.conv{k}.bias"] = (out,)
    s.update(
        {
            "proposal_generator.rpn_head.objectness_logits.weight": (a, out, 1, 1),
            "proposal_generator.rpn_head.objectness_logits.bias": (a,),
            "proposal_generator.rpn_head.anchor_deltas.weight": (4 * a, out, 1, 1),
            "proposal_generator.rpn_head.anchor_deltas.bias": (4 * a,),
        }
    )
    dim = det.box_conv_dim
    for k in range(det.box_convs):
        s[f"roi_heads.box_head.conv{k + 1}.weight"] = (dim, out if k == 0 else dim, 3, 3)
        s[f"roi_heads.box_head.conv{k + 1}.norm.weight"] = (dim,)
        s[f"roi_heads.box_head.conv{k + 1}.norm.bias"] = (dim,)
    r = det.pooler_resolution
    s.update(
        {
            "roi_heads.box_head.fc1.weight": (det.box_fc_dim, dim * r * r),
            "roi_heads.box_head.fc1.bias": (det.box_fc_dim,),
            "roi_heads.box_predictor.cls_score.weight": (classes + 1, det.box_fc_dim),
            "roi_heads.box_predictor.cls_score.bias": (classes + 1,),
            "roi_heads.box_predictor.bbox_pred.weight": (4 * classes, det.box_fc_dim),
            "roi_heads.box_predictor.bbox_pred.bias": (4 * classes,),
        }
    )
    if head == "coco":  # Mask R-CNN: a mask head with 4 convs, a deconv and a per-class predictor
        for k in range(1, 5):
            s[f"roi_heads.mask_head.mask_fcn{k}.weight"] = (dim, out if k == 1 else dim, 3, 3)
            s[f"roi_heads.mask_head.mask_fcn{k}.norm.weight"] = (dim,)
            s[f"roi_heads.mask_head.mask_fcn{k}.norm.bias"] = (dim,)
        s["roi_heads.mask_head.deconv.weight"] = (dim, dim, 2, 2)
        s["roi_heads.mask_head.deconv.bias"] = (dim,)
        s["roi_heads.mask_head.predictor.weight"] = (classes, dim, 1, 1)
        s["roi_heads.mask_head.predictor.bias"] = (classes,)
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=gen) for k, v in shapes.items()}


def expected_shapes(cfg: ViTDetConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in ViTDet(cfg).state_dict().items()}


def test_full_size_vid_layout_maps_every_key() -> None:
    cfg = ViTDetConfig()  # ViTDet-B with the VID head
    shapes = detectron2_vitdet_shapes(cfg) | {"pixel_mean": (3, 1, 1), "pixel_std": (3, 1, 1)}
    with torch.device("meta"):
        source = {k: torch.empty(v) for k, v in shapes.items()}
    rules, _ = SOURCES["vitdet-vid"]
    out, dropped = convert_state(source, rules, expected_shapes(cfg))
    assert sorted(dropped) == ["pixel_mean", "pixel_std"]
    assert set(out) == set(expected_shapes(cfg))
    assert out["net.pos_embed"].shape == (1, 196, 768)  # class-token slot removed
    assert len(out) == len(shapes) - 2


def test_full_size_coco_layout_keeps_backbone_and_pyramid() -> None:
    cfg = ViTDetConfig()
    with torch.device("meta"):
        source = {k: torch.empty(v) for k, v in detectron2_vitdet_shapes(cfg, "coco").items()}
    rules, parts = SOURCES["vitdet-coco"]
    target = expected_shapes(dataclasses.replace(cfg, head=None))
    out, dropped = convert_state(source, rules, target)
    assert set(out) == set(target) and parts == ("net", "pyramid")
    assert all(k.startswith(("proposal_generator.", "roi_heads.")) for k in dropped)
    assert any("mask_head" in k for k in dropped)


def test_vid_checkpoint_round_trip(tmp_path) -> None:
    source = random_state(detectron2_vitdet_shapes(TINY_VITDET))
    src = tmp_path / "frcnn_vitdet_final.pth"
    torch.save({"model": source, "iteration": 1000}, src)
    dst = tmp_path / "rgtp.pth"
    report = convert_checkpoint(src, dst, "vitdet-vid", TINY_VITDET)
    assert report.mapped == len(source)
    model = ViTDet(TINY_VITDET).eval()
    load_weights(model, dst)
    state = model.state_dict()
    torch.testing.assert_close(state["net.pos_embed"], source["backbone.net.pos_embed"][:, 1:])
    torch.testing.assert_close(state["net.blocks.1.attn.rel_pos_h"], source["backbone.net.blocks.1.attn.rel_pos_h"])
    torch.testing.assert_close(state["pyramid.simfp_2.4.norm.weight"], source["backbone.simfp_2.4.norm.weight"])
    torch.testing.assert_close(
        state["head.proposal_generator.rpn_head.conv.conv1.weight"],
        source["proposal_generator.rpn_head.conv.conv1.weight"],
    )
    torch.testing.assert_close(
        state["head.roi_heads.box_predictor.bbox_pred.bias"], source["roi_heads.box_predictor.bbox_pred.bias"]
    )


def test_coco_pickle_gives_backbone_only(tmp_path, caplog) -> None:
    shapes = detectron2_vitdet_shapes(TINY_VITDET, "coco")
    source = {k: v.numpy() for k, v in random_state(shapes).items()}
    src = tmp_path / "model_final_61ccd1.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": source, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)
    dst = tmp_path / "coco_backbone.pth"
    convert_checkpoint(src, dst, "vitdet-coco", TINY_VITDET)
    model = ViTDet(TINY_VITDET).eval()
    head_before = model.head.state_dict()  # type: ignore[union-attr]
    load_weights(model, dst)
    assert "head keep their initial weights" in caplog.text
    np.testing.assert_allclose(
        model.net.blocks[0].attn.qkv.weight.detach().numpy(), source["backbone.net.blocks.0.attn.qkv.weight"]
    )
    for k, v in model.head.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(v, head_before[k])


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path) -> None:
    shapes = detectron2_vitdet_shapes(TINY_VITDET)
    source = random_state(shapes)
    source["backbone.net.blocks.0.attn.extra"] = torch.zeros(2)
    del source["roi_heads.box_head.fc1.bias"]
    source["backbone.net.blocks.2.mlp.fc1.weight"] = torch.zeros(5, 5)
    src = tmp_path / "bad.pth"
    torch.save(source, src)
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(src, tmp_path / "out.pth", "vitdet-vid", TINY_VITDET)
    text = str(err.value)
    assert "backbone.net.blocks.0.attn.extra" in text  # matched by no rule
    assert "head.roi_heads.box_head.fc1.bias" in text  # no source
    assert "backbone.net.blocks.2.mlp.fc1.weight" in text and "(5, 5)" in text  # shape
    assert not (tmp_path / "out.pth").exists()


def test_wrong_model_family_is_rejected(tmp_path) -> None:
    src = tmp_path / "vivit.pth"
    torch.save({"model_state": {"layers.0.attn.to_qkv.weight": torch.zeros(3)}}, src)
    with pytest.raises(ConversionError, match="matched by no rule"):
        convert_checkpoint(src, tmp_path / "o.pth", "vitdet-vid", TINY_VITDET)


def test_unsafe_pickles_are_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"model": {"a": Evil()}}))
    with pytest.raises(ConversionError, match="refusing to load"):
        read_checkpoint(src)
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "trainer": Evil()}, pth)
    with pytest.raises(ConversionError, match="trust-pickle"):
        read_checkpoint(pth)


def test_converted_weights_do_not_fit_another_model(tmp_path) -> None:
    src = tmp_path / "vid.pth"
    torch.save({"model": random_state(detectron2_vitdet_shapes(TINY_VITDET))}, src)
    dst = tmp_path / "rgtp.pth"
    convert_checkpoint(src, dst, "vitdet-vid", TINY_VITDET)
    other = ViTDet(dataclasses.replace(TINY_VITDET, embed_dim=64))
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_weights(other, dst)


def test_cli_convert(tmp_path, capsys) -> None:
    preset = Preset("tiny_vitdet", TINY_VITDET, None)
    config = tmp_path / "tiny.json"
    save_config(preset, config)
    src = tmp_path / "vid.pth"
    torch.save({"model": random_state(detectron2_vitdet_shapes(TINY_VITDET))}, src)
    dst = tmp_path / "rgtp.pth"
    assert main(["convert", "vitdet", str(src), str(dst), "--config", str(config)]) == 0
    assert "mapped" in capsys.readouterr().out
    load_weights(ViTDet(TINY_VITDET), dst)
    assert main(["convert", "vitdet", str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, bad)
    assert main(["convert", "vitdet", str(bad), str(tmp_path / "o.pth")]) == 2
    assert "matched by no rule" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_of_every_protocol_load(tmp_path, protocol: int) -> None:
    """detectron2 .pkl files in the wild were written with different pickle protocols (numpy arrays inside)."""
    shapes = detectron2_vitdet_shapes(TINY_VITDET, "coco")
    source = {k: v.numpy() for k, v in random_state(shapes).items()}
    src = tmp_path / "model.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": source}, f, protocol=protocol)
    state = read_checkpoint(src)
    np.testing.assert_array_equal(state["backbone.net.pos_embed"].numpy(), source["backbone.net.pos_embed"])


def test_anchor_buffers_and_cls_free_pos_embed(tmp_path) -> None:
    shapes = detectron2_vitdet_shapes(TINY_VITDET)
    source = random_state(shapes)
    source["backbone.net.pos_embed"] = source["backbone.net.pos_embed"][:, 1:]  # stored without a class-token slot
    for i in range(5):  # buffers some detectron2 versions saved
        source[f"proposal_generator.anchor_generator.cell_anchors.{i}"] = torch.zeros(3, 4)
    src = tmp_path / "vid.pth"
    torch.save({"model": source}, src)
    report = convert_checkpoint(src, tmp_path / "out.pth", "vitdet-vid", TINY_VITDET)
    assert len(report.dropped) == 5
    model = ViTDet(TINY_VITDET)
    load_weights(model, tmp_path / "out.pth")
    torch.testing.assert_close(model.net.pos_embed.detach(), source["backbone.net.pos_embed"])


def eventful_layout(detectron2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a detectron2 state dict into the reference code's layout (method §12.6), written out literally."""
    block = {
        "norm1": "input_layer_norm",
        "attn.qkv": "qkv",
        "attn.rel_pos_h": "relative_position.y_embedding",
        "attn.rel_pos_w": "relative_position.x_embedding",
        "attn.proj": "projection",
        "norm2": "mlp_layer_norm",
        "mlp.fc1": "mlp_1",
        "mlp.fc2": "mlp_2",
    }
    pyramid = {
        "simfp_2.0": "0.0",
        "simfp_2.1": "0.1",
        "simfp_2.3": "0.3",
        "simfp_2.4": "0.4",
        "simfp_2.4.norm": "0.5",
        "simfp_2.5": "0.6",
        "simfp_2.5.norm": "0.7",
        "simfp_3.0": "1.0",
        "simfp_3.1": "1.1",
        "simfp_3.1.norm": "1.2",
        "simfp_3.2": "1.3",
        "simfp_3.2.norm": "1.4",
        "simfp_4.0": "2.0",
        "simfp_4.0.norm": "2.1",
        "simfp_4.1": "2.2",
        "simfp_4.1.norm": "2.3",
        "simfp_5.1": "3.1",
        "simfp_5.1.norm": "3.2",
        "simfp_5.2": "3.3",
        "simfp_5.2.norm": "3.4",
    }
    out = {}
    for key, value in detectron2.items():
        if key.startswith("backbone.net.patch_embed.proj."):
            key = "embedding.conv." + key.rsplit(".", 1)[1]
        elif key == "backbone.net.pos_embed":
            key, value = "backbone.position_encoding.encoding", value[:, 1:]
        elif key.startswith("backbone.net.blocks."):
            _, _, _, i, rest = key.split(".", 4)
            module, _, leaf = rest.rpartition(".") if not rest.startswith("attn.rel_pos") else (rest, "", "")
            key = f"backbone.blocks.{i}.{block[module]}" + (f".{leaf}" if leaf else "")
        elif key.startswith("backbone.simfp_"):
            module, _, leaf = key[len("backbone.") :].rpartition(".")
            key = f"pyramid.stages.{pyramid[module]}.{leaf}"
        out[key] = value
    return out


def test_reference_converted_layout_converts_to_the_same_weights(tmp_path) -> None:
    source = random_state(detectron2_vitdet_shapes(TINY_VITDET))
    torch.save({"model": source}, tmp_path / "d2.pth")
    torch.save(eventful_layout(source), tmp_path / "eventful.pth")  # a flat state dict
    convert_checkpoint(tmp_path / "d2.pth", tmp_path / "a.pth", "vitdet-vid", TINY_VITDET)
    convert_checkpoint(tmp_path / "eventful.pth", tmp_path / "b.pth", "vitdet-eventful", TINY_VITDET)
    a = torch.load(tmp_path / "a.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_backbone_only_checkpoint_converts_with_a_warning(tmp_path, caplog) -> None:
    """A detectron2 checkpoint of the backbone alone (no simfp_*, no heads): net converts; pyramid and head keep
    their initial weights, as `load_weights` warns; `rgtp convert vitdet` exits 0."""
    shapes = detectron2_vitdet_shapes(TINY_VITDET)
    source = {k: v for k, v in random_state(shapes).items() if k.startswith("backbone.net.")}
    src = tmp_path / "backbone_only.pth"
    torch.save({"model": source}, src)
    dst = tmp_path / "out.pth"
    report = convert_checkpoint(src, dst, "vitdet-vid", TINY_VITDET)
    assert report.parts == ("net",) and report.mapped == len(source)
    assert "provides net only: pyramid, head keep their initial weights" in caplog.text
    model = ViTDet(TINY_VITDET).eval()
    load_weights(model, dst)
    torch.testing.assert_close(model.net.blocks[1].attn.qkv.weight, source["backbone.net.blocks.1.attn.qkv.weight"])
    partial = dict(source)
    partial.update({k: v for k, v in random_state(shapes).items() if k.startswith("backbone.simfp_2")})
    torch.save(partial, src)  # a part given in part is still an error naming the missing keys
    with pytest.raises(ConversionError, match=r"pyramid\.simfp_3"):
        convert_checkpoint(src, dst, "vitdet-vid", TINY_VITDET)
    torch.save({"model": {"something.else": torch.zeros(1)}}, src)  # no backbone at all: nothing is let through
    with pytest.raises(ConversionError, match="matched by no rule"):
        convert_checkpoint(src, dst, "vitdet-vid", TINY_VITDET)
