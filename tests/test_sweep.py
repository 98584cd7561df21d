"""The sweep driver on the micro sweep: executors, SIGKILL and rerun, two sweeps on one root, failed cells, status.

A module fixture runs the micro sweep (cut further by FAST) once with `--cluster local`, so every artifact is
computed by a submitit subprocess; the other tests reuse its root, or compare their results.csv with its own.
The SLURM executor is tested against a real cluster in tests/slurm/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from digit_bench import cli, sweep
from digit_bench.artifacts import Store
from digit_bench.config import LauncherConfig, load_sweep
from digit_bench.engine import dag, launch
from digit_bench.engine.dag import ancestors
from digit_bench.engine.rows import rows_dir
from digit_bench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "data" / "micro.yaml"
# The micro sweep with the fewest steps that still run every stage; training checkpoints every 3 of 12 updates.
FAST_SETS = ["data.num_train=200", "data.num_val=40", "ssl.train.steps=1", "ssl.train.batch_size=8",
             "vqgan.train.steps=3", "vqgan.train.batch_size=8", "stage2.train.steps=3", "stage2.train.batch_size=8",
             "train.steps=12", "train.checkpoint_every=3", "eval.local_train.steps=5", "eval.local_train.batch_size=32",
             "ldm.train.steps=2", "ldm.train.batch_size=8", "ldm.vae_train.steps=2", "ldm.vae_train.batch_size=8",
             "ldm.num_inference_steps=2", "probe.max_iter=50", "probe.num_train=100", "stability.num_images=8"]
FAST = [a for kv in FAST_SETS for a in ("--set", kv)]
VQ_ONLY = ["--set", "generator=vqgan_ar"]  # narrows the grid: the VQGAN-AR run (its training is resumable)
# In-process (debug) sweeps start with the threads of a local job; every stage then runs at its configured count.
THREADS = launch.job_threads("local", LauncherConfig())
DEBUG_ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
COMPUTE = re.compile(r"\[(\w+)\] compute (\S+)")
TIMING = re.compile(r"^cost\.|wall_s|_per_s$")


def sweep_cmd(root: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "digit_bench.sweep", str(MICRO), "--profile", "smoke", "--root", str(root),
            "--results", str(results), *FAST, *extra]


def metric_frame(results: Path) -> pd.DataFrame:
    """results.csv without cost and timing columns, one row per run id."""
    df = pd.read_csv(results / "micro" / "smoke" / "results.csv")
    return df[[c for c in df.columns if not TIMING.search(c)]].set_index("run_id").sort_index()


def computed(log: str) -> list[str]:
    """Artifact ids a sweep log says it computed (one entry per "compute" line)."""
    return [m.group(2) for m in COMPUTE.finditer(log)]


def published(root: Path) -> dict[str, tuple]:
    """id -> (manifest `created`, DONE mtime) of every published artifact."""
    return {p.parent.name: (json.loads((p.parent / "manifest.json").read_text())["created"], p.stat().st_mtime_ns)
            for p in root.glob("*/*/DONE")}


def plan_ids(*sets: str) -> set[str]:
    """Ids of every artifact the micro sweep (with FAST and `sets`) plans."""
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + list(sets)))
    return {n.id for wave in plan.waves for n in wave}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro sweep computed once with `--cluster local`: root, results dir, sweep log, metric frame."""
    base = tmp_path_factory.mktemp("micro")
    proc = subprocess.run(sweep_cmd(base / "root", base / "results", "--cluster", "local"),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(root=base / "root", results=base / "results", log=proc.stderr,
                           frame=metric_frame(base / "results"), summary=json.loads(proc.stdout))


# ------------------------------------------------------------------------------------------------ executors
def test_local_cluster_computes_the_micro_sweep_in_subprocesses(micro):
    out = micro.results / "micro" / "smoke"
    assert {"results.csv", "table.md", "index.html"} <= {p.name for p in out.iterdir()}
    assert micro.summary["ok"] == micro.summary["runs"] == 3 and micro.summary["failed"] == 0
    assert set(micro.frame["generator"]) >= {"digit", "vqgan_ar", "ldm"}
    assert micro.frame.loc[micro.frame["row_kind"] == "run", "fd_local"].notna().all()
    assert set(published(micro.root)) == plan_ids()
    assert computed(micro.log) == []  # nothing in the sweep process itself ...
    job_logs = "".join(p.read_text() for p in (micro.root / "submitit").glob("*/*_log.err"))
    assert Counter(computed(job_logs)) == Counter(plan_ids())  # ... every artifact once, in a submitit job
    for path in micro.root.glob("*/*/manifest.json"):
        manifest = json.loads(path.read_text())
        assert manifest["argv"][0].endswith("submitit/core/_submit.py")
        # every stage runs at the configured thread count (1), whatever the job's share of the cores
        assert manifest.get("device", "cpu x1") == "cpu x1" and manifest["runtime"]["torch_threads"] == 1
        assert all(lib["num_threads"] == 1 for lib in manifest["runtime"]["blas_openmp"])


def _untimed(path: Path) -> bytes:
    """The file's bytes; for JSON (lines) files, without the speed and duration entries (items_per_s, fit_seconds)."""
    if path.suffix not in (".json", ".jsonl"):
        return path.read_bytes()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.suffix == ".jsonl" \
        else [json.loads(path.read_text())]
    return json.dumps([{k: v for k, v in r.items() if not re.search(r"_per_s$|_seconds$|wall_s", k)}
                       if isinstance(r, dict) else r for r in records], sort_keys=True).encode()


def artifact_bytes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every data file of every published artifact (manifests aside: times, hosts)."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(_untimed(p)).hexdigest()
            for p in root.glob("*/*/*") if p.is_file() and p.parent.joinpath("DONE").is_file()
            and p.name not in ("manifest.json", "DONE") and p.parts[-3] not in ("submitit", "sweeps")}


