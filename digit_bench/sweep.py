"""Run a sweep: `python -m digit_bench.sweep ablations/backbones.yaml [--profile P] [--cluster C] [--dry-run]`.

YAML -> runs -> each run's stage DAG -> unique artifacts -> waves (all feature dumps, then centroids, tokens,
trainings, samples, metrics; a wave is every node at one depth of the merged DAG) -> submitit jobs: `debug`
(in-process), `local` (subprocesses) or `slurm` (job arrays via `map_array`, resources from the `launcher:` block).
Each job computes one artifact through the store's lookup-or-compute, so a rerun skips everything DONE and a job
requeued after preemption resumes from its work directory. Failed jobs are retried `launcher.max_retries` times and
then listed with the tail of their log; their descendants are skipped. At the end one flat row per run is written to
`<root>/sweeps/<sweep>/<profile>/` and `report` turns them into results/<sweep>/<profile>/.
Design from DESIGN.md §6 and the hydra submitit plugin's resource schema (no hydra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from digit_bench.artifacts import Store, default_root
from digit_bench.config import LauncherConfig, Sweep, load_sweep, to_dict
from digit_bench.errors import UserError
from digit_bench.pipeline import Node, ancestors, compute_spec, depth, run_dag

log = logging.getLogger("digit_bench")
TRAINING_STAGES = {"train", "stage2", "vqgan", "pretrain_ssl", "diffusion", "vae", "classifier"}


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
    """A submitit job computing one artifact; requeued on preemption, it resumes from the artifact's work dir."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, spec: dict) -> str:
        _setup_logging()
        distributed_setup()
        return str(compute_spec(Store(self.root), spec, log=log.info).path)

    def checkpoint(self, spec: dict):
        """submitit calls this on preemption/time-out: resubmit the same job (training resumes from ckpt.pt)."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.root), spec)


def distributed_setup() -> None:
    """Join the process group when submitit started several tasks for this job (DDP training)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_JOB_ID" not in os.environ:
        return
    import submitit
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=env.rank, world_size=env.world_size)


def executor_for(cluster: str, launcher: LauncherConfig, folder: Path, training: bool):
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = dict(timeout_min=launcher.timeout_min)
    if cluster == "slurm":
        extra = {k: v for k, v in (("account", launcher.account), ("qos", launcher.qos)) if v}
        params.update(slurm_partition=launcher.partition, gpus_per_node=launcher.gpus_per_node,
                      cpus_per_task=launcher.cpus_per_task, mem_gb=launcher.mem_gb,
                      slurm_array_parallelism=launcher.array_parallelism, slurm_max_num_timeout=launcher.max_num_timeout,
                      tasks_per_node=launcher.tasks_per_node if training else 1,
                      slurm_additional_parameters=extra)
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex


def execute(plan: Plan, store: Store, cluster: str, launcher: LauncherConfig) -> None:
    """Compute every node wave by wave; failures are recorded in plan.failed and block only their descendants."""
    for i, wave in enumerate(plan.waves):
        todo = [n for n in wave if store.lookup(n.stage, n.id) is None
                and not any(p.key in plan.failed for p in n.parents.values())]
        for n in wave:
            if any(p.key in plan.failed for p in n.parents.values()):
                plan.failed.setdefault(n.key, "skipped: a parent artifact failed")
        if not todo:
            continue
        log.info("wave %d/%d: %d to compute (%s)", i + 1, len(plan.waves), len(todo),
                 ", ".join(sorted({n.stage for n in todo})))
        for attempt in range(1 + launcher.max_retries):
            errors = _run_wave(todo, store, cluster, launcher)
            todo = [n for n in todo if n.key in errors]
            if not todo:
                break
            log.warning("wave %d: %d failed (attempt %d/%d)", i + 1, len(todo), attempt + 1, 1 + launcher.max_retries)
        for n in todo:
            plan.failed[n.key] = errors[n.key]


