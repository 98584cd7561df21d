"""Registries are real: every registered name builds what its registry promises (tiny, or on the meta device), and
every name-valued config field is checked against one, so `digit-bench validate` refuses a typo in any of them with
exit 2, the field's name and a did-you-mean, before any compute."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from digit_bench import cli
from digit_bench.backbones import FeatureBackbone, build_backbone
from digit_bench.config import BackboneConfig, ExperimentConfig, LDMConfig
from digit_bench.errors import UserError
from digit_bench.registry import (ALL, BACKBONES, DATASETS, DIT_SIZES, EXTRACTORS, FIELDS, GENERATORS, GPT_SIZES,
                                  METRICS, SCHEDULERS)

REPO = Path(__file__).resolve().parents[1]
SWEEP = f"include: {REPO / 'ablations' / '_base.yaml'}\n"


# ------------------------------------------------------------------------------------- name-valued config fields
def string_fields(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, typing.Any]:
    """{dotted key: type} of every field holding strings: str, Literal, Optional/tuple of them, mappings of them."""
    out: dict[str, typing.Any] = {}
    for f in dataclasses.fields(cls):
        tp, key = typing.get_type_hints(cls)[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.update(string_fields(tp, key + "."))
        elif "str" in repr(tp) or typing.get_origin(tp) is typing.Literal:
            out[key] = tp
    return out


STRING_FIELDS = string_fields()
LITERALS = sorted(k for k, tp in STRING_FIELDS.items() if typing.get_origin(tp) is typing.Literal)
FREE_TEXT = {  # string fields that do not name a registered thing, and what they hold instead
    "name": "the sweep's name (a slug)",
    "data.root": "a folder",
    "backbone.weights": "a weight file",
    "vqgan.weights": "a weight file",
    "eval.weights": "a weight file",
    "ldm.vae_weights": "a diffusers VAE folder",
    "tokenizer.centroids": "an imported artifact id (looked up in the store)",
    "gpt.checkpoint": "an imported artifact id (looked up in the store)",
    "launcher.partition": "the cluster's partition name",
    "launcher.account": "the cluster's account name",
    "launcher.qos": "the cluster's QOS name",
}
OWN_CHECK = {  # name-valued fields checked by config.check_names/check_values, not a registry: (typo, suggestion)
    "profile": ("smok", "smoke"),
    "eval.reference": ("dataset:fashion_mnistt:test", "fashion_mnist"),
    "launcher.gpu_type": ("h20", "h200"),
    "tokenizer.views": ("[identity, hflp]", "hflip"),
}


def test_every_string_field_is_a_registered_name_a_choice_or_declared_free_text():
    """A new string field fails here until it gets a registry (registry.FIELDS), a Literal, or a FREE_TEXT reason."""
    groups = [set(FIELDS), set(LITERALS), set(FREE_TEXT), set(OWN_CHECK)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a field is in two groups"
    assert set().union(*groups) == set(STRING_FIELDS), set(STRING_FIELDS) ^ set().union(*groups)


def _typo(key: str) -> tuple[str, str]:
    """(a --set value one letter off a valid name of `key`, the name validate should suggest)."""
    if key in OWN_CHECK:
        return OWN_CHECK[key]
    if key in LITERALS:
        name = typing.get_args(STRING_FIELDS[key])[-1]
    else:
        name = {"weights": "dinov2_vitb14_reg4", "eval.extra_extractors": "dinov2"}.get(key, FIELDS[key].names()[-1])
    typo = name + name[-1]
    value = {"weights": f"{{{typo}: x.pth}}", "eval.extra_extractors": f"[{typo}]"}.get(key, typo)
    return value, name


NAME_VALUED = sorted(FIELDS) + LITERALS + sorted(OWN_CHECK)


@pytest.mark.parametrize("key", NAME_VALUED)
def test_validate_refuses_a_typo_in_every_name_valued_field(key, tmp_path, capsys):
    value, suggestion = _typo(key)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    code = cli.main(["validate", str(sweep), "--profile", "smoke", "--root", str(tmp_path / "r"),
                     "--set", f"{key}={value}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    assert key in err[0] and f"did you mean {suggestion}?" in err[0], err[0]
    assert not (tmp_path / "r").exists()  # refused before anything is computed or written


def test_ls_lists_the_registries_validate_checks(capsys):
    assert FIELDS["generator"] is ALL["generators"]
    for kind, registry in ALL.items():
        assert cli.main(["ls", kind]) == 0
        assert json.loads(capsys.readouterr().out) == {kind: registry.names()}


# ------------------------------------------------------------------------------------ each registered thing builds
def _png_folder(root: Path, classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_every_dataset_builds_its_train_and_test_parts(tmp_path):
    (tmp_path / "in").mkdir()
    _png_folder(tmp_path / "in" / "train", 2, 3)
    _png_folder(tmp_path / "in" / "val", 2, 2)
    roots = {"imagenet": str(tmp_path / "in"), "folder": str(_png_folder(tmp_path / "f", 2, 5))}
    sizes = {"fashion_mnist": (60_000, 10_000), "digits": (1438, 359), "imagenet": (6, 4), "folder": (9, 1),
             "synthetic": (2000, 500)}
    assert set(sizes) == set(DATASETS.names())
    for name in DATASETS.names():
        raw = DATASETS.get(name)(roots.get(name), 8)
        assert (len(raw.train), len(raw.test)) == sizes[name], name
        first = np.asarray(raw.test.images[0:1])
        assert first.shape == (1, 8, 8, 3) and first.dtype == np.uint8, (name, first.shape)
        assert len(set(raw.train.labels.tolist())) == len(raw.train.classes), name


_VIT = re.compile(r"vit([sblhg])(\d+)")
_WIDTH = {"s": 384, "b": 768, "l": 1024, "h": 1280, "g": 1536}


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if "model_name" in BACKBONES.entry(n)[1]])
def test_every_timm_backbone_is_the_architecture_its_name_says(name):
    """Weights are not downloaded in tests: the timm model and its pretrained tag must exist, and the architecture
    (built on the meta device) must have the width and patch size of the registered name."""
    kw = BACKBONES.entry(name)[1]
    pretrained = timm.models.get_pretrained_cfg(kw["model_name"])
    assert pretrained.hf_hub_id or pretrained.url or kw.get("external_weights"), name
    with torch.device("meta"):
        model = timm.create_model(kw["model_name"], pretrained=False, num_classes=0)
    backbone = FeatureBackbone.from_timm(model, name=name, layer=-3)
    size, patch = _VIT.search(name).groups()
    assert (backbone.embed_dim, backbone.patch_size) == (_WIDTH[size], int(patch)), name


def test_the_local_backbones_build_and_give_patch_features(tmp_path):
    from timm.models import VisionTransformer

    arch = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=0)
    torch.save({"arch": arch, "model": VisionTransformer(**arch).state_dict()}, tmp_path / "backbone.pt")
    images = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)  # (B, H, W, 3)
    widths = {"random_vit": 24, "pixels": 48, "dino_tiny": 24, "moco_tiny": 24, "mae_tiny": 24, "sup_tiny": 24}
    local = [n for n in BACKBONES.names() if "model_name" not in BACKBONES.entry(n)[1]]
    assert sorted(widths) == local
    for name in local:
        cfg = BackboneConfig(name=name, img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, layer=-1,
                             weights=str(tmp_path / "backbone.pt"))
        backbone = build_backbone(cfg)
        assert backbone(images).shape == (2, 16, widths[name]), name  # (B, T, D)


@pytest.mark.parametrize("kind", [k for k in ALL if k != "generators"])
def test_every_entrys_fixed_arguments_are_ones_its_builder_takes(kind):
    """A misspelt keyword in a registry line fails here, not when a sweep first builds that entry."""
    import inspect

    for name in ALL[kind].names():
        target, kwargs = ALL[kind].entry(name)
        kwargs.pop("release_file", None), kwargs.pop("release_url", None)  # metadata, never passed on
        module, attr = target.split(":")
        inspect.signature(getattr(importlib.import_module(module), attr)).bind_partial(**kwargs)


@pytest.mark.parametrize("builder", ["timm_backbone", "random_vit", "pixels", "pretrained_tiny"])
def test_backbone_builders_take_no_unknown_keywords(builder):
    import inspect

    from digit_bench import backbones

    params = inspect.signature(getattr(backbones, builder)).parameters.values()
    assert all(p.kind is not p.VAR_KEYWORD for p in params)
    with pytest.raises(TypeError, match="unexpected keyword"):
        getattr(backbones, builder)(layer=-1, patch_size=4, depth_typo=3)


@pytest.mark.parametrize("name", GENERATORS.names())
def test_every_generator_resolves_to_its_recipe(name):
    from digit_bench.generators.common import Generator

    target, _ = GENERATORS.entry(name)
    assert target == f"digit_bench.generators.{name}:GENERATOR"  # one recipe module per generator, named after it
    recipe = GENERATORS.get(name)
    assert isinstance(recipe, Generator) and callable(recipe.nodes) and callable(recipe.seeds)


def test_every_extractor_builds_or_names_its_missing_weights(tmp_path, monkeypatch):
    from digit_bench.models.classifier import Classifier, save_classifier

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: nothing is downloaded
    save_classifier(Classifier(num_classes=3, width=4).eval(), tmp_path / "classifier.pt")
    assert EXTRACTORS.get("local")(str(tmp_path / "classifier.pt")).name == "local"
    for name in ("inception", "dinov2"):
        with pytest.raises(UserError, match=r"torch\.hub|hub cache|not found|missing|download"):
            EXTRACTORS.get(name)()
    assert EXTRACTORS.names() == ["dinov2", "inception", "local"]


def test_every_gpt_size_builds_its_documented_width():
    from digit_bench.models.gpt import GPT

    for name in GPT_SIZES.names():
        cfg = GPT_SIZES.get(name)()
        layers, width = map(int, re.fullmatch(r"(\d+) layers, width (\d+).*", GPT_SIZES.doc(name)).groups())
        assert (cfg.n_layer, cfg.n_embd) == (layers, width), name
    with torch.device("meta"):
        digit_b = GPT(GPT_SIZES.get("digit-b")())
    assert 218e6 < sum(p.numel() for p in digit_b.parameters()) < 220e6  # the paper's 219M


@pytest.mark.parametrize("name, millions", [("dit-tiny", None), ("dit-s", 33), ("dit-b", 130), ("dit-l", 458),
                                            ("dit-xl", 675)])
def test_every_dit_size_builds_the_papers_parameter_count(name, millions):
    assert name in DIT_SIZES
    with torch.device("meta"):
        denoiser = DIT_SIZES.get(name)(num_classes=1000, latent_channels=4, latent_size=32)
    # diffusers keeps a copy of the timestep + class embedding in every block (`norm1.emb`); the paper counts one
    per_block = sum(p.numel() for n, p in denoiser.named_parameters() if ".norm1.emb." in n)
    layers = len(denoiser.net.transformer_blocks)
    params = (sum(p.numel() for p in denoiser.parameters()) - per_block * (layers - 1) / layers) / 1e6
    if millions:
        assert abs(params - millions) / millions < 0.03, (name, params)  # DiT paper Table 1 (latent 32x32x4)
    else:
        assert params < 5, params


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_samples_from_the_training_schedule(name):
    from digit_bench.models.ldm import sampling_scheduler

    scheduler = sampling_scheduler(LDMConfig(scheduler=name, num_train_timesteps=20, num_inference_steps=4))
    assert type(scheduler).__name__ == name
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma  # (1, C, h, w)
    for t in scheduler.timesteps[:2]:
        eps = torch.zeros_like(scheduler.scale_model_input(x, t))  # (1, C, h, w)
        x = scheduler.step(eps, t, x).prev_sample  # (1, C, h, w)
    assert x.shape == (1, 2, 4, 4) and torch.isfinite(x).all()


def test_every_metric_family_knows_its_direction():
    for name in METRICS.names():
        assert METRICS.get(name)().name == name
    assert METRICS.get("fd")().higher_is_better is False and METRICS.get("probe_top1")().higher_is_better is True