@pytest.mark.slow
def test_debug_executor_at_two_threads_writes_the_bytes_of_local_jobs(micro, tmp_path):
    """The in-process executor in a 2-thread process gives the artifacts 1-thread local jobs gave, bit for bit."""
    proc = subprocess.run(sweep_cmd(tmp_path / "root", tmp_path / "results", "--cluster", "debug"), capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = artifact_bytes(tmp_path / "root"), artifact_bytes(micro.root)
    assert ours.keys() == theirs.keys() and len(ours) > 40
    assert [k for k in ours if ours[k] != theirs[k]] == []
    pd.testing.assert_frame_equal(metric_frame(tmp_path / "results"), micro.frame, check_exact=True)


def test_the_sweep_report_shows_grey_samples_and_the_protocol_card(micro):
    """The report of a real sweep: every run's and ceiling's sample grid copied beside the tables, grey like its
    Fashion-MNIST data (R=G=B), and the protocol the evaluate stage recorded on every table."""
    import numpy as np
    from PIL import Image

    out = micro.results / "micro" / "smoke"
    df = pd.read_csv(out / "results.csv")
    assert {p.stem for p in (out / "samples").glob("*.png")} == set(df["run_id"])
    for grid in (out / "samples").glob("*.png"):
        rgb = np.asarray(Image.open(grid).convert("RGB")).astype(int)  # (H, W, 3)
        assert (rgb.max(-1) - rgb.min(-1)).max() == 0, grid.name
    extractor = df["protocol_local"].dropna().iloc[0].split(" | ")[0]
    for name in ("table.md", "comparison.md", "index.html"):
        assert extractor in (out / name).read_text(), name
    assert (df["protocol"].str.contains(extractor, regex=False)).all()
    assert (micro.results / "index.html").is_file() and set(pd.read_csv(out / "curves.csv")["role"]) >= {"gpt", "vqgan"}


class FakeJob:
    """A submitit job: `result()` calls `finish` (the job running to its end), then returns or raises `outcome`."""

    def __init__(self, spec: dict, outcome, finish=lambda: None):
        self.spec, self.outcome, self.finish, self.job_id = spec, outcome, finish, f"job-{spec['id']}"
        self.paths = SimpleNamespace(stdout=f"logs/{self.job_id}.out", stderr=f"logs/{self.job_id}.err")

    def result(self) -> dict:
        self.finish()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def stderr(self) -> str:
        return f"log of {self.spec['id']}"


def mixed_wave() -> list:
    """A wave of the micro sweep with training and other stages."""
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS))
    return next(w for w in plan.waves if len(w) >= 4 and len({n.training for n in w}) == 2)