def _run_wave(nodes: list[Node], store: Store, cluster: str, launcher: LauncherConfig) -> dict[tuple, str]:
    errors: dict[tuple, str] = {}
    if cluster == "debug":
        for n in nodes:
            try:
                compute_spec(store, n.spec(), log=log.info)
            except Exception as e:  # noqa: BLE001 - any stage failure is recorded, the sweep goes on
                if isinstance(e, KeyboardInterrupt):
                    raise
                errors[n.key] = "".join(traceback.format_exception(e))[-2000:]
                log.error("%s/%s failed: %s", n.stage, n.id, e)
        return errors
    folder = store.root / "submitit" / time.strftime("%Y%m%d-%H%M%S")
    batches = ([nodes[i:i + launcher.local_workers] for i in range(0, len(nodes), launcher.local_workers)]
               if cluster == "local" else [nodes])
    for batch in batches:
        jobs = []
        for training in (False, True):
            group = [n for n in batch if (n.stage in TRAINING_STAGES) == training]
            if group:
                ex = executor_for(cluster, launcher, folder, training)
                jobs += list(zip(group, ex.map_array(StageJob(str(store.root)), [n.spec() for n in group])))
        for n, job in jobs:
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit raises FailedJobError/UncompletedJobError and others
                tail = (job.stderr() or "")[-2000:] if hasattr(job, "stderr") else ""
                errors[n.key] = f"{type(e).__name__}: {str(e)[-500:]}\n{tail}"
                log.error("%s/%s failed (job %s)", n.stage, n.id, job.job_id)
    return errors


# ------------------------------------------------------------------------------------------------------ rows
def rows_dir(store: Store, sweep: str, profile: str) -> Path:
    return store.root / "sweeps" / sweep / profile


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
    """One flat row per run (plus ceiling rows), and the failures."""
    rows, failed, seen_ceilings = [], [], set()
    for run in plan.sweep.runs:
        dag = plan.dags[run.run_id]
        base = {"run_id": run.run_id, "sweep": plan.sweep.name, "profile": plan.sweep.profile, "seed": run.cfg.seed,
                "generator": run.cfg.generator, **{k: v for k, v in run.point.items()}}
        metrics = _read_metrics(store, dag["metrics"])
        if not metrics:
            key = dag["metrics"].key
            bad = [(n, plan.failed[n.key]) for n in ancestors([dag["metrics"]]) if n.key in plan.failed]
            n, err = bad[0] if bad else (dag["metrics"], plan.failed.get(key, "not computed"))
            failed.append({**base, "stage": n.stage, "artifact": n.id, "error": err[-800:]})
            continue
        row = {**base, "row_kind": "run", **metrics}
        for role in ("tokenizer_metrics", "probe"):
            row.update(_read_metrics(store, dag.get(role)))
        row.update(cost_columns(store, {r: n for r, n in dag.items() if not r.startswith(("ceiling", "real"))}))
        row["config"] = json.dumps(to_dict(run.cfg), sort_keys=True)
        row.update({f"artifacts.{role}": n.id for role, n in dag.items()})
        rows.append(row)
        for role in ("ceiling_metrics", "real_metrics"):
            node = dag.get(role)
            m = _read_metrics(store, node)
            if m and node.id not in seen_ceilings:
                seen_ceilings.add(node.id)
                rows.append({"run_id": node.id, "sweep": plan.sweep.name, "profile": plan.sweep.profile, "seed": 0,
                             "generator": m.get("label", role), "row_kind": "ceiling", **m})
    return rows, failed


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
    p.add_argument("--profile", default=None, help="smoke | tiny (default) | paper")
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
    launcher = sweep.runs[0].cfg.launcher
    cluster = args.cluster or launcher.cluster
    t0 = time.time()
    execute(plan, store, cluster, launcher)
    rows, failed = collect_rows(plan, store)
    rdir = write_rows(store, plan, rows, failed)
    from digit_bench.report import report_from_dir

    out_dir = Path(args.results) / sweep.name / sweep.profile
    report_from_dir(rdir, out_dir, sweep.name, sweep.profile, Path(__file__).resolve().parents[1] / "baselines" / "published.csv")
    for f in failed:
        log.error("FAILED run %s at %s/%s:\n%s", f["run_id"], f["stage"], f["artifact"], f["error"])
    log.info("results: %s/table.md and %s/index.html", out_dir, out_dir)
    return {"sweep": sweep.name, "profile": sweep.profile, "runs": len(sweep.runs), "ok": len(sweep.runs) - len(failed),
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
    from digit_bench.cli import guarded

    args = build_parser().parse_args(argv)
    _setup_logging()
    return guarded(lambda: run_sweep(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
