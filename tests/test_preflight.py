"""validate checks the disk: every file a paper sweep reads exists before anything is submitted, and weight paths
resolve in $DIGIT_BENCH_WEIGHTS or beside the YAML file that names them, never in the job's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from digit_bench.cli import main
from digit_bench.registry import BACKBONES
from digit_bench.config import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p for p in (REPO / "ablations").glob("*.yaml") if not p.name.startswith("_")) + \
    sorted((REPO / "baselines").glob("*.yaml"))
@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_paper_sweep_validates_with_its_files_and_names_the_first_missing_one(disk, sweep, capsys):
    for profile in ("paper", "paper_long"):
        assert main(["validate", str(sweep), "--profile", profile, "--root", str(disk / "runs")]) == 0
        assert main(["plan", str(sweep), "--profile", profile, "--gpu-type", "h200"]) == 0
    ldm = sweep.stem == "ldm"
    if ldm:
        (disk / "weights" / "sd-vae-ft-ema").rmdir()
    else:
        (disk / "weights" / "vqgan_jax_strongaug.ckpt").unlink()
    capsys.readouterr()
    assert main(["plan", str(sweep), "--profile", "paper"]) == 2
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
    assert "backbone.name (mae_vitb16, timm hub weights)" in err and f"hf download timm/{BACKBONES.entry('mae_vitb16')[1]['model_name']}" in err
