"""`digit-bench status`: the state of every run × stage of a sweep, live.

States, from the artifact store and the job ledger the sweep writes beside each artifact (`<id>.job.json`,
`<id>.failed.json`, see engine.launch.record_job):

    done      published (DONE present)
    running   a process holds the artifact's lock; training stages show step/total from their log.jsonl
    failed    the last job failed (its error tail and log paths are listed)
    queued    a job was submitted and has not started yet
    partial   a work directory is left by a stopped job (the next sweep resumes it)
    -         nothing submitted yet
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Optional

from digit_bench.artifacts import CorruptArtifact, Store
from digit_bench.engine.dag import Node


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _locked(lock: Path) -> bool:
    """True when another process holds the artifact's lock (it is computing it)."""
    if not lock.is_file():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def total_steps(node: Node) -> Optional[int]:
    """The optimiser steps a training node runs: `steps` of its `train` block (`vae_train` for the VAE)."""
    block = "vae_train" if node.stage == "vae" else "train"
    todo = [node.cfg]
    while todo:
        d = todo.pop(0)
        if isinstance(d.get(block), dict) and "steps" in d[block]:
            return int(d[block]["steps"])
        todo += [v for v in d.values() if isinstance(v, dict)]
    return None


def node_state(store: Store, node: Node) -> dict:
    """{"state", and when known "progress", "job_id", "stdout", "stderr", "error"} of one artifact."""
    base = store.path(node.stage, node.id)
    try:
        if store.lookup(node.stage, node.id):
            return {"state": "done"}
    except CorruptArtifact as e:
        return {"state": "corrupt", "error": str(e)}
    job = _read(Path(f"{base}.job.json")) or {}
    failed = _read(Path(f"{base}.failed.json"))
    info = {k: job[k] for k in ("job_id", "stdout", "stderr") if job.get(k)}
    work = Path(f"{base}.work")
    if _locked(Path(f"{base}.lock")):
        log = work / "log.jsonl"
        steps = total_steps(node)
        if log.is_file() and steps:
            done = sum(1 for line in log.read_text().splitlines() if line.strip())
            info["progress"] = f"{done}/{steps}"
        return {"state": "running", **info}
    if failed and failed.get("failed", 0) >= job.get("submitted", 0):
        return {"state": "failed", **info, "error": failed["error"].strip().splitlines()[-1][:200]}
    if job:
        return {"state": "queued", **info}
    return {"state": "partial" if work.is_dir() else "-"}


def sweep_status(plan, store: Store) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """Every role of every generator (in DAG order), and run -> role -> node_state."""
    roles: list[str] = []
    for dag in plan.dags.values():
        roles += [r for r in dag if r not in roles]
    table = {rid: {role: node_state(store, node) for role, node in dag.items()} for rid, dag in plan.dags.items()}
    return roles, table


def format_status(roles: list[str], table: dict[str, dict[str, dict]]) -> str:
    """A runs × roles grid of states (full role names), then the job id and logs of every non-done artifact."""
    def cell(st: Optional[dict]) -> str:
        if st is None:
            return ""
        return f"{st['state']} {st['progress']}" if "progress" in st else st["state"]

    widths = {r: max(len(r), *(len(cell(t.get(r))) for t in table.values())) for r in roles}
    run_w = max(len("run"), *(len(r) for r in table))
    lines = [f"{'run':<{run_w}}  " + "  ".join(f"{r:<{widths[r]}}" for r in roles)]
    lines += [f"{rid:<{run_w}}  " + "  ".join(f"{cell(st.get(r)):<{widths[r]}}" for r in roles)
              for rid, st in table.items()]
    jobs = {}
    for rid, st in table.items():
        for role, s in st.items():
            if s["state"] in ("running", "failed", "queued") and s.get("job_id"):
                jobs.setdefault((s["state"], s["job_id"], s.get("stdout"), s.get("stderr"), s.get("error")), []).append(
                    f"{rid}:{role}")
    if jobs:
        lines.append("")
        for (state, job_id, out, err, error), where in sorted(jobs.items(), key=lambda kv: kv[0][:2]):
            lines.append(f"{state:<8} job {job_id}  {where[0]}" + (f" (+{len(where) - 1} runs)" if len(where) > 1 else ""))
            if out:
                lines.append(f"         log: {out}" + (f"  {err}" if err and err != out else ""))
            if error:
                lines.append(f"         error: {error}")
    counts = {}
    for st in table.values():
        for s in st.values():
            counts[s["state"]] = counts.get(s["state"], 0) + 1
    lines.append("")
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
