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
Launcher fields follow the hydra submitit plugin's resource schema (no hydra). The machinery lives in engine/ (dag:
plan and waves, launch: executors and jobs, rows: result rows); this module is the command.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import re
import sys
import time
from pathlib import Path

from digit_bench.artifacts import Store, default_root
from digit_bench.config import load_sweep
from digit_bench.engine.dag import describe, make_plan
from digit_bench.engine.launch import USER_ERROR, execute, setup_logging
from digit_bench.engine.rows import collect_rows, rows_dir, write_rows
from digit_bench.errors import UserError, guarded

log = logging.getLogger("digit_bench")


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
    setup_logging()
    summary: dict = {}

    def sweep() -> dict:
        summary.update(run_sweep(args))
        return summary

    code = guarded(sweep, args.debug)
    return 1 if code == 0 and summary.get("failed") else code


if __name__ == "__main__":
    raise SystemExit(main())
