"""Launching: submitit executors (debug in-process, local subprocesses, SLURM job arrays), waves with retries, DDP
rendezvous of a multi-task training job (a stage's `KIND = "train"` gives it the launcher's DDP shape), and the job
ledger. Each job computes one artifact through the store's lookup-or-compute, so a rerun skips everything DONE and a
job requeued after preemption resumes from its work directory. Launcher fields follow the hydra submitit plugin's
resource schema (no hydra).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from digit_bench.artifacts import Artifact, Store, runtime_info
from digit_bench.config import LauncherConfig
from digit_bench.engine.dag import Node, Plan, compute_spec, fixed_threads, published_speed, stage_cfg, stage_inputs
from digit_bench.errors import UserError

log = logging.getLogger("digit_bench")


def setup_logging(debug: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise


class StageJob:
    """A submitit job computing one artifact; requeued on preemption, it resumes from the artifact's work dir.

    Returns {"path": the published directory}, or {"user_error": message} for a mistake that fails the same way on
    every try (the sweep reports it without retrying); any other exception fails the job, and the sweep retries it.
    """

    def __init__(self, root: str):
        self.root = root

    def __call__(self, spec: dict) -> dict:
        setup_logging()
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
                extras = {**module.compute(stage_cfg(module, spec), parents, work), "runtime": runtime_info(),
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
            module.compute(stage_cfg(module, spec), parents, scratch)
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
