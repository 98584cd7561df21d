"""validate checks the disk: every file a paper sweep reads exists before anything is submitted, and weight paths
resolve in $DIGIT_BENCH_WEIGHTS or beside the YAML file that names them, never in the job's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from digit_bench.cli import main
from digit_bench.config import load_sweep
from digit_bench.eval.fidelity import INCEPTION_FILE
from digit_bench.registry import BACKBONES

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p for p in (REPO / "ablations").glob("*.yaml") if not p.name.startswith("_")) + \
    sorted((REPO / "baselines").glob("*.yaml"))
RELEASE_FILES = ["vqgan_jax_strongaug.ckpt"] + [BACKBONES.entry(n)[1]["release_file"] for n in
                                                ("dinov2_vitb14_reg4", "dinov2_vitl14_reg4", "mocov3_vitb16", "ibot_vitb16")]
MAE_HUB = "timm/vit_base_patch16_224.mae"  # mae_vitb16 loads timm's converted weights from the HF cache


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


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_paper_sweep_validates_with_its_files_and_names_the_first_missing_one(disk, sweep, capsys):
    for profile in ("paper", "paper_long"):
        assert main(["validate", str(sweep), "--profile", profile, "--root", str(disk / "runs")]) == 0
    ldm = sweep.stem == "ldm"
    if ldm:
        (disk / "weights" / "sd-vae-ft-ema").rmdir()
    else:
        (disk / "weights" / "vqgan_jax_strongaug.ckpt").unlink()
    capsys.readouterr()
    assert main(["validate", str(sweep), "--profile", "paper", "--root", str(disk / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if ldm:
        assert f"missing {REPO / 'baselines' / 'sd-vae-ft-ema'}: ldm.vae_weights" in err
    else:
        assert f"missing {REPO / 'ablations' / 'vqgan_jax_strongaug.ckpt'}: vqgan.weights" in err  # beside _base.yaml
        assert "LTH14/mage" in err


def test_a_backbone_without_timm_weights_names_its_release_file(disk, capsys):
    (disk / "weights" / "vit-b-300ep.pth.tar").unlink()
    assert main(["validate", str(REPO / "ablations/backbones.yaml"), "--profile", "paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vit-b-300ep.pth.tar: weights (mocov3_vitb16)" in err and "moco-v3" in err


def test_missing_imagenet_is_named_before_anything_runs(disk, capsys):
    assert main(["validate", str(REPO / "ablations/backbones.yaml"), "--profile", "paper",
                 "--set", f"data.root={disk / 'nowhere'}"]) == 2
    assert f"missing {disk / 'nowhere' / 'train'}: data.root" in capsys.readouterr().err


def test_weight_paths_resolve_beside_the_yaml_or_in_the_weights_folder_never_the_cwd(tmp_path, monkeypatch):
    sweeps, elsewhere = tmp_path / "sweeps", tmp_path / "cwd"
    sweeps.mkdir(), elsewhere.mkdir()
    (sweeps / "s.yaml").write_text("defaults:\n  vqgan.weights: vq.ckpt\n  weights:\n    mocov3_vitb16: moco.pth\n"
                                   "  backbone.name: mocov3_vitb16\n")
    (elsewhere / "vq.ckpt").write_bytes(b"w")  # a file of that name in the cwd is not taken
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("DIGIT_BENCH_WEIGHTS", raising=False)
    cfg = load_sweep(sweeps / "s.yaml").runs[0].cfg
    assert cfg.vqgan.weights == str(sweeps / "vq.ckpt") and cfg.backbone.weights == str(sweeps / "moco.pth")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "moco.pth").write_bytes(b"w")
    monkeypatch.setenv("DIGIT_BENCH_WEIGHTS", str(tmp_path / "w"))
    cfg = load_sweep(sweeps / "s.yaml").runs[0].cfg
    assert cfg.backbone.weights == str(tmp_path / "w" / "moco.pth")  # found there
    assert cfg.vqgan.weights == str(sweeps / "vq.ckpt")  # not there: beside the YAML
    explicit = load_sweep(sweeps / "s.yaml", sets=["backbone.weights=/abs/mine.pth"]).runs[0].cfg
    assert explicit.backbone.weights == "/abs/mine.pth"  # an explicit backbone.weights wins over the map


def test_a_timm_backbone_without_cached_weights_says_how_to_fetch_them(disk, capsys):
    import shutil

    shutil.rmtree(disk / "hf")
    assert main(["validate", str(REPO / "ablations/backbones.yaml"), "--profile", "paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "backbone.name (mae_vitb16, timm hub weights)" in err and f"hf download {MAE_HUB}" in err
