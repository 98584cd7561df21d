"""Run a sweep: `python -m digit_bench.sweep ablations/backbones.yaml [--profile P] [--cluster C] [--dry-run]`.

YAML -> runs -> each run's stage DAG -> unique artifacts -> waves (all feature dumps, then centroids, tokens,
trainings, samples, metrics; a wave is every node at one depth of the merged DAG) -> submitit jobs: `debug`
(in-process), `local` (subprocesses) or `slurm` (job arrays via `map_array`, resources from the `launcher:` block).
Each job computes one artifact through the store's lookup-or-compute, so a rerun skips everything DONE and a job
requeued after preemption resumes from its work directory; a training job of `launcher.tasks_per_node` > 1 tasks
trains data-parallel, rank 0 publishing (compute_distributed). Failed jobs are retried `launcher.max_retries` times (a
UserError is not retried) and then listed with the tail of their log; their descendants are skipped, and the command
exits 1 (2 when a stage failed on a user error, with its message on one line). At the end one flat row per run is written to `<root>/sweeps/<sweep>/<profile>/` and `report` turns them
into results/<sweep>/<profile>/. Sweeps sharing a root compute each artifact once (the store's file locks).
Launcher fields follow the hydra submitit plugin's resource schema (no hydra).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from digit_bench.artifacts import Artifact, Store, default_root, runtime_info
from digit_bench.config import SLUG, LauncherConfig, Sweep, load_sweep, to_dict
from digit_bench.errors import UserError, guarded
from digit_bench.engine.dag import (Node, ancestors, compute_spec, depth, fixed_threads, published_speed, run_dag,
                                    stage_cfg, stage_inputs)
from digit_bench.generators.common import generator, instrument_seed, stage_seeds

log = logging.getLogger("digit_bench")


@dataclass
class Plan:
    sweep: Sweep
    dags: dict[str, dict[str, Node]]  # run_id -> role -> node
    waves: list[list[Node]]  # unique nodes, parents in earlier waves
    failed: dict[tuple, str] = field(default_factory=dict)  # node key -> error tail


def make_plan(sweep: Sweep) -> Plan:
    dags = {run.run_id: run_dag(run.cfg) for run in sweep.runs}
    sinks = [n for dag in dags.values() for role, n in dag.items() if role.endswith("metrics") or role == "probe"]
    nodes = ancestors(sinks)
    memo: dict = {}
    waves: list[list[Node]] = [[] for _ in range(1 + max((depth(n, memo) for n in nodes), default=0))]
    for n in nodes:
        waves[depth(n, memo)].append(n)
    return Plan(sweep, dags, [w for w in waves if w])


def describe(plan: Plan, store: Store) -> str:
    """The plan as text: runs with their artifact ids, then unique artifacts per stage and which exist."""
    lines = [f"sweep {plan.sweep.name} profile {plan.sweep.profile}: {len(plan.sweep.runs)} runs, "
             f"{sum(len(w) for w in plan.waves)} unique artifacts in {len(plan.waves)} waves (root {store.root})"]
    for run in plan.sweep.runs:
        lines.append(f"run {run.run_id}  " + " ".join(f"{k}={v}" for k, v in run.point.items()))
        for role, n in plan.dags[run.run_id].items():
            lines.append(f"    {role:<18} {n.stage}/{n.id}")
    for i, wave in enumerate(plan.waves):
        by_stage: dict[str, list[Node]] = {}
        for n in wave:
            by_stage.setdefault(n.stage, []).append(n)
        parts = [f"{s} {sum(store.lookup(s, n.id) is not None for n in ns)}/{len(ns)} done" for s, ns in by_stage.items()]
        lines.append(f"wave {i}: " + ", ".join(parts))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- executors
class StageJob:
    """A submitit job computing one artifact; requeued on preemption, it resumes from the artifact's work dir.

    Returns {"path": the published directory}, or {"user_error": message} for a mistake that fails the same way on
    every try (the sweep reports it without retrying); any other exception fails the job, and the sweep retries it.
    """

    def __init__(self, root: str):
        self.root = root

    def __call__(self, spec: dict) -> dict:
        _setup_logging()
        rank, world = distributed_setup()
        store = Store(self.root)
        try:
            art = compute_spec(store, spec, log=log.info) if world == 1 else compute_distributed(store, spec, rank)
            return {"path": str(art.path)}
        except UserError as e:
            log.error("%s/%s: %s", spec["stage"], spec["id"], e)
            return {"user_error": f"{type(e).__name__}: {e}"}

    def checkpoint(self, spec: dict):
        """submitit calls this on preemption/time-out: resubmit the same job (training resumes from ckpt.pt)."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.root), spec)


