"""Shared fixtures: an artifact root per test, and offline settings for timm/HF."""

from __future__ import annotations

import os

import pytest

from digit_bench.eval.fidelity import INCEPTION_FILE
from digit_bench.registry import BACKBONES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing weight file fails in well under a second, never downloads
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def root(tmp_path):
    """An empty artifact root."""
    return tmp_path / "runs"


RELEASE_FILES = ["vqgan_jax_strongaug.ckpt"] + [BACKBONES.entry(n)[1]["release_file"] for n in
                                                ("dinov2_vitb14_reg4", "dinov2_vitl14_reg4", "mocov3_vitb16", "ibot_vitb16")]
MAE_HUB = "timm/" + BACKBONES.entry("mae_vitb16")[1]["model_name"]  # timm's converted MAE weights, in the HF cache


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """A weights folder with every release file, MAE in an HF cache, an ImageNet layout and the Inception weights."""
    from huggingface_hub import constants as hf_constants

    weights = tmp_path / "weights"
    weights.mkdir()
    for name in RELEASE_FILES:
        (weights / name).write_bytes(b"w")
    (weights / "sd-vae-ft-ema").mkdir()  # the LDM baseline's diffusers VAE folder
    for part in ("train/n01440764", "val/n01440764"):
        (tmp_path / "imagenet" / part).mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE).write_bytes(b"w")
    snapshot = tmp_path / "hf" / f"models--{MAE_HUB.replace('/', '--')}" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"w")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("DIGIT_BENCH_WEIGHTS", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DIGIT_BENCH_DATA", str(tmp_path / "imagenet"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
