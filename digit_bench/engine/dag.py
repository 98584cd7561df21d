"""The stage DAG of one run, with artifact ids computed before anything runs.

`run_dag(cfg)` returns the nodes a run needs, keyed by role ("features", "gpt", "metrics", ...), as the generator's
registered recipe (digit_bench/generators/) builds them. A node is a stage module (digit_bench/stages/<stage>.py
exposing VERSION, KIND, RESUMABLE and `compute(cfg, parents, out) -> dict`), the slice of the config that affects its
bytes, and its parent nodes; its id hashes all three. Runs of a sweep share every node whose inputs agree, so the
sweep computes each one once.

Which seeds enter which nodes (`seed_scope`, recorded in every row with each stage's seed, `stage_seeds`):
- full (default): the run seed offsets every stochastic stage's seed: SSL pretraining (or the random ViT's init),
  the images K-Means sees and its init, the VQGAN, the stage-2 decoder, the stage-1 GPT, all sampling seeds, the
  VAE and the LDM, and the local FD classifier with its reference features. The std over seeds then covers the
  whole pipeline. Seed 0 is the configured seeds, so its artifacts are the same under both scopes. The data
  subsets (data.split_seed) and the stability noise (stability.seed) stay fixed: they define the task and the test.
- generator: the run seed re-keys the stage-1 GPT, its samples, the probe and the LDM only; the backbone, K-Means,
  VQGAN, stage 2, VAE and classifier are shared by all run seeds (fixed "instruments"): cheaper, and blind to the
  variance of those stages.
Every node's config carries `threads`, the CPU thread count it runs at (`fixed_threads`), so an artifact id names
the one thread count its bytes are reproducible at.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any

from digit_bench.artifacts import Artifact, Store, artifact_id, runtime_info
from digit_bench.config import ExperimentConfig, Sweep
from digit_bench.contracts import split_cfg, typed


@dataclass(eq=False)
class Node:
    """One artifact to compute: stage module + stage config + parents (+ speed settings, which the id leaves out).

    `cfg` is the stage's typed `Cfg` (its contract: exactly its inputs, speed fields marked SPEED), stored as its
    JSON form, or that form itself for a stage without a Cfg.
    """

    stage: str  # module under digit_bench.stages and directory under the root
    prefix: str  # readable part of the id
    cfg: Any  # everything that changes the artifact's bytes: hashed into the id
    parents: dict[str, "Node"] = field(default_factory=dict)
    speed: dict = field(default_factory=dict)  # what changes only speed (inference batch sizes): not hashed

    def __post_init__(self):
        if dataclasses.is_dataclass(self.cfg):
            self.cfg, self.speed = split_cfg(self.cfg)

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"digit_bench.stages.{self.stage}")

    @cached_property
    def id(self) -> str:
        return artifact_id(self.stage, self.prefix, self.cfg, [p.id for p in self.parents.values()], self.module.VERSION)

    @property
    def training(self) -> bool:
        """Whether the stage trains a model (`KIND = "train"`): such jobs get the launcher's DDP shape."""
        return self.module.KIND == "train"

    @property
    def key(self) -> tuple[str, str]:
        return self.stage, self.id

    def spec(self) -> dict:
        """A picklable description (for submitit jobs): everything needed to compute it from published parents."""
        return {"stage": self.stage, "id": self.id, "cfg": self.cfg, "speed": self.speed,
                "parents": {role: [p.stage, p.id] for role, p in self.parents.items()}}


@dataclass(eq=False)
class ImportedNode(Node):
    """An artifact registered by `digit-bench import` (released centroids, a fairseq GPT), known by its id."""

    @property
    def id(self) -> str:
        return self.cfg["id"]


def imported_node(kind: str, aid: str) -> Node:
    from digit_bench.stages import imported

    return ImportedNode("imported", aid.rsplit("-", 1)[0], imported.Cfg(kind=kind, id=aid))