def job_threads(cluster: str, launcher: LauncherConfig) -> int:
    """OpenMP threads of one job: its SLURM CPUs, or this machine's share when `local_workers` jobs run at once.

    Without the cap every job starts one thread per core, and a few jobs at once on a small machine spend their
    time in OpenMP barriers (a conv layer ran 10x slower with two 2-thread jobs on 2 cores).
    """
    return launcher.cpus_per_task if cluster == "slurm" else max(1, (os.cpu_count() or 1) // launcher.local_workers)


def distributed_setup() -> tuple[int, int]:
    """Join the process group when submitit started several tasks for this job (DDP training); (rank, world size).

    Every task sees all the job's GPUs and takes the one of its local rank: that is the device loaders.device()
    (cuda:LOCAL_RANK) and training.device_for (the current device) pick. submitit's default of narrowing
    CUDA_VISIBLE_DEVICES to the local rank would leave no cuda:LOCAL_RANK on ranks > 0.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_JOB_ID" not in os.environ:
        return 0, 1
    import submitit
    import torch

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=env.rank, world_size=env.world_size)
    return env.rank, env.world_size


def _share(obj: str | None) -> str | None:
    """Rank 0's `obj` on every rank (a collective: every rank calls it once, at the same point)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def compute_distributed(store: Store, spec: dict, rank: int) -> Artifact:
    """compute_spec for one task of a multi-task (DDP) job: every rank runs the stage, rank 0 alone publishes.

    Only rank 0 goes through the store's lock and work directory: a rank > 0 there would block on the lock while
    rank 0 waits for it in an all-reduce, and two ranks would write the same files. First thing inside the store's
    compute callback, before fit's first collective, rank 0 tells the others the work directory it computes into,
    or None when lookup_or_compute returned without computing (already published, maybe by another job while this
    one waited for the lock). A rank > 0 then runs the stage into a private scratch directory beside the work
    directory, wiped first and deleted after, whose ckpt.pt links to rank 0's: a requeued job resumes from the
    same checkpoint on every rank, and fit writes checkpoints and logs only on rank 0. A closing barrier keeps rank
    0 from publishing (renaming) the work directory while another rank may still read through that link. The job's
    outcome is rank 0's (see _run_wave).
    """
    import torch.distributed as dist

    module, parents = stage_inputs(store, spec)  # on every rank, before any collective
    if rank == 0:
        announced = []

        def compute_work(work: Path) -> dict:
            announced.append(work)
            _share(str(work))
            with fixed_threads(spec["cfg"].get("threads", 1)):
                extras = {**module.compute(stage_cfg(spec), parents, work), "runtime": runtime_info(),
                          **published_speed(spec)}
            dist.barrier()
            return extras

        try:
            return store.lookup_or_compute(spec["stage"], spec["id"], spec["cfg"], parents, compute_work,
                                           resumable=module.RESUMABLE, log=log.info)
        finally:
            if not announced:  # published already, or failed before computing: the other ranks stop waiting
                _share(None)
    work = _share(None)
    final = store.path(spec["stage"], spec["id"])
    if work is None:
        return Artifact(final)
    log.info("[%s] rank %d joins the computation of %s", spec["stage"], rank, work)
    scratch = final.parent / f"{spec['id']}.rank{rank}"
    shutil.rmtree(scratch, ignore_errors=True)  # left by a preempted run
    scratch.mkdir()
    (scratch / "ckpt.pt").symlink_to(Path(work) / "ckpt.pt")
    try:
        with fixed_threads(spec["cfg"].get("threads", 1)):
            module.compute(stage_cfg(spec), parents, scratch)
    finally:
        shutil.rmtree(scratch)
    dist.barrier()
    return Artifact(final)


def executor_for(cluster: str, launcher: LauncherConfig, folder: Path, training: bool):
    """A submitit executor for `local` or `slurm` with the launcher block's resources.

    On SLURM a training job gets `nodes` nodes of `tasks_per_node` tasks (DDP ranks) and `gpus_per_node` GPUs, one per
    task when the two are equal (config.check_names); every other job is one task on at most one GPU. Multi-node
    ranks meet through submitit's environment (the first node of the job list is the master; distributed_setup). GPUs are asked per node, not
    per task: `--gpus-per-task` makes srun bind each task to its own GPU, renumbered cuda:0, and the stages pick
    cuda:LOCAL_RANK (see distributed_setup).
    """
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=launcher.max_num_timeout,
                               local_max_num_timeout=launcher.max_num_timeout)
    setup = [f"export OMP_NUM_THREADS={job_threads(cluster, launcher)}"]  # torch, faiss and BLAS read it at start
    params = dict(timeout_min=launcher.timeout_min, local_setup=setup, slurm_setup=setup)
    if cluster == "slurm":
        extra = {k: v for k, v in (("account", launcher.account), ("qos", launcher.qos)) if v}
        gpus = launcher.gpus_per_node if training else min(1, launcher.gpus_per_node)
        params.update(slurm_partition=launcher.partition, gpus_per_node=gpus or None,
                      tasks_per_node=launcher.tasks_per_node if training else 1, nodes=launcher.nodes if training else 1,
                      cpus_per_task=launcher.cpus_per_task,
                      mem_gb=launcher.mem_gb, slurm_array_parallelism=launcher.array_parallelism,
                      slurm_additional_parameters=extra)
    ex.update_parameters(**params)  # None means unset
    return ex


