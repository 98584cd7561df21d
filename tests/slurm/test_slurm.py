"""The sweep on a real SLURM cluster: the VQGAN-AR micro sweep through job arrays, a preempted training job that
is requeued, resumes from its checkpoint and ends with the weights of an uninterrupted run, and two-task (DDP)
training jobs, uninterrupted or preempted, that end with the weights of a one-process run.

.ci/run starts a single-node cluster (.ci/slurm-up.sh) and exports DIGIT_BENCH_SLURM=1; there a missing cluster
fails these tests, elsewhere it skips them. Each test uses a fresh submitit folder: SLURM job ids restart at 1 on
a new cluster, and submitit would trust an old `<id>_result.pkl`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_sweep import FAST, FAST_SETS, MICRO, REPO, VQ_ONLY, computed, plan_ids, published  # tests/ is on sys.path

from digit_bench.artifacts import Store
from digit_bench.config import load_sweep
from digit_bench.engine import dag, launch
from digit_bench.engine.dag import compute


def cluster_problem() -> str | None:
    """Why there is no usable SLURM cluster here, or None."""
    if shutil.which("sinfo") is None:
        return "no SLURM cluster: `sinfo` is not installed (CI starts one with .ci/slurm-up.sh)"
    proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f"no SLURM cluster: `sinfo` failed: {proc.stderr.strip()[:300]}"
    return None


PROBLEM = cluster_problem()
REQUIRED = os.environ.get("DIGIT_BENCH_SLURM") == "1"
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None and not REQUIRED, reason=str(PROBLEM))]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """Where the cluster is required (CI), its absence fails the tests instead of skipping them."""
    if PROBLEM is not None:
        pytest.fail(f"DIGIT_BENCH_SLURM=1 but {PROBLEM}")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def vq_base(tmp_path_factory) -> tuple[Path, dag.Plan]:
    """A root with the first two waves of the VQGAN-AR micro sweep (VQGAN, VQ tokens, classifier, reference
    statistics, real images), computed in-process once for the module."""
    root = tmp_path_factory.mktemp("vq_base")
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + ["generator=vqgan_ar"]))
    for n in plan.waves[0] + plan.waves[1]:
        compute(Store(root), n, log=lambda line: None)
    return root, plan


def test_slurm_cluster_completes_the_vqgan_ar_micro_sweep_with_job_arrays(vq_base, tmp_path):
    """The rest of the VQGAN-AR micro sweep (9 artifacts in 4 waves) through job arrays; the whole micro sweep passes
    the same way but takes minutes."""
    base, plan = vq_base
    root, results = tmp_path / "root", tmp_path / "results"
    shutil.copytree(base, root)
    seeded = published(root)
    resources = ["--set", "launcher.cpus_per_task=1", "--set", "launcher.mem_gb=2"]
    proc = subprocess.run([sys.executable, "-m", "digit_bench.sweep", str(MICRO), "--profile", "smoke",
                           "--root", str(root), "--results", str(results), *FAST, *VQ_ONLY, *resources,
                           "--cluster", "slurm"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["ok"] == summary["runs"] == 2 and summary["failed"] == 0
    assert {"results.csv", "table.md", "index.html"} <= {p.name for p in (results / "micro" / "smoke").iterdir()}
    after = published(root)
    assert set(after) == plan_ids("generator=vqgan_ar") and {i: after[i] for i in seeded} == seeded
    assert computed(proc.stderr) == []  # the rest was computed inside submitit jobs:
    for n in (n for wave in plan.waves[2:] for n in wave):
        manifest = json.loads((root / n.stage / n.id / "manifest.json").read_text())
        assert manifest["argv"][0].endswith("submitit/core/_submit.py")
    scripts = [p.read_text() for p in root.glob("submitit/*/*_submission.sh")]
    assert all("#SBATCH --cpus-per-task=1\n" in s for s in scripts) and any("#SBATCH --array=0-" in s for s in scripts)


def test_preempted_training_job_is_requeued_and_resumes_bit_identically(vq_base, tmp_path):
    base, _ = vq_base
    sets = ["generator=vqgan_ar", "train.steps=30", "train.checkpoint_every=5", "launcher.mem_gb=2"]
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + sets))
    run = plan.sweep.runs[0]
    node = plan.dags[run.run_id]["gpt"]
    slurm_root, ref_root = tmp_path / "slurm", tmp_path / "reference"
    for root in (slurm_root, ref_root):
        shutil.copytree(base, root)

    ex = launch.executor_for("slurm", run.cfg.launcher, tmp_path / "submitit", training=True)
    job = ex.submit(launch.StageJob(str(slurm_root)), node.spec())
    try:
        work = slurm_root / "train" / f"{node.id}.work"
        wait_for(lambda: (work / "ckpt.pt").exists() or job.done(), 300, "the job's first checkpoint")
        assert not job.done(), f"job {job.job_id} ended before it could be preempted: {job.stderr()}"
        job._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2 -> StageJob.checkpoint -> requeue
        # meanwhile the same node, uninterrupted, in-process in another root
        threads = torch.get_num_threads()
        torch.set_num_threads(launch.job_threads("slurm", run.cfg.launcher))  # as in the job: CPU results are bitwise
        try:
            reference = compute(Store(ref_root), node, log=lambda line: None)  # equal only at equal thread counts
        finally:
            torch.set_num_threads(threads)
        wait_for(job.done, 300, f"job {job.job_id} to be requeued and finish")
        assert job.result() == {"path": str(slurm_root / "train" / node.id)}
    finally:
        if not job.done():
            job.cancel()
    log = job.stdout() + job.stderr()
    assert "Requeued job" in log and "this job is preempted" in log
    manifest = json.loads((slurm_root / "train" / node.id / "manifest.json").read_text())
    assert manifest["steps"] == 30 and manifest["start_step"] > 0
    # checkpointed at the signal (SIGTERM, then USR2), not at the last multiple of checkpoint_every
    assert re.search(rf"signal [\d+]+ at update {manifest['start_step']}: checkpoint saved", log), log[-3000:]
    ours = torch.load(slurm_root / "train" / node.id / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(reference / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def without_key_bias(state: dict) -> dict:
    """GPT weights with the key part of each attention's qkv bias zeroed. Softmax over keys ignores a shift shared
    by all keys, so that bias has a zero gradient up to rounding, and AdamW turns the rounding noise, which depends
    on summation order, into steps of up to lr: it differs between runs that compute the same function."""
    out = {k: v.clone() for k, v in state.items()}
    for k, v in out.items():
        if k.endswith("attn.qkv.bias"):
            v.view(3, -1)[1] = 0  # (3, D): query, key, value biases
    return out


def ddp_setup(vq_base, tmp_path: Path, *sets: str):
    """The VQGAN-AR run's GPT node for a 2-task gloo job (dropout off: the ranks would draw different masks) and
    two copies of the base root: one for SLURM, one for the one-process reference."""
    sets = ("generator=vqgan_ar", "gpt.dropout=0", "launcher.tasks_per_node=2", "launcher.cpus_per_task=1",
            "launcher.mem_gb=2", *sets)
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + list(sets)))
    run = plan.sweep.runs[0]
    roots = tmp_path / "slurm", tmp_path / "reference"
    for root in roots:
        shutil.copytree(vq_base[0], root)
    return run, plan.dags[run.run_id]["gpt"], *roots


def one_process(root: Path, node):
    """The node computed in-process with one thread, as each task of the job runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compute(Store(root), node, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)