def stage_inputs(store: Store, spec: dict) -> tuple[ModuleType, dict[str, Artifact]]:
    """The stage module of `spec` and its published parent artifacts (a missing parent is a UserError)."""
    module = importlib.import_module(f"digit_bench.stages.{spec['stage']}")
    parents = {role: store.require(st, aid, "the sweep that planned this run (rerun it)")
               for role, (st, aid) in spec["parents"].items()}
    return module, parents


@contextmanager
def fixed_threads(n: int):
    """Run the body with `n` CPU threads in torch, every loaded OpenMP/BLAS library, and those loaded later.

    CPU kernels split reductions (conv weight gradients, GEMM blocks, faiss sums) by thread count, so the same stage
    gives other bits at another count: the debug executor ran stages at 2 threads, local/SLURM jobs at 1, and the
    VQGAN's GAN training drifted apart over its steps. Environment variables reach libraries loaded inside the body
    (faiss's bundled OpenBLAS and OpenMP); threadpoolctl those loaded already. torch's count is restored after.
    """
    import torch
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def stage_cfg(module: ModuleType, spec: dict) -> Any:
    """What the stage's compute() reads: its hashed config and its speed settings, as its typed Cfg when it has one."""
    d = {**spec["cfg"], **spec.get("speed", {})}
    return typed(module.Cfg, d) if hasattr(module, "Cfg") else d


def published_speed(spec: dict) -> dict:
    """Manifest fields of the speed settings an artifact was computed with (a repair reruns it with them)."""
    return {"speed": spec["speed"]} if spec.get("speed") else {}


def compute_spec(store: Store, spec: dict, log=print) -> Artifact:
    """Compute (or reuse) the node described by `spec`, at its thread count; its parents must be published."""
    module, parents = stage_inputs(store, spec)

    def run(out):
        with fixed_threads(spec["cfg"].get("threads", 1)):
            return {**module.compute(stage_cfg(module, spec), parents, out), "runtime": runtime_info(), **published_speed(spec)}

    return store.lookup_or_compute(spec["stage"], spec["id"], spec["cfg"], parents, run, resumable=module.RESUMABLE,
                                   log=log)


def compute(store: Store, node: Node, log=print) -> Artifact:
    """Compute a node and, first, any of its ancestors (in-process)."""
    for p in node.parents.values():
        if store.lookup(p.stage, p.id) is None:
            compute(store, p, log)
    return compute_spec(store, node.spec(), log)


def ancestors(nodes: list[Node]) -> list[Node]:
    """All nodes reachable from `nodes`, each once, parents before children."""
    seen: dict[tuple, Node] = {}

    def visit(n: Node) -> None:
        if n.key in seen:
            return
        for p in n.parents.values():
            visit(p)
        seen[n.key] = n

    for n in nodes:
        visit(n)
    return list(seen.values())


def depth(node: Node, memo: dict | None = None) -> int:
    """Longest path from a root: nodes of equal depth form one wave."""
    memo = {} if memo is None else memo
    if node.key not in memo:
        memo[node.key] = 1 + max((depth(p, memo) for p in node.parents.values()), default=-1)
    return memo[node.key]


# ------------------------------------------------------------------------------------------------ the graph
def run_dag(cfg: ExperimentConfig) -> dict[str, Node]:
    """role -> node for everything one run needs (its generator's recipe); `metrics` and the ceilings are its sinks."""
    from digit_bench.generators.common import scoped
    from digit_bench.registry import GENERATORS

    nodes = GENERATORS.get(cfg.generator).nodes(scoped(cfg))
    set_threads(list(nodes.values()), cfg.threads)
    return nodes


def set_threads(nodes: list[Node], threads: int) -> None:
    """Put the thread count into the config of `nodes` and their ancestors, before any id is computed."""
    for node in nodes:
        if "threads" not in node.cfg:
            node.cfg["threads"] = threads
            set_threads(list(node.parents.values()), threads)


# ------------------------------------------------------------------------------------------------ a sweep's plan
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