USER_ERROR = "UserError (not retried): "


def execute(plan: Plan, store: Store, cluster: str, launcher: LauncherConfig) -> None:
    """Compute every node wave by wave; failures are recorded in plan.failed and block only their descendants.

    A failed node is retried `launcher.max_retries` times, except for user errors (they fail the same way again).
    """
    for i, wave in enumerate(plan.waves):
        todo = []
        for n in wave:
            if any(p.key in plan.failed for p in n.parents.values()):
                plan.failed[n.key] = "skipped: a parent artifact failed"
            elif store.lookup(n.stage, n.id) is None:
                todo.append(n)
        if not todo:
            continue
        total = sum(len(w) for w in plan.waves)
        done = sum(store.lookup(n.stage, n.id) is not None for w in plan.waves for n in w)
        log.info("wave %d/%d: %d to compute (%s); overall %d/%d artifacts done (%.0f%%), %d failed",
                 i + 1, len(plan.waves), len(todo), ", ".join(sorted({n.stage for n in todo})), done, total,
                 100 * done / total, len(plan.failed))
        for attempt in range(1 + launcher.max_retries):
            errors = _run_wave(todo, store, cluster, launcher)
            plan.failed.update({k: e for k, e in errors.items() if e.startswith(USER_ERROR)})
            todo = [n for n in todo if n.key in errors and n.key not in plan.failed]
            if not todo:
                break
            log.warning("wave %d: %d failed (attempt %d/%d)", i + 1, len(todo), attempt + 1, 1 + launcher.max_retries)
        plan.failed.update({n.key: errors[n.key] for n in todo})


