"""The stage DAG of one run, with artifact ids computed before anything runs.

`run_dag(cfg)` returns the nodes a run needs, keyed by role ("features", "gpt", "metrics", ...). A node is a stage
module (digit_bench/stages/<stage>.py exposing VERSION, RESUMABLE and `compute(cfg, parents, out) -> dict`), the
slice of the config that affects its bytes, and its parent nodes; its id hashes all three. Runs of a sweep share
every node whose inputs agree, so the sweep computes each one once.

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

from digit_bench.artifacts import Artifact, Store, artifact_id, runtime_info
from digit_bench.config import PROBE_PAPER_FIELDS, ExperimentConfig, to_dict
from digit_bench.data import GREY_DATASETS

SSL_BACKBONES = {"dino_tiny": "dino", "mae_tiny": "mae", "sup_tiny": "sup"}
FIXED_SEED = 0  # configured seed of the VQGAN, stage 2, VAE and classifier (offset by the run seed under full scope)


@dataclass(eq=False)
class Node:
    """One artifact to compute: stage module + stage config + parents."""

    stage: str  # module under digit_bench.stages and directory under the root
    prefix: str  # readable part of the id
    cfg: dict
    parents: dict[str, "Node"] = field(default_factory=dict)

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"digit_bench.stages.{self.stage}")

    @cached_property
    def id(self) -> str:
        return artifact_id(self.stage, self.prefix, self.cfg, [p.id for p in self.parents.values()], self.module.VERSION)

    @property
    def key(self) -> tuple[str, str]:
        return self.stage, self.id

    def spec(self) -> dict:
        """A picklable description (for submitit jobs): everything needed to compute it from published parents."""
        return {"stage": self.stage, "id": self.id, "cfg": self.cfg,
                "parents": {role: [p.stage, p.id] for role, p in self.parents.items()}}


@dataclass(eq=False)
class ImportedNode(Node):
    """An artifact registered by `digit-bench import` (released centroids, a fairseq GPT), known by its id."""

    @property
    def id(self) -> str:
        return self.cfg["id"]


def imported_node(kind: str, aid: str) -> Node:
    return ImportedNode("imported", aid.rsplit("-", 1)[0], {"kind": kind, "id": aid})


def _unless_default(d: dict, **defaults) -> dict:
    """`d` without the named fields while they hold these defaults: a field added later re-keys no older artifact."""
    return {k: v for k, v in d.items() if not (k in defaults and v == defaults[k])}


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


def compute_spec(store: Store, spec: dict, log=print) -> Artifact:
    """Compute (or reuse) the node described by `spec`, at its thread count; its parents must be published."""
    module, parents = stage_inputs(store, spec)

    def run(out):
        with fixed_threads(spec["cfg"].get("threads", 1)):
            return {**module.compute(spec["cfg"], parents, out), "runtime": runtime_info()}

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
def scoped(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with its stage seeds offset by the run seed under seed_scope full (unchanged under generator)."""
    if cfg.seed_scope != "full" or cfg.seed == 0:
        return cfg
    s, rep = cfg.seed, dataclasses.replace
    return rep(cfg, backbone=rep(cfg.backbone, init_seed=cfg.backbone.init_seed + s),
               features=rep(cfg.features, seed=cfg.features.seed + s),
               tokenizer=rep(cfg.tokenizer, seed=cfg.tokenizer.seed + s),
               sample=rep(cfg.sample, seed=cfg.sample.seed + s))


def instrument_seed(cfg: ExperimentConfig) -> int:
    """Seed of the VQGAN, stage 2, VAE, classifier and the ceilings' bootstrap: FIXED_SEED, + run seed under full."""
    return FIXED_SEED + (cfg.seed if cfg.seed_scope == "full" else 0)


def stage_seeds(cfg: ExperimentConfig) -> dict[str, int]:
    """The seed each stochastic stage of the run used (rows carry it as `stage_seeds`, next to `seed_scope`)."""
    c, fixed = scoped(cfg), instrument_seed(cfg)
    out = {"backbone": c.backbone.init_seed, "kmeans_images": c.features.seed, "kmeans": c.tokenizer.seed,
           "vqgan": fixed, "stage2": fixed, "gpt": c.seed, "sample": c.sample.seed, "vae": fixed, "ldm": c.seed,
           "judge": fixed}
    keep = {"digit": ("backbone", "kmeans_images", "kmeans", "vqgan", "stage2", "gpt", "sample", "judge"),
            "vqgan_ar": ("vqgan", "gpt", "sample", "judge"), "ldm": ("vae", "ldm", "sample", "judge")}[cfg.generator]
    return {k: out[k] for k in keep}


