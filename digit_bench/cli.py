"""The `digit-bench` command: ls | validate | plan | run | sweep | status | report | compare | verify | score | import |
bench | doctor.

Logs go to stderr and one JSON summary line to stdout. Every user error exits 2 with a one-line message naming the
cause and the fix (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from digit_bench.errors import UserError, guarded

log = logging.getLogger("digit_bench")


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
    from digit_bench.engine.dag import describe, make_plan

    from digit_bench.preflight import check_files

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    if args.print_config:
        import yaml

        from digit_bench.config import to_dict

        runs = [r for r in sweep.runs if args.print_config in ("all", r.run_id)]
        if not runs:
            raise UserError(f"no run {args.print_config!r} in {args.yaml}; its runs: "
                            f"{', '.join(r.run_id for r in sweep.runs)} (or pass --print-config all)")
        for r in runs:
            print(f"# run {r.run_id}\n" + yaml.safe_dump(to_dict(r.cfg), sort_keys=False), end="---\n")
        return None
    plan = make_plan(sweep)
    print(describe(plan, Store(args.root or default_root())), file=sys.stderr)
    check_files(sweep)
    return {"valid": True, "sweep": sweep.name, "profile": sweep.profile, "runs": len(sweep.runs),
            "run_ids": [r.run_id for r in sweep.runs], "artifacts": sum(len(w) for w in plan.waves)}


def cmd_plan(args: argparse.Namespace) -> dict:
    """Per job: FLOPs, memory per GPU, disk, GPU-hours and whether it fits its launcher block."""
    from digit_bench.config import load_sweep
    from digit_bench.plan import format_plan, plan_sweep
    from digit_bench.preflight import check_files

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    check_files(sweep)  # a plan of a sweep that cannot start is no plan: name the first missing file
    gpu_type = args.gpu_type or sweep.runs[0].cfg.launcher.gpu_type
    jobs = plan_sweep(sweep, args.mfu, gpu_type)
    print(format_plan(jobs, gpu_type, args.mfu), file=sys.stderr)
    return {"sweep": sweep.name, "profile": sweep.profile, "gpu_type": gpu_type, "mfu": args.mfu,
            "all_fit": all(j.fits_memory is not False and j.fits_time is not False for j in jobs),
            "jobs": [{k: v for k, v in vars(j).items() if k != "memory"} for j in jobs]}


def cmd_run(args: argparse.Namespace) -> dict:
    """Compute one role (and whatever it needs) of every run whose DAG has it, in-process."""
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.engine.dag import compute, run_dag

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    store = Store(args.root or default_root())
    store.ensure_writable()
    dags = {run.run_id: run_dag(run.cfg) for run in sweep.runs}
    having = {run_id: dag[args.stage] for run_id, dag in dags.items() if args.stage in dag}
    if not having:  # checked before anything runs; runs without the stage (a baseline's) are skipped
        roles = dict.fromkeys(role for dag in dags.values() for role in dag)
        raise UserError(f"no run of sweep {sweep.name} has a stage {args.stage!r}; its stages are: {', '.join(roles)}")
    done = {run_id: str(compute(store, node, log=log.info).path) for run_id, node in having.items()}
    return {"stage": args.stage, "artifacts": done}


def cmd_status(args: argparse.Namespace) -> dict:
    """Runs x stages, live: done / running (step/total) / failed / queued / partial / -, with job ids and log paths."""
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.status import format_status, sweep_status
    from digit_bench.engine.dag import make_plan

    sweep = load_sweep(args.yaml, args.profile, args.sets)
    store = Store(args.root or default_root())
    roles, table = sweep_status(make_plan(sweep), store)
    print(format_status(roles, table), file=sys.stderr)
    return {"status": table}


def cmd_report(args: argparse.Namespace) -> dict | None:
    """Report each target: a sweep YAML (+ --profile), a sweep name, or a results folder (re-rendered from its CSV)."""
    from digit_bench.artifacts import Store, default_root
    from digit_bench.config import load_sweep
    from digit_bench.report import readme_snippet, report_from_csv, report_from_dir
    from digit_bench.engine.rows import rows_dir

    done = []
    for target in args.targets:
        path = Path(target)
        if path.suffix in (".yaml", ".yml"):
            sweep = load_sweep(target, args.profile, args.sets)
            name, profile = sweep.name, sweep.profile
        elif (path / "results.csv").is_file() or path.name == "results.csv":
            if args.out and len(args.targets) > 1:
                raise UserError("--out takes one target; report the folders one by one or leave --out out")
            out = Path(args.out) if args.out else None
            report_from_csv(path, out)
            done.append(out or (path if path.is_dir() else path.parent))
            continue
        else:
            name, profile = target, args.profile or "tiny"
        store = Store(args.root or default_root())
        rdir = rows_dir(store, name, profile)
        if not rdir.is_dir():
            raise UserError(f"no rows for sweep {name!r} profile {profile} under {rdir}; run the sweep first, or pass "
                            "--root <its artifact root>, or a results folder such as results/backbones/tiny")
        out = Path(args.out) if args.out else Path(args.results) / name / profile
        report_from_dir(rdir, out, name, profile, store=store)
        done.append(out)
    if args.readme:
        print("\n".join(readme_snippet(d) for d in done))
        return None
    return {"report": [str(d) for d in done], "index": [str(Path(d) / "index.html") for d in done]}


def cmd_score(args: argparse.Namespace) -> dict:
    from digit_bench.score import cmd_score as score

    return score(args)


def cmd_import(args: argparse.Namespace) -> dict:
    from digit_bench.released import cmd_import as run_import

    return run_import(args)


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
    from digit_bench.engine.dag import compute_spec

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


def cmd_compare(args: argparse.Namespace) -> dict:
    from digit_bench.compare import main as compare_main

    return compare_main(args)


def build_parser() -> argparse.ArgumentParser:
    from digit_bench.sweep import add_sweep_args

    p = argparse.ArgumentParser(prog="digit-bench", description="DiGIT benchmark and ablation harness")
    p.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ls", help="list registered names")
    s.add_argument("registry", help="datasets | backbones | generators | extractors | gpt_sizes | dit_sizes | schedulers | metrics")
    s.set_defaults(fn=cmd_ls)
    s = sub.add_parser("validate", help="expand and type-check a sweep; print runs and artifact ids; compute nothing")
    add_sweep_args(s)
    s.add_argument("--print-config", nargs="?", const="all", default=None, metavar="RUN_ID",
                   help="print the resolved YAML config of every run (or of RUN_ID) instead of the plan")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("plan", help="FLOPs, memory per GPU, disk, GPU-hours and fit of every job; compute nothing")
    add_sweep_args(s)
    s.add_argument("--gpu-type", default=None,
                   help="GPU to plan for (h200, h100, a100, ...); default launcher.gpu_type")
    s.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation assumed for GPU-hours (default 0.4)")
    s.set_defaults(fn=cmd_plan)
    s = sub.add_parser("run", help="compute one stage (role) of every run that has it, in-process")
    s.add_argument("stage", help="role in the run DAG: features, centroids, tokens, gpt, samples, images, metrics, ...")
    add_sweep_args(s)
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("status", help="runs x stages, live: done / running with progress / failed / queued, job ids, logs")
    add_sweep_args(s)
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("report", help="results/<sweep>/<profile>/: tables, figures, samples and pages; results/index.html")
    s.add_argument("targets", nargs="+", metavar="TARGET",
                   help="sweep file (ablations/backbones.yaml), sweep name, or a results folder to re-render")
    s.add_argument("--profile", default=None, help="smoke | tiny (default) | paper")
    s.add_argument("--root", default=None, help="artifact root (default $DIGIT_BENCH_ROOT or ./runs)")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="as for the sweep")
    s.add_argument("--results", default="results", help="where <sweep>/<profile>/ is written")
    s.add_argument("--out", default=None, help="write into this folder instead of <results>/<sweep>/<profile>")
    s.add_argument("--readme", action="store_true", help="print each target's README results block (markdown)")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("score", help="FD/IS of generated images (folder, .npz, glob) on a sweep's evaluation path; "
                       "writes one row_kind=external CSV row")
    s.add_argument("images", help="folder of PNG/JPEG, .npz (images or arr_0, uint8 N x H x W x 3), or a quoted glob")
    s.add_argument("--reference", default=None, help="dataset:<name>:<split> | npz:<file> | <file>.npz (ADM mu/sigma); "
                   "default: the profile's eval.reference")
    s.add_argument("--extractor", action="append", choices=["inception", "dinov2", "local"], default=None,
                   help="FD extractor (repeat for more); default: the profile's")
    s.add_argument("--num-reference", type=int, default=None, help="real images in the reference (default: profile's)")
    s.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "ablations" / "_base.yaml"),
                   help="sweep YAML whose (first run's) data/eval settings define the protocol")
    s.add_argument("--profile", default="tiny")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--seed", type=int, default=None, help="bootstrap seed (a sweep row uses its run seed)")
    s.add_argument("--label", default=None, help="row name (default: the input's name)")
    s.add_argument("--sweep", default="external", help="sweep whose comparison the row joins")
    s.add_argument("--results", default="results")
    s.add_argument("--out", default=None, help="CSV path (default: <results>/<sweep>/<profile>/external/<label>.csv)")
    s.add_argument("--export-reference", default=None, metavar="NPZ",
                   help="also write the reference statistics (mu, sigma, extractor, protocol) to this npz")
    s.add_argument("--root", default=None)
    s.set_defaults(fn=cmd_score)
    s = sub.add_parser("import", help="register a released DiGIT artefact (km_*.npy centroids, fairseq stage-1 GPT)")
    s.add_argument("kind", choices=["centroids", "gpt"])
    s.add_argument("file")
    s.add_argument("--root", default=None)
    s.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a fairseq checkpoint's config objects (runs code from the file: trusted files only)")
    s.add_argument("--heads", type=int, default=None, help="attention heads, if the checkpoint's config lacks them")
    s.add_argument("--seq-len", type=int, default=256, help="data tokens per sequence (the release: 256)")
    s.set_defaults(fn=cmd_import)
    s = sub.add_parser("verify", help="check every artifact's files against its manifest; --repair recomputes corrupt ones")
    s.add_argument("--root", default=None, help="artifact root (default $DIGIT_BENCH_ROOT or ./runs)")
    s.add_argument("--repair", action="store_true", help="quarantine corrupt artifacts and recompute them")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("compare", help="does each metric of results B land inside results A's interval")
    s.add_argument("a", help="results.csv with the intervals (e.g. the committed results/<sweep>/<profile>/results.csv)")
    s.add_argument("b", help="results.csv of a rerun")
    s.add_argument("--out", default=None, help="also write the per-row table to this CSV")
    s.set_defaults(fn=cmd_compare)
    sub.add_parser("sweep", help="run a sweep (same as python -m digit_bench.sweep)", add_help=False)
    sub.add_parser("bench", help="tokenizer micro-benchmarks as a table", add_help=False)
    sub.add_parser("doctor", help="device check of the paper path (same as python -m digit_bench.doctor)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        from digit_bench.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from digit_bench.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[:1] == ["bench"]:
        from digit_bench.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    from digit_bench.engine.launch import setup_logging

    setup_logging()
    return guarded(lambda: args.fn(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
