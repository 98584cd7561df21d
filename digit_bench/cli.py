"""The `digit-bench` command: ls | validate | run | sweep | status | report | compare | bench.

Logs go to stderr and one JSON summary line to stdout. Every user error exits 2 with a one-line message naming the
cause and the fix (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from digit_bench.errors import UserError

log = logging.getLogger("digit_bench")


def guarded(fn: Callable[[], Any], debug: bool = False) -> int:
    """Run fn; print its result as one JSON line; UserError -> one line on stderr and exit code 2."""
    try:
        result = fn()
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, default=str))
    return 0


def cmd_ls(args: argparse.Namespace) -> dict:
    from digit_bench.registry import ALL

    if args.registry not in ALL:
        from digit_bench.registry import did_you_mean

        raise UserError(f"unknown registry {args.registry!r}{did_you_mean(args.registry, list(ALL))}; choose one of: {', '.join(ALL)}")
    reg = ALL[args.registry]
    for name in reg.names():
        print(f"{name:<22} {reg.doc(name)}", file=sys.stderr)
    return {args.registry: reg.names()}


def cmd_validate(args: argparse.Namespace) -> dict:
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.sweep import describe, make_plan

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    plan = make_plan(sweep)
    print(describe(plan, Store(args.root or default_root())), file=sys.stderr)
    return {"valid": True, "sweep": sweep.name, "profile": sweep.profile, "runs": len(sweep.runs),
            "run_ids": [r.run_id for r in sweep.runs], "artifacts": sum(len(w) for w in plan.waves)}


def cmd_run(args: argparse.Namespace) -> dict:
    """Compute one role of every run's DAG (and whatever it needs), in-process."""
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.pipeline import compute, run_dag

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    store = Store(args.root or default_root())
    done = {}
    for run in sweep.runs:
        dag = run_dag(run.cfg)
        if args.stage not in dag:
            raise UserError(f"run {run.run_id} has no stage {args.stage!r}; its stages are: {', '.join(dag)}")
        node = dag[args.stage]
        done[run.run_id] = str(compute(store, node, log=log.info).path)
    return {"stage": args.stage, "artifacts": done}


def cmd_status(args: argparse.Namespace) -> dict:
    """Runs x stages: which artifacts are DONE."""
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.sweep import make_plan

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    store = Store(args.root or default_root())
    plan = make_plan(sweep)
    table = {}
    for run in sweep.runs:
        dag = plan.dags[run.run_id]
        table[run.run_id] = {role: ("done" if store.lookup(n.stage, n.id) else "-") for role, n in dag.items()}
    roles = list(next(iter(plan.dags.values())))
    print(f"{'run':<48} " + " ".join(f"{r[:10]:>10}" for r in roles), file=sys.stderr)
    for rid, st in table.items():
        print(f"{rid:<48} " + " ".join(f"{st.get(r, ''):>10}" for r in roles), file=sys.stderr)
    return {"status": table}


def cmd_report(args: argparse.Namespace) -> dict:
    from digit_bench.artifacts import Store, default_root
    from digit_bench.report import report_from_dir
    from digit_bench.sweep import rows_dir

    rdir = rows_dir(Store(args.root or default_root()), args.sweep, args.profile)
    if not rdir.is_dir():
        raise UserError(f"no rows for sweep {args.sweep!r} profile {args.profile} under {rdir}; run the sweep first")
    out = Path(args.results) / args.sweep / args.profile
    report_from_dir(rdir, out, args.sweep, args.profile, Path(__file__).resolve().parents[1] / "baselines" / "published.csv")
    return {"report": str(out)}


def cmd_compare(args: argparse.Namespace) -> dict:
    from digit_bench.compare import main as compare_main

    return compare_main(args)


def build_parser() -> argparse.ArgumentParser:
    from digit_bench.sweep import add_sweep_args, build_parser as sweep_parser

    p = argparse.ArgumentParser(prog="digit-bench", description="DiGIT benchmark and ablation harness")
    p.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ls", help="list registered names")
    s.add_argument("registry", help="datasets | backbones | tokenizers | generators | extractors | metrics")
    s.set_defaults(fn=cmd_ls)
    s = sub.add_parser("validate", help="expand and type-check a sweep; print runs and artifact ids; compute nothing")
    add_sweep_args(s)
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("run", help="compute one stage (role) of every run, in-process")
    s.add_argument("stage", help="role in the run DAG: features, centroids, tokens, gpt, samples, images, metrics, ...")
    add_sweep_args(s)
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("status", help="runs x stages table of what is DONE")
    add_sweep_args(s)
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("report", help="tables, figures and index.html from a finished sweep's rows")
    s.add_argument("sweep")
    s.add_argument("--profile", default="tiny")
    s.add_argument("--root", default=None)
    s.add_argument("--results", default="results")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("compare", help="does each metric of results B land inside results A's interval")
    s.add_argument("a", help="results.csv with the intervals (e.g. the committed results/<sweep>/<profile>/results.csv)")
    s.add_argument("b", help="results.csv of a rerun")
    s.add_argument("--out", default=None, help="also write the per-row table to this CSV")
    s.set_defaults(fn=cmd_compare)
    sub.add_parser("sweep", help="run a sweep (same as python -m digit_bench.sweep)", add_help=False)
    sub.add_parser("bench", help="tokenizer micro-benchmarks as a table", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        from digit_bench.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["bench"]:
        from digit_bench.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    from digit_bench.sweep import _setup_logging

    _setup_logging()
    return guarded(lambda: args.fn(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