def _data(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg.data)


def _pixels(cfg: ExperimentConfig) -> dict:
    """What a stage that makes pixels must know of the data set: grey data sets get grey (R=G=B) images."""
    return {"grey": cfg.data.name in GREY_DATASETS}


def classifier_node(cfg: ExperimentConfig) -> Node:
    """The `local` extractor: trained on the whole train part (train.num_train does not cut it), test images scored."""
    data = {**_data(cfg), "num_train": None, "num_test": None}
    return Node("classifier", f"local-{cfg.data.name}{cfg.data.image_size}",
                {"data": data, "train": to_dict(cfg.eval.local_train), "seed": instrument_seed(cfg)})


def reference_node(cfg: ExperimentConfig, extractor: str) -> Node:
    parents = {"classifier": classifier_node(cfg)} if extractor == "local" else {}
    # an npz reference is named by its file name only: a path's slashes cannot be in a directory name
    ref = cfg.eval.reference
    ref = f"npz:{ref.rsplit('/', 1)[-1]}" if ref.startswith("npz:") else ref
    return Node("reference", f"{extractor}-{ref.replace(':', '_')}",
                {"data": _data(cfg), "reference": cfg.eval.reference, "extractor": extractor,
                 "num_reference": cfg.eval.num_reference, "weights": cfg.eval.weights,
                 "resize": cfg.eval.reference_resize}, parents)


def evaluate_node(cfg: ExperimentConfig, images: Node, label: str, seed: int, tokenizer_backbone: str) -> Node:
    """Metrics of an image artifact against the reference, with every configured extractor.

    `seed` seeds the bootstrap; `tokenizer_backbone` is what the circularity guard compares extractors with.
    """
    extractors = (cfg.eval.extractor, *cfg.eval.extra_extractors)
    parents = {"images": images}
    if "local" in extractors or cfg.gpt.class_conditional:  # the local judge: its FD features, or class_acc
        parents["classifier"] = classifier_node(cfg)
    parents.update({f"reference_{e}": reference_node(cfg, e) for e in extractors})
    return Node("evaluate", f"{label}-{cfg.eval.extractor}",
                {"eval": {k: v for k, v in to_dict(cfg.eval).items() if k != "local_train"},
                 "extractors": list(extractors), "tokenizer_backbone": tokenizer_backbone, "seed": seed}, parents)


def backbone_parents(cfg: ExperimentConfig) -> dict[str, Node]:
    if cfg.backbone.name not in SSL_BACKBONES:
        return {}
    return {"ssl": Node("pretrain_ssl", f"{cfg.backbone.name}-{cfg.data.name}",
                        {"method": SSL_BACKBONES[cfg.backbone.name], "data": _data(cfg), "ssl": to_dict(cfg.ssl),
                         "seed": cfg.backbone.init_seed})}


def _backbone_cfg(cfg: ExperimentConfig) -> dict:
    b = to_dict(cfg.backbone)
    b.pop("batch_size")  # changes speed, not bytes
    return b


def kmeans_nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    bb = backbone_parents(cfg)
    features = Node("extract", f"{cfg.backbone.name}-L{cfg.backbone.layer}-{cfg.data.name}",
                    {"data": _data(cfg), "backbone": _backbone_cfg(cfg), "features": to_dict(cfg.features),
                     "batch_size": cfg.backbone.batch_size}, bb)
    tok = to_dict(cfg.tokenizer)
    if cfg.tokenizer.centroids:
        centroids = imported_node("centroids", cfg.tokenizer.centroids)
    else:
        centroids = Node("cluster", f"k{cfg.tokenizer.k}-{cfg.tokenizer.backend}-s{cfg.tokenizer.seed}",
                         {k: tok[k] for k in ("k", "niter", "backend", "spherical", "seed", "max_points_per_centroid",
                                              "init")}, {"features": features})
    tokens = Node("tokenize", f"{cfg.backbone.name}-k{cfg.tokenizer.k}",
                  {"data": _data(cfg), "backbone": _backbone_cfg(cfg), "views": tok["views"], "spherical": cfg.tokenizer.spherical,
                   "batch_size": cfg.backbone.batch_size}, {"centroids": centroids, **bb})
    return {**bb, "features": features, "centroids": centroids, "tokens": tokens}


