"""The MaskGIT-over-VQGAN-tokens baseline, end to end through its registered recipe (smoke profile, cut further)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digit_bench import sweep
from digit_bench.artifacts import Store
from digit_bench.config import load_sweep
from digit_bench.engine.dag import run_dag

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "baselines" / "maskgit_vq.yaml"
FAST_SETS = ["data.num_train=200", "data.num_val=40", "vqgan.train.steps=3", "vqgan.train.batch_size=8",
             "maskgit_vq.train.steps=4", "maskgit_vq.train.batch_size=8", "maskgit_vq.train.checkpoint_every=2",
             "maskgit_vq.steps=4", "sample.num_samples=40", "sample.batch_size=16", "eval.local_train.steps=5",
             "eval.local_train.batch_size=32", "eval.num_reference=200", "eval.bootstrap=5", "probe.max_iter=20",
             "probe.num_train=100", "stability.num_images=8"]


@pytest.mark.slow  # ~25 s on an idle 2-core CPU
def test_maskgit_vq_runs_end_to_end_and_shares_the_vq_tokenizer_with_vqgan_ar(tmp_path):
    argv = [str(SWEEP), "--profile", "smoke", "--root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--cluster", "debug", *[a for kv in FAST_SETS for a in ("--set", kv)]]
    assert sweep.main(argv) == 0
    df = pd.read_csv(tmp_path / "results" / "maskgit_vq" / "smoke" / "results.csv")
    run = df.query("row_kind == 'run'")
    assert list(run["generator"]) == ["maskgit_vq"] and np.isfinite(run["fd_local"]).all()
    assert run["params"].iloc[0] > 0  # the MaskGIT's size, stage 1 as the paper counts it
    assert json.loads(run["stage_seeds"].iloc[0]) == {"vqgan": 0, "maskgit": 0, "sample": 0, "judge": 0}

    cfg = load_sweep(SWEEP, "smoke", FAST_SETS).runs[0].cfg
    dag = run_dag(cfg)
    samples = Store(tmp_path / "runs").lookup("maskgit_vq_sample", dag["samples"].id)
    tokens = np.load(samples / "tokens.npy")  # (N, T) VQ codes
    assert tokens.shape[0] == 40 and tokens.max() < cfg.vqgan.n_embed and len({t.tobytes() for t in tokens}) > 1
    vq = run_dag(dataclasses.replace(cfg, generator="vqgan_ar"))
    for role in ("vqgan", "vq_tokens", "tokenizer_metrics", "ceiling_metrics"):
        assert dag[role].id == vq[role].id, role  # one VQ tokenizer for both VQ-token baselines


def test_validate_rejects_a_typo_in_the_generator_or_its_size_before_any_compute(tmp_path, capsys):
    from digit_bench import cli

    for key, value, hint in (("generator", "maskgit_v", "did you mean maskgit_vq?"),
                             ("maskgit_vq.size", "gpt-nan", "did you mean gpt-nano?")):
        code = cli.main(["validate", str(SWEEP), "--profile", "smoke", "--root", str(tmp_path), "--set", f"{key}={value}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and hint in err and key.split(".")[0] in err, err
    assert not any(tmp_path.iterdir())  # nothing computed