def _run_wave(nodes: list[Node], store: Store, cluster: str, launcher: LauncherConfig) -> dict[tuple, str]:
    """Compute `nodes` (one wave) on `cluster`; returns node key -> error text (a traceback or log tail)."""
    job_fn = StageJob(str(store.root))
    if cluster == "debug":
        outcomes = {}
        for n in nodes:
            record_job(store, n, None, cluster)
            try:
                outcomes[n.key] = job_fn(n.spec())
            except Exception as e:  # noqa: BLE001 - any stage failure is recorded, the sweep goes on
                outcomes[n.key] = {"error": "".join(traceback.format_exception(e))[-2000:]}
    else:
        (store.root / "submitit").mkdir(parents=True, exist_ok=True)
        # a fresh folder per wave and attempt: submitit trusts an existing <job id>_result.pkl, and ids get reused
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=store.root / "submitit"))
        log.info("cluster job logs of this wave: %s", folder)
        if cluster == "local":  # local_workers jobs at a time; the next starts as soon as one ends

            def run(n: Node) -> dict:
                ex = executor_for(cluster, launcher, folder, n.training)
                job = ex.submit(job_fn, n.spec())
                record_job(store, n, job, cluster)
                return _outcome(job)

            with ThreadPoolExecutor(launcher.local_workers) as pool:
                outcomes = dict(zip([n.key for n in nodes], pool.map(run, nodes)))
        else:  # one job array per kind (training jobs get all tasks)
            jobs = []
            for training in (False, True):
                group = [n for n in nodes if n.training == training]
                if group:
                    ex = executor_for(cluster, launcher, folder, training)
                    array = ex.map_array(job_fn, [n.spec() for n in group])
                    if training and launcher.tasks_per_node * launcher.nodes > 1:
                        # the outcome of a DDP job is task 0's: it publishes the artifact, the other tasks only join
                        # its collectives (and leave an error result when task 0 requeues the job on preemption)
                        array = [job.task(0) for job in array]
                    jobs += zip(group, array)
            for n, job in jobs:
                record_job(store, n, job, cluster)
            outcomes = {n.key: _outcome(job) for n, job in jobs}
    errors = {}
    for n in nodes:
        out = outcomes[n.key]
        if "path" not in out:
            errors[n.key] = USER_ERROR + out["user_error"] if "user_error" in out else out["error"]
            record_failure(store, n, errors[n.key])
            log.error("%s/%s failed: %s", n.stage, n.id, errors[n.key].strip().splitlines()[-1])
    return errors


def record_job(store: Store, node: Node, job, cluster: str) -> None:
    """`<root>/<stage>/<id>.job.json`: the job computing an artifact and its log files (read by `digit-bench status`).
    `job` is a submitit job, or None for the in-process `debug` cluster."""
    paths = job.paths if job is not None else None
    _ledger(store, node, "job", {"cluster": cluster, "job_id": str(job.job_id) if job else f"in-process pid {os.getpid()}",
                                 "stdout": str(paths.stdout) if paths else None,
                                 "stderr": str(paths.stderr) if paths else None, "submitted": time.time()})


def record_failure(store: Store, node: Node, error: str) -> None:
    """`<root>/<stage>/<id>.failed.json`: the last failure of an artifact's job (stale once a newer job.json exists)."""
    _ledger(store, node, "failed", {"error": error[-2000:], "failed": time.time()})