def vqgan_nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    vq = {k: v for k, v in to_dict(cfg.vqgan).items()}
    vqgan = Node("vqgan", f"vqgan-{cfg.data.name}{cfg.data.image_size}-n{cfg.vqgan.n_embed}",
                 {"data": _data(cfg), "vqgan": vq, "seed": instrument_seed(cfg)})
    vq_tokens = Node("vq_tokenize", f"vq-n{cfg.vqgan.n_embed}",
                     {"data": _data(cfg), "views": list(cfg.tokenizer.views)}, {"vqgan": vqgan})
    return {"vqgan": vqgan, "vq_tokens": vq_tokens}


def _probe(cfg: ExperimentConfig) -> dict:
    """The probe settings; the paper protocol's fields only when it is chosen (converged-probe ids stay as they were)."""
    d = to_dict(cfg.probe)
    return d if cfg.probe.protocol == "paper" else {k: v for k, v in d.items() if k not in PROBE_PAPER_FIELDS}


def stage1_nodes(cfg: ExperimentConfig, tokens: Node, label: str) -> dict[str, Node]:
    if cfg.gpt.checkpoint:
        gpt = imported_node("gpt", cfg.gpt.checkpoint)
    else:
        gpt = Node("train", f"{cfg.gpt.size}-{label}-s{cfg.seed}",
                   {"gpt": _unless_default(to_dict(cfg.gpt), checkpoint=None), "train": to_dict(cfg.train),
                    "seed": cfg.seed}, {"tokens": tokens})
    # prefix_len > 0: every sample continues the first prefix_len tokens of a val image's sequence (paper Fig. 4b)
    prompts = {"prompts": tokens} if cfg.sample.prefix_len else {}
    samples = Node("sample", f"{cfg.gpt.size}-{label}-s{cfg.seed}",
                   {"sample": _unless_default(to_dict(cfg.sample), prefix_len=0)}, {"gpt": gpt, **prompts})
    out = {"gpt": gpt, "samples": samples}
    if cfg.probe.enabled:
        # the paper protocol tokenizes its augmented views online: it needs the tokenizer (centroids + backbone, or VQGAN)
        online = {r: p for r, p in tokens.parents.items() if r in ("centroids", "ssl", "vqgan")} if cfg.probe.protocol == "paper" else {}
        out["probe"] = Node("probe", f"{cfg.gpt.size}-{label}-s{cfg.seed}", {"probe": _probe(cfg), "seed": cfg.seed},
                            {"gpt": gpt, "tokens": tokens, **online})
    return out


