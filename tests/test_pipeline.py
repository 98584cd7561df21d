"""The run DAG: which artifacts runs share, which a change re-keys, and wave order (no computation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from digit_bench.config import Override, apply_overrides, load_sweep
from digit_bench.pipeline import run_dag
from digit_bench.sweep import make_plan

ABL = Path(__file__).resolve().parents[1] / "ablations"


def test_codebook_sweep_reuses_one_feature_dump():
    plan = make_plan(load_sweep(ABL / "codebook_sizes.yaml", "smoke"))
    dags = list(plan.dags.values())
    assert len(dags) == 2
    assert len({d["features"].id for d in dags}) == 1
    assert len({d["centroids"].id for d in dags}) == 2 and len({d["tokens"].id for d in dags}) == 2
    stages = [n.stage for wave in plan.waves for n in wave]
    assert stages.count("extract") == 1 and stages.count("cluster") == 2


def test_a_new_kmeans_seed_rekeys_everything_below_it():
    cfg = load_sweep(ABL / "codebook_sizes.yaml", "smoke").runs[0].cfg
    a = run_dag(cfg)
    b = run_dag(apply_overrides(cfg, [Override("tokenizer.seed", 7, "test")]))
    assert a["features"].id == b["features"].id and a["vqgan"].id == b["vqgan"].id
    for role in ("centroids", "tokens", "gpt", "samples", "stage2", "images", "metrics"):
        assert a[role].id != b[role].id, role


def test_run_seeds_share_the_instruments_but_not_the_generator():
    runs = load_sweep(ABL / "model_scales.yaml", "smoke", ["gpt.size=gpt-nano"]).runs
    s0 = run_dag(runs[0].cfg)
    s1 = run_dag(dataclasses.replace(runs[0].cfg, seed=1))
    for role in ("features", "tokens", "vqgan", "stage2", "ceiling_metrics", "real_metrics"):
        assert s0[role].id == s1[role].id, role
    for role in ("gpt", "samples", "images", "metrics", "probe"):
        assert s0[role].id != s1[role].id, role


def test_waves_put_every_parent_before_its_children():
    plan = make_plan(load_sweep(ABL / "backbones.yaml", "smoke"))
    wave_of = {n.key: i for i, wave in enumerate(plan.waves) for n in wave}
    assert len(wave_of) == sum(len(w) for w in plan.waves)  # each artifact once
    for wave in plan.waves:
        for n in wave:
            assert all(wave_of[p.key] < wave_of[n.key] for p in n.parents.values())