def check_ddp_result(slurm_root: Path, node, reference, steps: int, logs: list[str]) -> dict:
    """The artifact is published with `steps` updates, only rank 0 computed through the store while rank 1 joined
    it, no work or scratch directory is left, and the weights are those of the one-process reference up to float
    summation order (each rank got half of every global batch). Returns the manifest."""
    assert "] compute " in logs[0] and "] compute " not in logs[1]
    assert "rank 1 joins the computation of" in logs[1]
    manifest = json.loads((slurm_root / "train" / node.id / "manifest.json").read_text())
    assert manifest["steps"] == steps
    left = sorted(p.name for p in (slurm_root / "train").iterdir() if not p.name.endswith(".job.json"))  # job ledger
    assert left == sorted([node.id, f"{node.id}.lock"])  # no .work, no .rank<k> scratch directory
    ours, theirs = (without_key_bias(torch.load(path / "ckpt.pt", map_location="cpu", weights_only=True)["model"])
                    for path in (slurm_root / "train" / node.id, reference.path))
    assert ours.keys() == theirs.keys()
    far = {k: (ours[k] - theirs[k]).abs().max().item() for k in ours
           if not torch.allclose(ours[k], theirs[k], atol=1e-5)}
    assert not far, f"max |difference| of the weights that differ: {far}"
    return manifest