def run_dag(cfg: ExperimentConfig) -> dict[str, Node]:
    """role -> node for everything one run needs; `metrics` and the ceiling metrics are its sinks."""
    cfg = scoped(cfg)
    nodes: dict[str, Node] = {}
    if cfg.generator in ("digit", "vqgan_ar"):
        nodes.update(vqgan_nodes(cfg))
    if cfg.generator == "digit":
        nodes.update(kmeans_nodes(cfg))
        label = f"{cfg.backbone.name}-k{cfg.tokenizer.k}"
        nodes.update(stage1_nodes(cfg, nodes["tokens"], label))
        nodes["tokenizer_metrics"] = Node("tokenizer_metrics", label,
                                          {"stability": to_dict(cfg.stability), "data": _data(cfg), "probe": _probe(cfg),
                                           "tokenizer": _unless_default(to_dict(cfg.tokenizer), centroids=None)},
                                          {"tokens": nodes["tokens"], "centroids": nodes["centroids"],
                                           "features": nodes["features"], **backbone_parents(cfg)})
        nodes["stage2"] = Node("stage2", f"{cfg.stage2.kind}-{cfg.stage2.size}-{label}",
                               {"stage2": to_dict(cfg.stage2), "seed": instrument_seed(cfg)},
                               {"tokens": nodes["tokens"], "vq_tokens": nodes["vq_tokens"]})
        render = {"stage2": to_dict(cfg.stage2), "sample_seed": cfg.sample.seed, "batch_size": cfg.sample.batch_size,
                  **_pixels(cfg)}
        nodes["images"] = Node("render", f"digit-{label}-s{cfg.seed}", {**render, "source": "samples"},
                               {"samples": nodes["samples"], "stage2": nodes["stage2"], "vqgan": nodes["vqgan"]})
        nodes["ceiling_images"] = Node("render", f"digit_vq_ceiling-{label}",
                                       {**render, "source": "ground_truth", "split": cfg.eval.ceiling_split},
                                       {"tokens": nodes["tokens"], "stage2": nodes["stage2"], "vqgan": nodes["vqgan"]})
        nodes["ceiling_metrics"] = evaluate_node(cfg, nodes["ceiling_images"], f"digit_vq_ceiling-{label}",
                                                 instrument_seed(cfg), cfg.backbone.name)
    elif cfg.generator == "vqgan_ar":
        label = f"vq{cfg.vqgan.n_embed}"
        nodes.update(stage1_nodes(cfg, nodes["vq_tokens"], label))
        nodes["tokenizer_metrics"] = Node("tokenizer_metrics", label,
                                          {"stability": to_dict(cfg.stability), "data": _data(cfg), "probe": _probe(cfg),
                                           "tokenizer": {"kind": "vqgan"}},
                                          {"tokens": nodes["vq_tokens"], "vqgan": nodes["vqgan"]})
        nodes["images"] = Node("render", f"vqgan_ar-s{cfg.seed}",
                               {"source": "samples", "batch_size": cfg.sample.batch_size, **_pixels(cfg)},
                               {"samples": nodes["samples"], "vqgan": nodes["vqgan"]})
        nodes["ceiling_images"] = Node("render", "vq_recon", {"source": "reconstruction", "batch_size": cfg.sample.batch_size,
                                                              "split": cfg.eval.ceiling_split, **_pixels(cfg)},
                                       {"vqgan": nodes["vqgan"], "tokens": nodes["vq_tokens"]})
        nodes["ceiling_metrics"] = evaluate_node(cfg, nodes["ceiling_images"], "vq_only", instrument_seed(cfg), "vqgan")
    else:  # ldm
        ldm = to_dict(cfg.ldm)
        vae = Node("vae", f"vae-{cfg.data.name}{cfg.data.image_size}",
                   {"data": _data(cfg), "ldm": {k: ldm[k] for k in ("vae_weights", "latent_channels", "vae_channels", "kl_weight", "vae_train")},
                    "seed": instrument_seed(cfg)})
        latents = Node("latents", f"latents-{cfg.data.name}", {"data": _data(cfg)}, {"vae": vae})
        diffusion = Node("diffusion", f"{ldm['denoiser']}-s{cfg.seed}", {"ldm": ldm, "seed": cfg.seed}, {"latents": latents})
        nodes.update(vae=vae, latents=latents, diffusion=diffusion)
        nodes["images"] = Node("ldm_sample", f"{ldm['denoiser']}-s{cfg.seed}",
                               {"ldm": ldm, "num_samples": cfg.sample.num_samples, "sample_seed": cfg.sample.seed,
                                "batch_size": cfg.sample.batch_size, "conditional": cfg.gpt.class_conditional,
                                **_pixels(cfg)},
                               {"diffusion": diffusion, "vae": vae, "latents": latents})
    tokenizer_backbone = cfg.backbone.name if cfg.generator == "digit" else cfg.generator
    nodes["metrics"] = evaluate_node(cfg, nodes["images"], f"{cfg.generator}-s{cfg.seed}", cfg.seed, tokenizer_backbone)
    nodes["real_metrics"] = evaluate_node(cfg, real_images_node(cfg), "real_val", instrument_seed(cfg), "real")
    set_threads(list(nodes.values()), cfg.threads)
    return nodes


def set_threads(nodes: list[Node], threads: int) -> None:
    """Put the thread count into the config of `nodes` and their ancestors, before any id is computed."""
    for node in nodes:
        if "threads" not in node.cfg:
            node.cfg["threads"] = threads
            set_threads(list(node.parents.values()), threads)


def real_images_node(cfg: ExperimentConfig) -> Node:
    """Held-out real images (val split), as many as the generator makes: the best any generator can score."""
    return Node("real_images", f"{cfg.data.name}-val", {"data": _data(cfg), "num_samples": cfg.sample.num_samples})
