"""Result rows: one flat row per run (its metrics, tokenizer metrics, probe, stage seeds, cost columns and artifact
ids) plus ceiling rows, written to `<root>/sweeps/<sweep>/<profile>/` for `report`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from digit_bench.artifacts import Store
from digit_bench.config import SLUG, to_dict
from digit_bench.engine.dag import Node, Plan, ancestors
from digit_bench.errors import UserError
from digit_bench.generators.common import generator, instrument_seed, stage_seeds


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
    shared = _ceiling_points(plan)
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
            # under seed_scope full or downstream every seed has its own ceilings (its own decoders and judge); a ceiling row names
            # the seeds of the stages it depends on: the judge (real images), or the tokenizer and decoders too
            seeds = stage_seeds(run.cfg)
            own = {"judge"} if role == "real_metrics" else set(seeds) - set(generator(run.cfg).model_seeds)
            ceiling = {"run_id": node.id, "sweep": plan.sweep.name, "profile": plan.sweep.profile,
                       "seed": instrument_seed(run.cfg), **scope,
                       "stage_seeds": json.dumps({k: v for k, v in seeds.items() if k in own}, sort_keys=True)}
            if m:
                rows.append({**ceiling, "generator": m.get("label", role), "row_kind": "ceiling", **shared[node.id], **m})
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


def _ceiling_points(plan: Plan) -> dict[str, dict]:
    """Per ceiling node, the swept values that every run using it agrees on (e.g. the decoder's `stage2.top_p`), so
    two ceilings of one tokenizer are told apart in results.csv and the report."""
    users: dict[str, list[dict]] = {}
    for run in plan.sweep.runs:
        for role in ("ceiling_metrics", "real_metrics"):
            if role in plan.dags[run.run_id]:
                users.setdefault(plan.dags[run.run_id][role].id, []).append(run.point)
    return {nid: {k: v for k, v in points[0].items() if k not in ("generator", "seed") and all(p.get(k) == v for p in points)}
            for nid, points in users.items()}


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
