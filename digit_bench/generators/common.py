"""What every generator recipe shares: the seeds of a run, the judge (local classifier), the reference statistics, the
evaluate nodes (metrics, ceilings, real images), and the token pieces two recipes use (the VQGAN and its tokens, the
stage-1 GPT with its samples and probe).

A generator is a `Generator` registered in registry.GENERATORS (one line); its `nodes(cfg)` returns role -> Node for
one run, `metrics` (and the ceilings) being the sinks. The engine (engine/dag.py) only looks the recipe up.

Which seeds enter which nodes (`seed_scope`, recorded in every row with each stage's seed, `stage_seeds`):
- full (default): the run seed offsets every stochastic stage's seed: SSL pretraining (or the random ViT's init),
  the images K-Means sees and its init, the VQGAN, the stage-2 decoder, the stage-1 GPT, all sampling seeds, the
  VAE and the LDM, and the local FD classifier with its reference features. The std over seeds then covers the
  whole pipeline. Seed 0 is the configured seeds, so its artifacts are the same under both scopes. The data
  subsets (data.split_seed) and the stability noise (stability.seed) stay fixed: they define the task and the test.
- downstream: as full, except the encoder the tokens are read from (the SSL pretraining, or the random ViT's init):
  it is trained once and shared by every seed, as the paper's frozen pretrained DINOv2 is. The std over seeds then
  covers everything downstream of a fixed encoder, and a sweep pays for the pretraining once.
- generator: the run seed re-keys the stage-1 model, its samples, the probe and the LDM only; the backbone, K-Means,
  VQGAN, stage 2, VAE and classifier are shared by all run seeds (fixed "instruments"): cheaper, and blind to the
  variance of those stages.
Every node's config carries `threads`, the CPU thread count it runs at (engine.dag.fixed_threads), so an artifact id
names the one thread count its bytes are reproducible at.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from digit_bench.config import PROBE_PAPER_FIELDS, ExperimentConfig, ProbeConfig, probe_hashed, to_dict
from digit_bench.data import GREY_DATASETS
from digit_bench.engine.dag import Node, imported_node
from digit_bench.stages import classifier, evaluate, probe, real_images, reference, sample, train, vq_tokenize
from digit_bench.stages import vqgan as vqgan_stage

FIXED_SEED = 0  # configured seed of the VQGAN, stage 2, VAE and classifier (offset by the run seed under full scope)


@dataclass(frozen=True)
class Generator:
    """A registered recipe: its nodes, the stage seeds its rows record, and its stage-1 model.

    nodes(cfg): role -> Node of one run (cfg already `scoped`); seeds(cfg): stage name -> the seed it used (rows
    carry it as `stage_seeds`); model_seeds: those of them the run seed re-keys under either scope (a ceiling row,
    which does not use the generator's model, leaves them out); model_role: the role whose artifact's `params` is the
    generator's size as the paper counts it (stage 1 only); label: its name in tables and figures.
    """

    nodes: Callable[[ExperimentConfig], dict[str, Node]]
    seeds: Callable[[ExperimentConfig], dict[str, int]]
    model_seeds: tuple[str, ...]
    model_role: str
    label: str  # its name in tables and figures ("DiGIT", "VQGAN-AR")




def scoped(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with its stage seeds offset by the run seed under seed_scope full (the encoder's too) or downstream
    (all but the encoder's); unchanged under generator."""
    if cfg.seed_scope == "generator" or cfg.seed == 0:
        return cfg
    s, rep = cfg.seed, dataclasses.replace
    encoder_seed = cfg.backbone.init_seed + (s if cfg.seed_scope == "full" else 0)
    return rep(cfg, backbone=rep(cfg.backbone, init_seed=encoder_seed),
               features=rep(cfg.features, seed=cfg.features.seed + s),
               tokenizer=rep(cfg.tokenizer, seed=cfg.tokenizer.seed + s),
               sample=rep(cfg.sample, seed=cfg.sample.seed + s))


def instrument_seed(cfg: ExperimentConfig) -> int:
    """Seed of the VQGAN, stage 2, VAE, classifier and the ceilings' bootstrap: FIXED_SEED, + run seed unless the
    scope is generator."""
    return FIXED_SEED + (0 if cfg.seed_scope == "generator" else cfg.seed)


def generator(cfg: ExperimentConfig) -> Generator:
    from digit_bench.registry import GENERATORS

    return GENERATORS.get(cfg.generator)


def stage_seeds(cfg: ExperimentConfig) -> dict[str, int]:
    """The seed each stochastic stage of the run used (rows carry it as `stage_seeds`, next to `seed_scope`)."""
    return generator(cfg).seeds(scoped(cfg))


def data_cfg(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg.data)


def grey(cfg: ExperimentConfig) -> bool:
    """What a stage that makes pixels must know of the data set: grey data sets get grey (R=G=B) images."""
    return cfg.data.name in GREY_DATASETS




# ------------------------------------------------------------------------------------------------ the judge
def classifier_node(cfg: ExperimentConfig) -> Node:
    """The `local` extractor: trained on the whole train part (train.num_train does not cut it), test images scored."""
    data = dataclasses.replace(cfg.data, num_train=None, num_test=None)
    return Node("classifier", f"local-{cfg.data.name}{cfg.data.image_size}",
                classifier.Cfg(data=data, train=cfg.eval.local_train, seed=instrument_seed(cfg)))


def reference_node(cfg: ExperimentConfig, extractor: str) -> Node:
    parents = {"classifier": classifier_node(cfg)} if extractor == "local" else {}
    # an npz reference is named by its file name only: a path's slashes cannot be in a directory name
    ref = cfg.eval.reference
    ref = f"npz:{ref.rsplit('/', 1)[-1]}" if ref.startswith("npz:") else ref
    return Node("reference", f"{extractor}-{ref.replace(':', '_')}",
                reference.Cfg(data=cfg.data, reference=cfg.eval.reference, extractor=extractor,
                              num_reference=cfg.eval.num_reference, weights=cfg.eval.weights,
                              resize=cfg.eval.reference_resize), parents)


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
                evaluate.Cfg(eval={k: v for k, v in to_dict(cfg.eval).items() if k != "local_train"},
                             extractors=extractors, tokenizer_backbone=tokenizer_backbone, seed=seed), parents)


