"""The run DAG: which artifacts runs share, which a change re-keys, and wave order (no computation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from digit_bench.config import Override, apply_overrides, load_sweep
from digit_bench.engine.dag import run_dag
from digit_bench.generators.common import stage_seeds
from digit_bench.engine.dag import make_plan

ABL = Path(__file__).resolve().parents[1] / "ablations"


def test_codebook_sweep_reuses_one_feature_dump():
    plan = make_plan(load_sweep(ABL / "codebook_sizes.yaml", "smoke"))
    dags = list(plan.dags.values())
    assert len(dags) == 2
    assert len({d["features"].id for d in dags}) == 1
    assert len({d["centroids"].id for d in dags}) == 2 and len({d["tokens"].id for d in dags}) == 2
    stages = [n.stage for wave in plan.waves for n in wave]
    assert stages.count("extract") == 1 and stages.count("cluster") == 4  # each codebook and its seed + 1 refit


def test_a_new_kmeans_seed_rekeys_everything_below_it():
    cfg = load_sweep(ABL / "codebook_sizes.yaml", "smoke").runs[0].cfg
    a = run_dag(cfg)
    b = run_dag(apply_overrides(cfg, [Override("tokenizer.seed", 7, "test")]))
    assert a["features"].id == b["features"].id and a["vqgan"].id == b["vqgan"].id
    for role in ("centroids", "tokens", "gpt", "samples", "stage2", "images", "metrics"):
        assert a[role].id != b[role].id, role


def test_generator_scope_seeds_share_the_instruments_but_not_the_generator():
    runs = load_sweep(ABL / "model_scales.yaml", "smoke", ["gpt.size=gpt-nano", "seed_scope=generator"]).runs
    s0 = run_dag(runs[0].cfg)
    s1 = run_dag(dataclasses.replace(runs[0].cfg, seed=1))
    for role in ("features", "tokens", "vqgan", "stage2", "ceiling_metrics", "real_metrics"):
        assert s0[role].id == s1[role].id, role
    for role in ("gpt", "samples", "images", "metrics", "probe"):
        assert s0[role].id != s1[role].id, role
    assert stage_seeds(runs[0].cfg)["vqgan"] == stage_seeds(dataclasses.replace(runs[0].cfg, seed=1))["vqgan"]


def test_full_scope_seeds_rekey_every_stochastic_stage():
    cfg = load_sweep(ABL / "backbones.yaml", "smoke", ["backbone.name=dino_tiny"]).runs[0].cfg
    assert cfg.seed_scope == "full" and cfg.seed == 0
    s0, s1 = run_dag(cfg), run_dag(dataclasses.replace(cfg, seed=1))
    for role in ("ssl", "features", "centroids", "tokens", "vqgan", "stage2", "gpt", "samples", "images", "metrics",
                 "ceiling_metrics", "real_metrics"):
        assert s0[role].id != s1[role].id, role
    assert s0["metrics"].parents["classifier"].id != s1["metrics"].parents["classifier"].id  # the judge too
    seeds = stage_seeds(dataclasses.replace(cfg, seed=1))
    assert seeds["vqgan"] == seeds["stage2"] == seeds["judge"] == 1 and seeds["kmeans"] == cfg.tokenizer.seed + 1
    # seed 0 is the configured seeds: the same artifacts under both scopes
    generator = run_dag(dataclasses.replace(cfg, seed_scope="generator"))
    assert all(generator[role].id == node.id for role, node in s0.items())
    ldm = stage_seeds(dataclasses.replace(cfg, generator="ldm", seed=2))
    assert ldm == {"vae": 2, "ldm": 2, "sample": cfg.sample.seed + 2, "judge": 2}


def test_downstream_scope_seeds_share_the_encoder_and_rekey_everything_after_it():
    cfg = load_sweep(ABL / "backbones.yaml", "smoke", ["backbone.name=dino_tiny", "seed_scope=downstream"]).runs[0].cfg
    full = run_dag(dataclasses.replace(cfg, seed_scope="full"))
    s0, s1 = run_dag(cfg), run_dag(dataclasses.replace(cfg, seed=1))
    assert s0["ssl"].id == s1["ssl"].id  # pretrained once for every seed
    for role in ("features", "centroids", "tokens", "vqgan", "stage2", "gpt", "samples", "images", "metrics",
                 "ceiling_metrics", "real_metrics"):
        assert s0[role].id != s1[role].id, role
    assert s0["metrics"].parents["classifier"].id != s1["metrics"].parents["classifier"].id  # the judge too
    seeds = stage_seeds(dataclasses.replace(cfg, seed=1))
    assert seeds["backbone"] == cfg.backbone.init_seed and seeds["vqgan"] == seeds["stage2"] == seeds["judge"] == 1
    assert seeds["kmeans"] == cfg.tokenizer.seed + 1
    assert all(full[role].id == node.id for role, node in s0.items())  # seed 0: the configured seeds, as under full
    untrained = load_sweep(ABL / "backbones.yaml", "smoke", ["backbone.name=random_vit", "seed_scope=downstream"])
    r0 = untrained.runs[0].cfg
    features0, features1 = run_dag(r0)["features"], run_dag(dataclasses.replace(r0, seed=1))["features"]
    assert features0.cfg["backbone"] == features1.cfg["backbone"]  # the same random-ViT init ...
    assert features0.id != features1.id  # ... read at other K-Means images
    assert stage_seeds(dataclasses.replace(r0, seed=1))["backbone"] == r0.backbone.init_seed


def test_thread_count_is_part_of_every_id():
    cfg = load_sweep(ABL / "codebook_sizes.yaml", "smoke").runs[0].cfg
    a, b = run_dag(cfg), run_dag(dataclasses.replace(cfg, threads=2))
    assert all(a[role].cfg["threads"] == 1 and a[role].id != b[role].id for role in a)


def test_waves_put_every_parent_before_its_children():
    plan = make_plan(load_sweep(ABL / "backbones.yaml", "smoke"))
    wave_of = {n.key: i for i, wave in enumerate(plan.waves) for n in wave}
    assert len(wave_of) == sum(len(w) for w in plan.waves)  # each artifact once
    for wave in plan.waves:
        for n in wave:
            assert all(wave_of[p.key] < wave_of[n.key] for p in n.parents.values())
