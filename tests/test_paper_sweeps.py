"""The sweeps of the paper's remaining experiments: conditional (Table 4), prefix_length (Fig. 4b), sampling (Fig. 6)
and paper_long (400 epochs) expand in every profile; their smoke profiles plan (default run) and run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_bench.config import load_sweep
from digit_bench.models.gpt import GPT, gpt_config
from digit_bench.engine.dag import make_plan, run_dag
from digit_bench.engine.rows import _ceiling_points
from digit_bench.sweep import main as sweep_main

ABL = Path(__file__).resolve().parents[1] / "ablations"
NEW = ("conditional", "prefix_length", "sampling", "paper_long")


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("profile", ["smoke", "tiny", "paper"])
def test_every_profile_expands(name, profile):
    sweep = load_sweep(ABL / f"{name}.yaml", profile)
    assert sweep.runs and all(run_dag(r.cfg)["metrics"] for r in sweep.runs)


@pytest.mark.parametrize("name", NEW)
def test_smoke_dry_run_plans_without_computing(name, tmp_path, capsys):
    assert sweep_main([str(ABL / f"{name}.yaml"), "--profile", "smoke", "--root", str(tmp_path), "--dry-run"]) == 0
    assert not (tmp_path / "train").exists()


def test_conditional_paper_cells_sample_as_the_released_scripts():
    runs = load_sweep(ABL / "conditional.yaml", "paper").runs
    cells = {(r.cfg.generator, r.cfg.gpt.class_conditional): r.cfg for r in runs}
    assert cells[("digit", True)].sample.top_k == 300 and cells[("digit", False)].sample.top_k == 200
    assert cells[("digit", True)].gpt.label_dropout == 0 and cells[("digit", True)].sample.cfg_scale == 1.0


def test_each_decoder_ceiling_carries_the_swept_settings_its_runs_share():
    plan = make_plan(load_sweep(ABL / "sampling.yaml", "smoke"))
    points = _ceiling_points(plan)
    by_run = {r.run_id: points[plan.dags[r.run_id]["ceiling_metrics"].id] for r in plan.sweep.runs}
    decoded = [r for r in plan.sweep.runs if "stage2.top_p" in r.point]
    assert decoded and all(by_run[r.run_id] == {"stage2.top_p": r.point["stage2.top_p"]} for r in decoded)
    assert all(by_run[r.run_id] == {} for r in plan.sweep.runs if "sample.top_k" in r.point)  # one shared ceiling


def test_sampling_selects_on_val_and_never_reads_test():
    for profile in ("smoke", "tiny", "paper"):
        for run in load_sweep(ABL / "sampling.yaml", profile).runs:
            assert run.cfg.eval.reference.endswith(":val"), (profile, run.run_id)


def test_prefix_length_shares_one_gpt_per_tokenizer_and_prompts_from_tokens():
    dags = [run_dag(r.cfg) for r in load_sweep(ABL / "prefix_length.yaml", "tiny").runs]
    assert len({d["gpt"].id for d in dags}) == 2 and len({d["samples"].id for d in dags}) == len(dags)
    for d in dags:
        has_prompts = "prompts" in d["samples"].parents
        assert has_prompts == (d["samples"].cfg["prefix_len"] > 0)
        if has_prompts:
            assert d["samples"].parents["prompts"] is d["gpt"].parents["tokens"]


def test_unprompted_samples_have_no_prompt_parent():
    cfg = load_sweep(ABL / "prefix_length.yaml", "smoke").runs[0].cfg
    samples = run_dag(cfg)["samples"]
    assert samples.cfg["prefix_len"] == 0 and "prompts" not in samples.parents


def test_a_prompt_fixes_the_first_tokens_and_the_rest_is_sampled():
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-nano", vocab_size=32, seq_len=16)).eval()
    prompt = torch.randint(0, 32, (3, 5))
    a = model.generate(3, seeds=[0, 1, 2], prompt=prompt)
    b = model.generate(3, seeds=[0, 1, 2], prompt=prompt, use_cache=False)
    assert torch.equal(a[:, :5], prompt) and torch.equal(a, b)
    assert not torch.equal(a, model.generate(3, seeds=[0, 1, 2]))


@pytest.mark.slow  # each smoke sweep trains its stages (minutes on 2 cores)
@pytest.mark.parametrize("name", NEW)
def test_smoke_sweep_runs(name, tmp_path):
    assert sweep_main([str(ABL / f"{name}.yaml"), "--profile", "smoke", "--root", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "results")]) == 0
    rows = (tmp_path / "results" / name / "smoke" / "results.csv").read_text().splitlines()
    assert len(rows) > 1
    for metrics in (tmp_path / "runs" / "evaluate").glob("*/metrics.json"):
        assert np.isfinite(json.loads(metrics.read_text())["fd_local"])
    table = (tmp_path / "results" / name / "smoke" / "table.md").read_text()
    ceilings = table.split("## Ceilings")[1].split("## ")[0]
    labels = [line.split(" | ")[0] for line in ceilings.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(labels) == len(set(labels)), labels  # two decoders of one tokenizer are told apart
    swept = {"prefix_length": "sample.prefix_len", "sampling": "sample.top_k", "paper_long": "train.steps"}
    if name in swept:  # the paper's figure: FD against the swept setting, per generator
        assert (tmp_path / "results" / name / "smoke" / f"fig_fd_local_vs_{swept[name]}.png").is_file()
