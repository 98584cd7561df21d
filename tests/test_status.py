"""`digit-bench status`: states read from the store and the sweep's job ledger, and live on a running sweep."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import FAST, FAST_SETS, MICRO, REPO, VQ_ONLY  # tests/ is on sys.path

from digit_bench import cli
from digit_bench.artifacts import Store
from digit_bench.config import load_sweep
from digit_bench.engine import dag, launch
from digit_bench.engine.dag import compute
from digit_bench.status import format_status, sweep_status


def _plan(*sets: str) -> dag.Plan:
    return dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + list(sets)))


def test_each_state_comes_from_the_store_and_the_job_ledger(tmp_path, capsys):
    plan, store = _plan(), Store(tmp_path)
    digit = next(rid for rid, dag in plan.dags.items() if "stage2" in dag)
    ldm = next(rid for rid, dag in plan.dags.items() if "diffusion" in dag)
    dag = plan.dags[digit]
    done, running, failed, queued, partial = (dag[r] for r in ("features", "gpt", "tokenizer_metrics", "samples",
                                                                "stage2"))
    store.lookup_or_compute(done.stage, done.id, done.cfg, {}, lambda out: {}, log=lambda msg: None)
    work = Path(f"{store.path(running.stage, running.id)}.work")
    work.mkdir(parents=True)
    (work / "log.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 5)))
    launch.record_job(store, running, None, "debug")
    for node in (failed, queued):
        store.path(node.stage, node.id).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{store.path(node.stage, node.id)}.job.json").write_text(json.dumps(
            {"cluster": "slurm", "job_id": f"42_{node.stage}", "stdout": f"/logs/42_{node.stage}.out",
             "stderr": f"/logs/42_{node.stage}.err", "submitted": time.time() - 10}))
    launch.record_failure(store, failed, "Traceback ...\nRuntimeError: boom")
    Path(f"{store.path(partial.stage, partial.id)}.work").mkdir(parents=True)
    with open(f"{store.path(running.stage, running.id)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what lookup_or_compute holds while it computes
        roles, table = sweep_status(plan, store)
        assert cli.main(["status", str(MICRO), "--profile", "smoke", "--root", str(tmp_path), *FAST]) == 0
    states = table[digit]
    assert states["features"] == {"state": "done"}
    assert states["gpt"]["state"] == "running" and states["gpt"]["progress"] == f"4/{running.cfg['train']['steps']}"
    assert states["gpt"]["job_id"].startswith("in-process pid")
    assert states["tokenizer_metrics"]["state"] == "failed" and states["tokenizer_metrics"]["job_id"] == \
        "42_tokenizer_metrics" and states["tokenizer_metrics"]["error"] == "RuntimeError: boom"
    assert states["samples"]["state"] == "queued" and states["samples"]["stdout"] == "/logs/42_sample.out"
    assert states["stage2"]["state"] == "partial" and states["metrics"]["state"] == "-"
    assert {"diffusion", "vae", "latents", "stage2", "tokenizer_metrics", "ceiling_metrics"} <= set(roles)
    assert "diffusion" in table[ldm] and "stage2" not in table[ldm]
    text = capsys.readouterr().err
    header = text.splitlines()[0].split()
    assert "tokenizer_metrics" in header and "ceiling_metrics" in header and "diffusion" in header  # full names
    assert f"running {states['gpt']['progress']}" in text
    assert "failed   job 42_tokenizer_metrics" in text and "log: /logs/42_tokenizer_metrics.out" in text
    assert "error: RuntimeError: boom" in text
    launch.record_job(store, failed, None, "debug")  # resubmitted: the old failure no longer counts
    assert sweep_status(plan, store)[1][digit]["tokenizer_metrics"]["state"] == "queued"
    assert format_status(roles, table).splitlines()[-1].endswith("done 1, failed 1, partial 1, queued 1, running 1")


def vq_root(root: Path) -> dag.Plan:
    """The VQGAN-AR micro sweep's first two waves computed in `root`, then its VQGAN weights overwritten by zeros of
    the same size (a deleted file is caught as a corrupt artifact before anything runs), so the stages that load the
    VQGAN fail in their jobs while the GPT trains."""
    plan = _plan("generator=vqgan_ar")
    for n in plan.waves[0] + plan.waves[1]:
        compute(Store(root), n, log=lambda line: None)
    vqgan = next(n for w in plan.waves for n in w if n.stage == "vqgan")
    weights = root / "vqgan" / vqgan.id / "vqgan.pt"
    weights.write_bytes(bytes(weights.stat().st_size))
    return plan


def watch_a_sweep(root: Path, results: Path, cluster: str, *extra: str) -> tuple[list[dict], dict, str]:
    """Run the VQGAN-AR micro sweep on `cluster` with a long GPT training; poll `status` until the training shows
    running with a job id and progress, then wait for the end. Returns (running states seen, final table, stderr)."""
    sets = ["train.steps=400", "train.checkpoint_every=100", "launcher.max_retries=0"]
    argv = [sys.executable, "-m", "digit_bench.sweep", str(MICRO), "--profile", "smoke", "--root", str(root),
            "--results", str(results), *FAST, *VQ_ONLY, *[a for kv in sets for a in ("--set", kv)], *extra,
            "--cluster", cluster]
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + ["generator=vqgan_ar"] + sets))
    store, seen = Store(root), []
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        table = sweep_status(plan, store)[1]
        seen += [s for run in table.values() for s in run.values() if s["state"] == "running" and "progress" in s]
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-3000:]  # some runs failed on a user error (unreadable weights)
    return seen, sweep_status(plan, store)[1], err


def check_live_status(seen: list[dict], table: dict, err: str) -> None:
    assert seen, "status never showed the GPT training as running"
    assert all(s["job_id"] and Path(s["stdout"]).parent.is_dir() for s in seen)
    assert {s["progress"].split("/")[1] for s in seen} == {"400"}  # step/total from the job's live log.jsonl
    failed = [s for run in table.values() for s in run.values() if s["state"] == "failed"]
    assert failed and all(s["job_id"] and Path(s["stdout"]).is_file() for s in failed)
    assert "overall" in err and "cluster job logs of this wave:" in err


@pytest.mark.slow
def test_status_on_a_running_local_sweep_shows_running_and_failed_jobs(tmp_path):
    root = tmp_path / "root"
    vq_root(root)
    check_live_status(*watch_a_sweep(root, tmp_path / "results", "local"))


def test_a_corrupt_artifact_is_shown_as_corrupt_with_the_repair_command(tmp_path):
    plan, store = _plan(), Store(tmp_path)
    node = next(iter(plan.dags.values()))["features"]
    def write(out):
        (out / "x.npy").write_bytes(b"12345")
        return {}

    art = store.lookup_or_compute(node.stage, node.id, node.cfg, {}, write, log=lambda msg: None)
    (art.path / "x.npy").write_bytes(b"1")  # truncated after publishing
    state = sweep_status(plan, store)[1][next(iter(plan.dags))]["features"]
    assert state["state"] == "corrupt" and "verify --repair" in state["error"]