def _ledger(store: Store, node: Node, kind: str, record: dict) -> None:
    path = store.path(node.stage, node.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.{kind}.json").write_text(json.dumps(record))


def _outcome(job) -> dict:
    """What a submitit job's StageJob returned, or {"error": its exception and the tail of its log}."""
    try:
        return job.result()
    except Exception as e:  # noqa: BLE001 - submitit raises FailedJobError/UncompletedJobError and others
        return {"error": f"{type(e).__name__} (job {job.job_id}): {str(e)[-500:]}\n{(job.stderr() or '')[-1500:]}"}


# ------------------------------------------------------------------------------------------------------ rows
def rows_dir(store: Store, sweep: str, profile: str) -> Path:
    """`<root>/sweeps/<sweep>/<profile>`; the names are plain slugs (config.check_values) and the path stays in root."""
    for what, name in (("sweep name", sweep), ("profile", profile)):
        if not re.fullmatch(SLUG, name) or ".." in name:
            raise UserError(f"{what} {name!r} is not a plain name (letters, digits, _.-); rename it")
    return store.inside(store.root / "sweeps" / sweep / profile)


def _read_metrics(store: Store, node: Node | None) -> dict:
    if node is None:
        return {}
    art = store.lookup(node.stage, node.id)
    return json.loads((art / "metrics.json").read_text()) if art and (art / "metrics.json").is_file() else {}


def cost_columns(store: Store, dag: dict[str, Node]) -> dict:
    """Wall seconds, device, peak memory, params and FLOPs of every artifact the run used, per stage and total."""
    out: dict = {}
    total = 0.0
    for n in ancestors(list(dag.values())):
        art = store.lookup(n.stage, n.id)
        if art is None:
            continue
        m = art.manifest
        wall = m.get("wall_s", 0.0)
        total += wall
        out[f"cost.{n.stage}.wall_s"] = round(out.get(f"cost.{n.stage}.wall_s", 0.0) + wall, 2)
        for k in ("device", "peak_mem_mb", "params", "flops"):
            if k in m:
                out[f"cost.{n.stage}.{k}"] = m[k]
    out["cost.total.wall_s"] = round(total, 2)
    return out


def collect_rows(plan: Plan, store: Store) -> tuple[list[dict], list[dict]]:
    """One flat row per run (plus ceiling rows), and the failures (a run, or a ceiling that could not be computed)."""
    rows, failed, seen_ceilings = [], [], set()
    for run in plan.sweep.runs:
        dag = plan.dags[run.run_id]
        # what the seed re-keyed: seed_scope and each stochastic stage's seed (a JSON text column)
        scope = {"seed_scope": run.cfg.seed_scope, "stage_seeds": json.dumps(stage_seeds(run.cfg), sort_keys=True),
                 "threads": run.cfg.threads}
        base = {"run_id": run.run_id, "sweep": plan.sweep.name, "profile": plan.sweep.profile, "seed": run.cfg.seed,
                "generator": run.cfg.generator, **{k: v for k, v in run.point.items()}, **scope}
        for role in ("ceiling_metrics", "real_metrics"):
            node = dag.get(role)
            if node is None or node.id in seen_ceilings:
                continue
            seen_ceilings.add(node.id)
            m = _read_metrics(store, node)
            # under seed_scope full every seed has its own ceilings (its own decoders and judge); a ceiling row names
            # the seeds of the stages it depends on: the judge (real images), or the tokenizer and decoders too
            seeds = stage_seeds(run.cfg)
            own = {"judge"} if role == "real_metrics" else set(seeds) - set(generator(run.cfg).model_seeds)
            ceiling = {"run_id": node.id, "sweep": plan.sweep.name, "profile": plan.sweep.profile,
                       "seed": instrument_seed(run.cfg), **scope,
                       "stage_seeds": json.dumps({k: v for k, v in seeds.items() if k in own}, sort_keys=True)}
            if m:
                rows.append({**ceiling, "generator": m.get("label", role), "row_kind": "ceiling", **m})
            else:
                failed.append(_failure(plan, node, {**ceiling, "generator": role}))
        metrics = _read_metrics(store, dag["metrics"])
        if not metrics:
            failed.append(_failure(plan, dag["metrics"], base))
            continue
        row = {**base, "row_kind": "run", **metrics}
        for role in ("tokenizer_metrics", "probe"):
            row.update(_read_metrics(store, dag.get(role)))
        row.update(cost_columns(store, {r: n for r, n in dag.items() if not r.startswith(("ceiling", "real"))}))
        # the generator's size as the paper counts it: stage 1 only (the GPT, or the LDM's denoiser)
        model = store.lookup(*dag[generator(run.cfg).model_role].key)
        row["params"] = model.manifest.get("params") if model else None
        row["config"] = json.dumps(to_dict(run.cfg), sort_keys=True)
        row.update({f"artifacts.{role}": n.id for role, n in dag.items()})
        rows.append(row)
    return rows, failed


def _failure(plan: Plan, sink: Node, base: dict) -> dict:
    """The failure record of a row whose sink is missing: the first failed node above it and its error tail."""
    bad = [(n, plan.failed[n.key]) for n in ancestors([sink]) if n.key in plan.failed]
    n, err = bad[0] if bad else (sink, "not computed")
    return {**base, "stage": n.stage, "artifact": n.id, "error": err[-800:]}


def write_rows(store: Store, plan: Plan, rows: list[dict], failed: list[dict]) -> Path:
    out = rows_dir(store, plan.sweep.name, plan.sweep.profile)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    for row in rows + failed:  # a failed run's file carries an "error" key
        (out / f"{row['run_id']}.json").write_text(json.dumps(row, indent=1, default=str))
    return out


# ------------------------------------------------------------------------------------------------------ main
def _setup_logging(debug: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("yaml", help="sweep file, e.g. ablations/backbones.yaml")
    p.add_argument("--profile", default=None, help="smoke | tiny (default) | paper | paper_long")
    p.add_argument("--root", default=None, help="artifact root (default $DIGIT_BENCH_ROOT or ./runs)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")


def run_sweep(args: argparse.Namespace) -> dict:
    sweep = load_sweep(args.yaml, args.profile, args.sets)
    store = Store(args.root or default_root())
    plan = make_plan(sweep)
    if args.dry_run:
        print(describe(plan, store), file=sys.stderr)
        return {"sweep": sweep.name, "profile": sweep.profile, "runs": len(sweep.runs),
                "artifacts": sum(len(w) for w in plan.waves), "run_ids": [r.run_id for r in sweep.runs]}
    from digit_bench.plan import check_fits
    from digit_bench.preflight import check_files

    check_files(sweep)  # every weight file and data folder, before any job starts
    check_fits(sweep)  # a job that cannot fit its launcher block is refused before anything is submitted
    launcher = sweep.runs[0].cfg.launcher
    cluster = args.cluster or launcher.cluster
    store.ensure_writable()
    t0 = time.time()
    execute(plan, store, cluster, launcher)
    rows, failed = collect_rows(plan, store)
    out_dir = Path(args.results) / sweep.name / sweep.profile
    rdir = rows_dir(store, sweep.name, sweep.profile)
    rdir.mkdir(parents=True, exist_ok=True)
    with open(rdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # sweeps of one name sharing a root write their rows and report in turn
        write_rows(store, plan, rows, failed)
        if rows:
            from digit_bench.report import report_from_dir

            report_from_dir(rdir, out_dir, sweep.name, sweep.profile, store=store)
    for f in failed:
        log.error("FAILED %s at %s/%s:\n%s", f["run_id"], f["stage"], f["artifact"], f["error"])
    if rows:
        log.info("results: %s/table.md and %s/index.html", out_dir, out_dir)
    else:
        log.error("no run finished: no report written")
    user_errors = [(key, e) for key, e in plan.failed.items() if e.startswith(USER_ERROR)]
    if user_errors:  # the same mistake fails every try: exit 2 with its message, as validate would
        (stage, aid), err = user_errors[0]
        msg = re.sub(r"^\w+: ", "", err[len(USER_ERROR):].strip().splitlines()[0])
        more = f" ({len(user_errors) - 1} more stage(s) failed the same way; see the log)" if len(user_errors) > 1 else ""
        raise UserError(f"{stage}/{aid}: {msg}{more}")
    n_ok = sum(r["row_kind"] == "run" for r in rows)
    return {"sweep": sweep.name, "profile": sweep.profile, "runs": len(sweep.runs), "ok": n_ok,
            "failed": len(failed), "wall_s": round(time.time() - t0, 1), "table": str(out_dir / "table.md"),
            "index": str(out_dir / "index.html")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m digit_bench.sweep", description=__doc__.split("\n")[0])
    add_sweep_args(p)
    p.add_argument("--cluster", choices=("debug", "local", "slurm"), default=None, help="default: launcher.cluster")
    p.add_argument("--results", default="results", help="where report writes <sweep>/<profile>/")
    p.add_argument("--dry-run", action="store_true", help="print the plan and artifact ids; compute nothing")
    p.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every run finished, 1 when some failed (listed in the report's failed.md), 2 on a user error (in
    the sweep file, the root, or a stage)."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    summary: dict = {}

    def sweep() -> dict:
        summary.update(run_sweep(args))
        return summary

    code = guarded(sweep, args.debug)
    return 1 if code == 0 and summary.get("failed") else code


if __name__ == "__main__":
    raise SystemExit(main())