def test_local_runs_local_workers_jobs_at_a_time(tmp_path, monkeypatch):
    wave = mixed_wave()
    pair = threading.Barrier(2)  # the first two jobs end together: two run at once, or this breaks
    lock, submitted, running, peak = threading.Lock(), [], [0], [0]

    def executor_for(cluster, launcher, folder, training):
        def submit(fn, spec):
            assert isinstance(fn, launch.StageJob) and fn.root == str(tmp_path) and cluster == "local"
            with lock:
                submitted.append((spec["id"], training))
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                first = len(submitted) <= 2

            def finish():
                if first:
                    pair.wait(timeout=60)
                else:
                    time.sleep(0.1)  # a job takes a while
                with lock:
                    running[0] -= 1
            return FakeJob(spec, {"path": "done"}, finish)
        return SimpleNamespace(submit=submit)

    monkeypatch.setattr(launch, "executor_for", executor_for)
    assert launch._run_wave(wave, Store(tmp_path), "local", LauncherConfig(local_workers=2)) == {}
    assert sorted(submitted) == sorted((n.id, n.training) for n in wave) and peak[0] == 2


def test_slurm_submits_one_array_per_kind_and_reads_outcomes(tmp_path, monkeypatch):
    wave = mixed_wave()
    outcomes = {wave[0].id: {"user_error": "UserError: bad value; fix it"}, wave[1].id: RuntimeError("job died")}
    arrays = []

    def executor_for(cluster, launcher, folder, training):
        def map_array(fn, specs):
            arrays.append((training, sorted(s["id"] for s in specs)))
            return [FakeJob(s, outcomes.get(s["id"], {"path": "done"})) for s in specs]
        return SimpleNamespace(map_array=map_array)

    monkeypatch.setattr(launch, "executor_for", executor_for)
    errors = launch._run_wave(wave, Store(tmp_path), "slurm", LauncherConfig())
    assert sorted(arrays) == [(kind, sorted(n.id for n in wave if n.training == kind))
                              for kind in (False, True)]
    assert set(errors) == {wave[0].key, wave[1].key}
    assert errors[wave[0].key] == launch.USER_ERROR + "UserError: bad value; fix it"
    assert "RuntimeError (job job-" in errors[wave[1].key] and f"log of {wave[1].id}" in errors[wave[1].key]


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SLURM executor needs srun on PATH (.ci/run installs "
                    "SLURM; tests/slurm runs the real cluster)")
def test_slurm_executor_gets_the_launcher_block(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = LauncherConfig(partition="gpu", gpus_per_node=4, tasks_per_node=4, cpus_per_task=10, mem_gb=240,
                              timeout_min=4320, array_parallelism=16, account="proj", qos="high", max_num_timeout=5)
    train = launch.executor_for("slurm", launcher, tmp_path, training=True)
    assert train.cluster == "slurm" and train._executor.max_num_timeout == 5
    script = _make_sbatch_string(command="run", folder=tmp_path, map_count=40, **train._executor.parameters)
    for flag in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=10", "--mem=240GB",
                 "--time=4320", "--array=0-39%16", "--account=proj", "--qos=high"):
        assert f"#SBATCH {flag}\n" in script
    assert "\nexport OMP_NUM_THREADS=10\n" in script
    other = launch.executor_for("slurm", LauncherConfig(tasks_per_node=4), tmp_path, training=False)
    script = _make_sbatch_string(command="run", folder=tmp_path, **other._executor.parameters)
    assert "#SBATCH --ntasks-per-node=1\n" in script and "gpus" not in script and "--partition" not in script
    gpu_stage = launch.executor_for("slurm", launcher, tmp_path, training=False)  # e.g. feature extraction
    script = _make_sbatch_string(command="run", folder=tmp_path, **gpu_stage._executor.parameters)
    assert "#SBATCH --ntasks-per-node=1\n" in script and "#SBATCH --gpus-per-node=1\n" in script


# ------------------------------------------------------------------------------------------ kill and rerun
def run_until(cmd: list[str], stop) -> str:
    """Run a sweep, SIGKILL it at the first stderr line for which stop(line) is true; return its log so far."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=DEBUG_ENV)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if stop(line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines)


def nth(pattern: str, n: int):
    """True at the n-th line matching `pattern`."""
    seen = []

    def stop(line: str) -> bool:
        if re.search(pattern, line):
            seen.append(line)
        return len(seen) == n
    return stop


def checkpoint_written(root: Path):
    """True at a "[train] compute" line once the training's work dir has a ckpt.pt (a mid-training kill)."""
    def stop(line: str) -> bool:
        if "[train] compute" not in line:
            return False
        deadline = time.time() + 120
        while not list(root.glob("train/*.work/ckpt.pt")):
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        return True
    return stop


