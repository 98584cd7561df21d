"""The `digit-bench` command: ls | validate | run | sweep | status | report | verify | bench.

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
    store.ensure_writable()
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


def cmd_verify(args: argparse.Namespace) -> dict:
    """Check every published artifact's files against its manifest (sizes and digests); --repair moves a corrupt one
    to <root>/quarantine/ and recomputes it from its recorded spec (its corrupt parents first)."""
    from digit_bench.artifacts import Store, check_artifact, default_root, published

    store = Store(args.root or default_root())
    if not store.root.is_dir():
        raise UserError(f"--root {store.root} is not a folder of artifacts; give the root a sweep wrote to")
    arts = published(store.root)
    corrupt = {}
    for path in arts:
        problems = check_artifact(path, hashes=True)
        if problems:
            corrupt[(path.parent.name, path.name)] = problems
            log.error("corrupt %s/%s: %s", path.parent.name, path.name, "; ".join(problems))
    report = {"root": str(store.root), "checked": len(arts),
              "corrupt": {f"{st}/{aid}": probs for (st, aid), probs in corrupt.items()}}
    if corrupt and not args.repair:
        (st, aid), probs = next(iter(corrupt.items()))
        raise UserError(f"{len(corrupt)} corrupt artifact(s) under {store.root}, e.g. {st}/{aid} ({probs[0]}); "
                        f"quarantine and recompute them with: digit-bench verify --repair --root {store.root}")
    if corrupt:
        report["repaired"], report["quarantined"] = _repair(store, corrupt)
    return report


def _repair(store, corrupt: dict) -> tuple[list[str], list[str]]:
    """Quarantine every corrupt artifact, then recompute each (parents first); UserError if one cannot be."""
    import shutil
    import time

    from digit_bench.artifacts import artifact_spec
    from digit_bench.pipeline import compute_spec

    specs, moved = {}, []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for st, aid in corrupt:
        path = store.path(st, aid)
        specs[(st, aid)] = artifact_spec(path)
        dest = store.inside(store.root / "quarantine" / st / f"{aid}-{stamp}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))
        moved.append(str(dest))
        log.warning("quarantined %s/%s in %s", st, aid, dest)
    done: list[str] = []

    def recompute(key: tuple[str, str]) -> None:
        spec = specs[key]
        if spec is None:
            raise UserError(f"{key[0]}/{key[1]} was quarantined but its spec is unreadable; rerun the sweep that made it "
                            "to recompute it")
        for pst, pid in spec["parents"].values():
            if (pst, pid) in specs and f"{pst}/{pid}" not in done:
                recompute((pst, pid))
        compute_spec(store, spec, log=log.info)
        done.append(f"{key[0]}/{key[1]}")

    for key in specs:
        if f"{key[0]}/{key[1]}" not in done:
            recompute(key)
    return done, moved


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
    s = sub.add_parser("verify", help="check every artifact's files against its manifest; --repair recomputes corrupt ones")
    s.add_argument("--root", default=None, help="artifact root (default $DIGIT_BENCH_ROOT or ./runs)")
    s.add_argument("--repair", action="store_true", help="quarantine corrupt artifacts and recompute them")
    s.set_defaults(fn=cmd_verify)
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
