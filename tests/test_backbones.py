"""Backbones: the layer convention, offline weight loading, the pixel control, one transform for fit and tokenise."""

from __future__ import annotations

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.models import VisionTransformer

from digit_bench.backbones import (FeatureBackbone, build_backbone, extract, pixels, pretrained_tiny, random_vit,
                                   timm_backbone)
from digit_bench.config import BackboneConfig
from digit_bench.errors import UserError


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty cache (huggingface_hub reads both at import, so patch its constants too)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def images(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def by_hand(model: torch.nn.Module, x: torch.Tensor, last_block: int) -> torch.Tensor:
    """Blocks 0..last_block by hand, then the final norm, then drop the prefix tokens."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))  # (B, P + T, D)
    for blk in model.blocks[:last_block + 1]:
        h = blk(h)
    return model.norm(h)[:, model.num_prefix_tokens:]  # (B, T, D)



@pytest.mark.parametrize("arch", ["vit", "reg4_dinov2"])
def test_layer_minus_3_is_third_from_last_block_with_norm_and_no_prefix(arch):
    torch.manual_seed(0)
    if arch == "vit":
        model = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=6, num_heads=2, num_classes=0)
        prefix = 1
    else:  # DINOv2 with 4 registers, the paper's backbone family, shrunk through timm kwargs (no weights)
        model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, embed_dim=48,
                                  depth=6, num_heads=2)
        prefix = 5
    assert model.num_prefix_tokens == prefix
    backbone = FeatureBackbone.from_timm(model, name=arch, layer=-3)
    x = torch.from_numpy(images(2, size=backbone.input_size))
    with torch.no_grad():
        got = backbone(x)
        want = by_hand(model, backbone.transform(x), last_block=3)  # depth 6: blocks 0..3, 3 = 6 - 3
        also = FeatureBackbone.from_timm(model, name=arch, layer=3)(x)
        full = by_hand(model, backbone.transform(x), last_block=5)
    assert got.shape == (2, backbone.grid**2, 48)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(also, got, rtol=0, atol=0)
    assert not torch.allclose(got, full)  # the last block is not what we read


def test_layer_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="out of range"):
        random_vit(layer=6, patch_size=4, embed_dim=32, depth=6, num_heads=2, init_seed=0)


def test_random_vit_is_seeded_and_leaves_global_rng_alone():
    kw = dict(layer=-3, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    state = torch.get_rng_state()
    a, b, c = random_vit(init_seed=0, **kw), random_vit(init_seed=0, **kw), random_vit(init_seed=1, **kw)
    assert torch.equal(state, torch.get_rng_state())
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert (a.input_size, a.patch_size, a.embed_dim, a.num_layers, a.grid) == (32, 4, 32, 4, 8)
    assert a.mean == (0.485, 0.456, 0.406)


def test_build_backbone_from_config_defaults():
    backbone = build_backbone(BackboneConfig())
    assert backbone.name == "random_vit" and backbone.num_tokens == 64 and backbone.embed_dim == 192


def test_float_images_in_unit_range_give_the_uint8_features():
    """The stability metric feeds [0, 1] floats; clean images must land exactly where the uint8 path does."""
    backbone = random_vit(layer=-3, patch_size=4, embed_dim=32, depth=4, num_heads=2, init_seed=0)
    x = images(3)
    with torch.no_grad():
        u8 = backbone(torch.from_numpy(x))
        fl = backbone(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(u8, fl)


def test_extract_matches_forward_and_does_not_depend_on_batch_size():
    """The K-Means feature dump goes through the same transform and forward as tokenisation."""
    backbone = random_vit(layer=-3, patch_size=4, embed_dim=32, depth=4, num_heads=2, init_seed=0)
    x = images(7)
    a = extract(backbone, x, batch_size=3, device="cpu")
    b = extract(backbone, x, batch_size=7, device="cpu")
    with torch.no_grad():
        want = backbone(torch.from_numpy(x)).to(torch.float16).numpy()
    assert a.dtype == np.float16 and a.shape == (7, 64, 32)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(a, b)


def test_tokenize_stage_uses_the_fitting_transform(monkeypatch):
    """Transform parity: tokens made by the tokenize stage = nearest centroid of the features the fit sees."""
    from digit_bench.stages import tokenize
    from digit_bench.stages.tokenize import images_to_tokens

    monkeypatch.setattr(tokenize, "device", lambda: torch.device("cpu"))  # fp32 on both paths, even with a GPU
    from digit_bench.tokenizers.kmeans import assign, fit_kmeans

    backbone = random_vit(layer=-3, patch_size=4, embed_dim=32, depth=4, num_heads=2, init_seed=0)
    x = images(6)
    feats = extract(backbone, x, batch_size=4, device="cpu")  # (6, 64, 32) float16, as the features stage
    flat = feats.reshape(-1, 32).astype(np.float32)
    centroids, _ = fit_kmeans(flat, k=16, niter=5, seed=0, backend="faiss")
    tokens, _ = images_to_tokens(backbone, centroids, x, ["identity"], batch_size=4, backend="faiss")
    agree = (tokens[0].reshape(-1) == assign(flat, centroids, "faiss")).mean()
    assert agree > 0.98  # float16 storage of the dump may flip a near-tie; a different transform would not agree


def test_pixels_are_standardised_patches():
    backbone = build_backbone(BackboneConfig(name="pixels", patch_size=4))
    x = images(2, size=32)
    with torch.no_grad():
        f = backbone(torch.from_numpy(x))
    assert f.shape == (2, 64, 48) and backbone.embed_dim == 48 and backbone.grid == 8
    mean, std = np.array(backbone.mean), np.array(backbone.std)
    patch = (x[1, 4:8, 8:12].astype(np.float32) / 255 - mean) / std  # row 1, column 2 of the 8x8 grid, (4, 4, 3)
    np.testing.assert_allclose(f[1, 1 * 8 + 2].numpy(), patch.transpose(2, 0, 1).reshape(-1), rtol=1e-5, atol=1e-6)
    assert pixels(patch_size=8).num_tokens == 16


def test_missing_pretrained_weights_is_one_line_user_error(offline_hf):
    with pytest.raises(UserError) as e:
        timm_backbone("vit_tiny_patch16_224.augreg_in21k_ft_in1k", layer=-3, name="vit_tiny")
    msg = str(e.value)
    assert "\n" not in msg
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/model.safetensors" in msg and str(offline_hf) in msg
    assert "backbone.weights" in msg and "hf download" in msg


def test_missing_weight_file_and_external_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        timm_backbone("vit_small_patch16_224.dino", layer=-3, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="backbone.weights"):
        build_backbone(BackboneConfig(name="mocov3_vitb16"))
    with pytest.raises(UserError, match="pretrain_ssl"):
        build_backbone(BackboneConfig(name="dino_tiny"))


def quick_random(name: str) -> torch.nn.Module:
    """A timm model with seeded N(0, 1) weights, built on the meta device (skips timm's slow init)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g))
    return model


def meta_dinov2_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """A timm reg4 DINOv2 model's weights in Meta's release layout (pos_embed with a CLS slot, register_tokens)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    D = sd["cls_token"].shape[-1]
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, D), sd["pos_embed"]], 1)  # (1, 1 + 37², D)
    sd["register_tokens"] = sd.pop("reg_token")  # (1, 4, D)
    sd["mask_token"] = torch.zeros(1, D)
    return sd


def test_official_dinov2_checkpoint_loads_through_weights(tmp_path):
    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    source = quick_random(name)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(meta_dinov2_state_dict(source), path)
    backbone = timm_backbone(name, layer=-3, weights=str(path), img_size=224)  # the paper's input size
    loaded = backbone.model.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    for k, v in source.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(loaded[k], v), k
    assert loaded["pos_embed"].shape == (1, 256, 384)  # 37x37 resampled to 16x16 by timm's checkpoint filter
    assert (backbone.input_size, backbone.grid, backbone.num_layers, backbone.embed_dim) == (224, 16, 12, 384)


def test_seeded_hf_cache_loads_offline(offline_hf):
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    source = quick_random(name)
    repo = offline_hf / f"models--timm--{name}"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    safetensors.torch.save_file(source.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")
    backbone = timm_backbone(name, layer=-3, name="vit_tiny")
    loaded = backbone.model.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("head."):  # the classifier is dropped: features only
            assert torch.equal(loaded[k], v), k
    assert backbone.input_size == 224 and backbone.mean == (0.5, 0.5, 0.5)  # mean/std from timm's pretrained cfg


def test_pretrained_tiny_loads_the_ssl_stage_file(tmp_path):
    arch = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    torch.manual_seed(0)
    source = VisionTransformer(**arch)
    torch.save({"arch": arch, "model": source.state_dict()}, tmp_path / "backbone.pt")
    backbone = pretrained_tiny("dino", layer=-3, weights=str(tmp_path / "backbone.pt"))
    x = torch.from_numpy(images(2, size=32))
    with torch.no_grad():
        want = source.forward_intermediates(backbone.transform(x), indices=[-3], norm=True, output_fmt="NLC",
                                            intermediates_only=True)[0]
        got = backbone(x)
    assert backbone.name == "dino_tiny"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_weight_file_of_another_model_is_a_user_error(tmp_path):
    torch.save(VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2).state_dict(),
               tmp_path / "tiny.pth")
    with pytest.raises(UserError, match="does not fit"):
        timm_backbone("vit_tiny_patch16_224.augreg_in21k_ft_in1k", layer=-3, weights=str(tmp_path / "tiny.pth"))


@pytest.mark.parametrize("layout", ["mocov3", "ibot"])
def test_external_release_checkpoints_load_their_encoder(tmp_path, layout):
    """MoCo v3 (`module.base_encoder.*` + projector + momentum encoder) and iBOT (`backbone.*` + DINOHead)."""
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    source = quick_random(name)
    enc = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    if layout == "mocov3":
        sd = {f"module.base_encoder.{k}": v for k, v in enc.items()}
        sd |= {f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in enc.items()}
        sd["module.base_encoder.head.0.weight"] = torch.zeros(4096, 192)
        ckpt = {"epoch": 300, "arch": "vit_base", "state_dict": sd}
    else:
        sd = {f"backbone.{k}": v for k, v in enc.items()} | {"backbone.masked_embed": torch.zeros(1, 192),
                                                              "head.last_layer.weight": torch.zeros(8192, 256)}
        ckpt = {"state_dict": sd}
    torch.save(ckpt, tmp_path / "release.pth")
    backbone = timm_backbone(name, layer=-3, weights=str(tmp_path / "release.pth"), external_weights="a release")
    loaded = backbone.model.state_dict()
    assert loaded.keys() == enc.keys()
    for k, v in enc.items():
        assert torch.equal(loaded[k], v), k
    assert backbone.mean == (0.485, 0.456, 0.406)  # both releases normalise with ImageNet statistics