def real_images_node(cfg: ExperimentConfig) -> Node:
    """Held-out real images (val split), as many as the generator makes: the best any generator can score."""
    return Node("real_images", f"{cfg.data.name}-val", real_images.Cfg(data=cfg.data, num_samples=cfg.sample.num_samples))


def judged(cfg: ExperimentConfig, nodes: dict[str, Node], tokenizer_backbone: str) -> dict[str, Node]:
    """`nodes` with the run's sinks added: `metrics` of its `images`, and `real_metrics` of held-out real images."""
    nodes["metrics"] = evaluate_node(cfg, nodes["images"], f"{cfg.generator}-s{cfg.seed}", cfg.seed, tokenizer_backbone)
    nodes["real_metrics"] = evaluate_node(cfg, real_images_node(cfg), "real_val", instrument_seed(cfg), "real")
    return nodes


# ------------------------------------------------------------------------------------------------ shared pieces
def vqgan_nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    """The VQGAN (trained or loaded) and the VQ tokens of every split."""
    vqgan = Node("vqgan", f"vqgan-{cfg.data.name}{cfg.data.image_size}-n{cfg.vqgan.n_embed}",
                 vqgan_stage.Cfg(data=cfg.data, vqgan=cfg.vqgan, seed=instrument_seed(cfg)))
    vq_tokens = Node("vq_tokenize", f"vq-n{cfg.vqgan.n_embed}", vq_tokenize.Cfg(data=cfg.data, views=cfg.tokenizer.views),
                     {"vqgan": vqgan})
    return {"vqgan": vqgan, "vq_tokens": vq_tokens}


def stage1_nodes(cfg: ExperimentConfig, tokens: Node, label: str) -> dict[str, Node]:
    """The stage-1 GPT on `tokens` (trained, or an imported checkpoint), its samples and, when enabled, its probe."""
    if cfg.gpt.checkpoint:
        gpt = imported_node("gpt", cfg.gpt.checkpoint)
    else:
        gpt = Node("train", f"{cfg.gpt.size}-{label}-s{cfg.seed}", train.Cfg(gpt=cfg.gpt, train=cfg.train, seed=cfg.seed),
                   {"tokens": tokens})
    # prefix_len > 0: every sample continues the first prefix_len tokens of a val image's sequence (paper Fig. 4b)
    prompts = {"prompts": tokens} if cfg.sample.prefix_len else {}
    # sample i's seed is sample.seed + i: the batch size changes no byte (a speed setting of sample.Cfg)
    samples = Node("sample", f"{cfg.gpt.size}-{label}-s{cfg.seed}", sample.Cfg(**dataclasses.asdict(cfg.sample)),
                   {"gpt": gpt, **prompts})
    out = {"gpt": gpt, "samples": samples}
    if cfg.probe.enabled:
        settings, online = probe_hashed(cfg.probe), {}
        if cfg.probe.protocol == "paper":  # it tokenizes augmented views on the fly: the data and the tokenizer
            settings.update(data=to_dict(cfg.data), backbone=to_dict(cfg.backbone))
            online = {r: p for r, p in tokens.parents.items() if r in ("centroids", "ssl", "vqgan")}
        out["probe"] = Node("probe", f"{cfg.gpt.size}-{label}-s{cfg.seed}", probe.Cfg(probe=settings, seed=cfg.seed),
                            {"gpt": gpt, "tokens": tokens, **online})
    return out


def acc_ol_probe(cfg: ExperimentConfig) -> ProbeConfig:
    """The probe settings Acc@OL (tokenizer_metrics' converged probe of the tokenizer's features) uses: the paper
    protocol's fields at their defaults, so choosing that protocol for the GPT's probe re-keys no tokenizer metric."""
    default = ProbeConfig()
    return dataclasses.replace(cfg.probe, **{f: getattr(default, f) for f in PROBE_PAPER_FIELDS})