def vq_root(micro, root: Path) -> set[str]:
    """A root holding the reference's artifacts of the VQGAN-AR run but its GPT and everything made from the GPT
    (what an earlier sweep left); returns the ids of those five, the artifacts left to compute."""
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + ["generator=vqgan_ar"]))
    gpt = plan.dags[plan.sweep.runs[0].run_id]["gpt"]
    nodes = [n for wave in plan.waves for n in wave]
    todo = {n.id for n in nodes if gpt.key in {a.key for a in ancestors([n])}}
    for n in nodes:
        if n.id not in todo:
            shutil.copytree(micro.root / n.stage / n.id, root / n.stage / n.id)
    return todo


def assert_same_rows(frame: pd.DataFrame, reference: pd.DataFrame, n: int) -> None:
    """The n rows of `frame` whose run ids the reference has equal the reference's (empty columns aside)."""
    shared = frame.index.intersection(reference.index)
    assert len(shared) == n
    pd.testing.assert_frame_equal(frame.loc[shared].dropna(axis=1, how="all"),
                                  reference.loc[shared].dropna(axis=1, how="all"), check_exact=True, check_like=True)


def test_sigkill_at_three_points_then_rerun_recomputes_nothing_done(micro, tmp_path):
    root = tmp_path / "root"
    todo = vq_root(micro, root)
    cmd = sweep_cmd(root, tmp_path / "results", *VQ_ONLY, "--cluster", "debug")
    kills = [lambda: checkpoint_written(root), lambda: nth(r"\] done ", 2),
             lambda: nth(r"\] done ", len(todo - set(published(root))))]  # after the last artifact: in rows/report
    for make_stop in kills:
        before = published(root)
        log = run_until(cmd, make_stop())
        after = published(root)
        assert computed(log) and not set(computed(log)) & set(before)
        assert {i: after[i] for i in before} == before  # DONE artifacts untouched
    assert todo <= set(published(root))
    before = published(root)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=DEBUG_ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert computed(proc.stderr) == [] and published(root) == before
    assert not list(root.glob("*/*.work"))
    start = json.loads(next(root.glob("train/*/manifest.json")).read_text())["start_step"]
    assert start > 0 and start % 3 == 0  # the training killed after a checkpoint resumed from one
    assert_same_rows(metric_frame(tmp_path / "results"), micro.frame, 3)  # VQGAN-AR, its VQ ceiling, real images


def test_two_sweeps_sharing_a_root_compute_each_artifact_once(micro, tmp_path):
    root = tmp_path / "root"
    todo = vq_root(micro, root)
    logs, procs = [tmp_path / "a.log", tmp_path / "b.log"], []
    for log in logs:  # started together
        cmd = sweep_cmd(root, tmp_path / f"results_{log.stem}", *VQ_ONLY, "--cluster", "debug")
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL, cwd=REPO, env=DEBUG_ENV))
    codes = [p.wait(timeout=600) for p in procs]
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text[0][-2000:] + text[1][-2000:]
    counts = Counter(computed(text[0]) + computed(text[1]))
    assert set(counts) == todo and set(counts.values()) == {1}
    assert set(published(root)) == plan_ids("generator=vqgan_ar") and not list(root.glob("*/*.work"))
    for art in root.glob("*/*/DONE"):
        assert [p.name for p in art.parent.glob("manifest*")] == ["manifest.json"]
        assert json.loads((art.parent / "manifest.json").read_text())["id"] == art.parent.name
    a, b = metric_frame(tmp_path / "results_a"), metric_frame(tmp_path / "results_b")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert_same_rows(a, micro.frame, 3)


# ------------------------------------------------------------------------------------------- failed cells
@pytest.mark.parametrize("error, tries", [(RuntimeError("boom in sample"), 3),
                                          (UserError("bad sample settings; fix them"), 1)])