def test_sweep_runs_a_two_task_ddp_training_job_matching_one_process(vq_base, tmp_path):
    """Through the sweep's wave runner (a job array of 2-task jobs, outcome read from task 0)."""
    run, node, slurm_root, ref_root = ddp_setup(vq_base, tmp_path)
    reference = one_process(ref_root, node)
    assert launch._run_wave([node], Store(slurm_root), "slurm", run.cfg.launcher) == {}
    scripts = [p.read_text() for p in slurm_root.glob("submitit/*/*_submission.sh")]
    assert len(scripts) == 1 and "#SBATCH --ntasks-per-node=2\n" in scripts[0]
    logs = ["".join(p.read_text() for p in slurm_root.glob(f"submitit/*/*_{task}_log.err")) for task in (0, 1)]
    assert check_ddp_result(slurm_root, node, reference, run.cfg.train.steps, logs)["start_step"] == 0


def test_preempted_two_task_ddp_training_job_resumes_on_both_ranks(vq_base, tmp_path):
    """Requeued after preemption, both ranks resume from rank 0's checkpoint (rank 1 through its scratch link)."""
    run, node, slurm_root, ref_root = ddp_setup(vq_base, tmp_path, "train.steps=30", "train.checkpoint_every=5")
    ex = launch.executor_for("slurm", run.cfg.launcher, tmp_path / "submitit", training=True)
    job = ex.submit(launch.StageJob(str(slurm_root)), node.spec())
    try:
        work = slurm_root / "train" / f"{node.id}.work"
        wait_for(lambda: (work / "ckpt.pt").exists() or job.done(), 300, "the job's first checkpoint")
        assert not job.done(), f"job {job.job_id} ended before it could be preempted: {job.stderr()}"
        job._interrupt()  # SIGTERM, then USR2 to both tasks: task 0 checkpoints and requeues the job
        reference = one_process(ref_root, node)
        wait_for(job.done, 300, f"job {job.job_id} to be requeued and finish")
        assert job.task(0).result() == {"path": str(slurm_root / "train" / node.id)}
    finally:
        if not job.done():
            job.cancel()
    logs = [job.task(t).stdout() + job.task(t).stderr() for t in (0, 1)]
    assert "Requeued job" in logs[0] and "this job is preempted" in logs[0]
    manifest = check_ddp_result(slurm_root, node, reference, 30, logs)
    assert manifest["start_step"] > 0  # rank 0 checkpointed at the signal: at most the running update is redone
    assert re.search(rf"signal [\d+]+ at update {manifest['start_step']}: checkpoint saved", logs[0]), logs[0][-3000:]


def test_status_on_a_running_slurm_sweep_shows_running_and_failed_jobs_with_ids_and_logs(tmp_path):
    """`digit-bench status` polled while the sweep's jobs run on SLURM: the GPT training shows running with its SLURM
    job id, step progress and log path; the stages that load the (deleted) VQGAN weights end failed, with theirs."""
    from test_status import check_live_status, vq_root, watch_a_sweep

    root = tmp_path / "root"
    vq_root(root)
    seen, table, err = watch_a_sweep(root, tmp_path / "results", "slurm", "--set", "launcher.cpus_per_task=1",
                                     "--set", "launcher.mem_gb=2")
    check_live_status(seen, table, err)
    assert all(s["job_id"].split("_")[0].isdigit() for s in seen)  # SLURM job ids (array jobs: <id>_<task>)
