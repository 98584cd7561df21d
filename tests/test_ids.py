"""Artifact ids hash exactly what changes an artifact's bytes: for every role of every registered generator, a
speed-only setting keeps its id and some bytes-changing setting moves it (no computation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from digit_bench.config import Override, apply_overrides, load_sweep
from digit_bench.engine.dag import run_dag
from digit_bench.registry import GENERATORS

ABL = Path(__file__).resolve().parents[1] / "ablations"
SPEED = {"backbone.batch_size": 7, "sample.batch_size": 3}  # inference batch sizes: batch-invariant stages
BYTES = {"ssl.train.steps": 11, "features.fraction": 0.2, "tokenizer.niter": 3, "tokenizer.views": ["identity"],
         "vqgan.ch": 16, "train.lr": 7.7e-4, "sample.top_k": 5, "probe.max_iter": 7, "stability.num_images": 9,
         "stage2.train.lr": 7.7e-4, "stage2.top_p": 0.5, "eval.bootstrap": 3, "ldm.kl_weight": 1e-3,
         "ldm.train.lr": 7.7e-4, "ldm.num_inference_steps": 3, "sample.seed": 5}


def base(generator: str):
    cfg = load_sweep(ABL / "backbones.yaml", "smoke", ["backbone.name=dino_tiny"]).runs[0].cfg
    return dataclasses.replace(cfg, generator=generator)


def changed(cfg, key: str, value) -> dict:
    return run_dag(apply_overrides(cfg, [Override(key, value, "test")]))


@pytest.mark.parametrize("generator", GENERATORS.names())
def test_speed_settings_keep_every_id_and_reach_the_stages(generator):
    cfg = base(generator)
    dag = run_dag(cfg)
    for key, value in SPEED.items():
        other = changed(cfg, key, value)
        assert {r: n.id for r, n in other.items()} == {r: n.id for r, n in dag.items()}, key
        # the setting still reaches the stages that batch: it moved from the hashed config to `speed`
        moved = [r for r in dag if dag[r].speed != other[r].speed]
        assert all(other[r].speed["batch_size"] == value for r in moved), (key, moved)
        assert moved or key == "backbone.batch_size" and generator != "digit", key


@pytest.mark.parametrize("generator", GENERATORS.names())
def test_every_role_is_rekeyed_by_some_bytes_setting(generator):
    cfg = base(generator)
    dag = run_dag(cfg)
    moved_by = {role: [] for role in dag}
    for key, value in BYTES.items():
        other = changed(cfg, key, value)
        for role, node in dag.items():
            if other[role].id != node.id:
                moved_by[role].append(key)
    assert all(moved_by.values()), {r: k for r, k in moved_by.items() if not k}


def test_decoding_settings_rekey_the_rendered_images_but_not_the_trained_decoder():
    cfg = base("digit")
    dag = run_dag(cfg)
    for key, value in {"stage2.top_p": 0.5, "stage2.temperature": 0.7, "stage2.maskgit_steps": 4,
                       "stage2.choice_temperature": 2.0}.items():
        other = changed(cfg, key, value)
        assert other["stage2"].id == dag["stage2"].id, key
        assert other["images"].id != dag["images"].id and other["metrics"].id != dag["metrics"].id, key
    assert changed(cfg, "stage2.train.lr", 7.7e-4)["stage2"].id != dag["stage2"].id


def test_the_seed_agreement_refit_is_the_cluster_artifact_of_the_next_seed():
    cfg = base("digit")
    dag = run_dag(cfg)
    refit = dag["reseeded_centroids"]
    assert refit.stage == "cluster" and refit.cfg["seed"] == cfg.tokenizer.seed + 1
    assert refit.id == changed(cfg, "tokenizer.seed", cfg.tokenizer.seed + 1)["centroids"].id  # shared, cached once
    assert dag["tokenizer_metrics"].parents["reseeded_centroids"] is refit