def test_failed_cell_is_retried_then_reported_and_its_descendants_skipped(micro, tmp_path, monkeypatch, error, tries):
    from digit_bench.stages import sample

    calls = []

    def failing(cfg, parents, out):
        calls.append(parents["gpt"].id)
        raise error

    monkeypatch.setattr(sample, "compute", failing)
    sets = ["sample.temperature=0.5", "launcher.max_retries=2"]  # new sample ids; the LDM run is unaffected
    argv = [str(MICRO), "--profile", "smoke", "--root", str(micro.root), "--results", str(tmp_path),
            "--cluster", "debug", *FAST, *[a for kv in sets for a in ("--set", kv)]]
    assert sweep.main(argv) == (2 if isinstance(error, UserError) else 1)  # a user error: exit 2, as validate
    plan = dag.make_plan(load_sweep(MICRO, "smoke", FAST_SETS + sets))
    store = Store(micro.root)
    failing_runs = [r.run_id for r in plan.sweep.runs if r.cfg.generator != "ldm"]
    assert sorted(Counter(calls).values()) == [tries, tries]  # both sample nodes, each 1 + retries (UserError: once)
    for rid in failing_runs:
        assert store.lookup("sample", plan.dags[rid]["samples"].id) is None
        for node in (plan.dags[rid]["images"], plan.dags[rid]["metrics"]):  # skipped: never started
            assert store.lookup(node.stage, node.id) is None
            assert not (micro.root / node.stage / f"{node.id}.work").exists()
    out = tmp_path / "micro" / "smoke"
    failed_md = (out / "failed.md").read_text()
    assert all(rid in failed_md for rid in failing_runs) and str(error).split(";")[0] in failed_md
    rows = [json.loads(p.read_text()) for p in rows_dir(store, "micro", "smoke").glob("*.json")]
    assert sorted(r["run_id"] for r in rows if "error" in r) == sorted(failing_runs)
    assert all(r["stage"] == "sample" for r in rows if "error" in r)
    assert list(pd.read_csv(out / "results.csv").query("row_kind == 'run'")["generator"]) == ["ldm"]


def test_status_shows_every_role_done_after_the_sweep(micro, capsys):
    assert cli.main(["status", str(MICRO), "--profile", "smoke", "--root", str(micro.root), *FAST]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert len(status) == 3 and {v["state"] for run in status.values() for v in run.values()} == {"done"}
    assert cli.main(["status", str(MICRO), "--profile", "smoke", "--root", str(micro.root), *FAST,
                     "--set", "sample.top_k=5"]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert {run["samples"]["state"] for run in status.values() if "samples" in run} == {"-"}


@pytest.mark.slow
def test_ten_sigkills_at_random_times_then_a_rerun_give_the_uninterrupted_metrics(tmp_path):
    """10 SIGKILLs at seeded random times across the VQGAN-AR micro sweep (each kill followed by a rerun, itself killed
    next), then a rerun to the end: the metric columns equal an uninterrupted sweep's, nothing corrupt is trusted,
    no work directory or temporary file is left, and the training log holds every update once (~4 min)."""
    import numpy as np

    straight = subprocess.run(sweep_cmd(tmp_path / "a", tmp_path / "results_a", *VQ_ONLY, "--cluster", "debug"),
                              capture_output=True, text=True, cwd=REPO, env=DEBUG_ENV, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    root, cmd = tmp_path / "b", sweep_cmd(tmp_path / "b", tmp_path / "results_b", *VQ_ONLY, "--cluster", "debug")
    rng = np.random.default_rng(0)
    kills = 0
    while kills < 10:
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=REPO, env=DEBUG_ENV)
        try:
            proc.wait(timeout=float(rng.uniform(2.0, 15.0)))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            kills += 1
            continue
        assert proc.returncode == 0
        shutil.rmtree(root)  # finished before the kill: start over so that every kill lands mid-sweep
    final = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=DEBUG_ENV, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    pd.testing.assert_frame_equal(metric_frame(tmp_path / "results_b"), metric_frame(tmp_path / "results_a"),
                                  check_exact=True)
    assert set(published(root)) == set(published(tmp_path / "a"))
    assert not list(root.glob("*/*.work")) and not list(root.glob("*/*/*.tmp-*"))
    assert cli.main(["verify", "--root", str(root)]) == 0
    for log in root.glob("train/*/log.jsonl"):
        assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 13))
