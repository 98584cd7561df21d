"""DiGIT: a GPT on K-Means tokens of a frozen SSL backbone, a stage-2 decoder to VQGAN tokens, the VQGAN's pixels.

Roles: [ssl] features centroids [reseeded_centroids] tokens vqgan vq_tokens gpt samples [probe] tokenizer_metrics
stage2 images ceiling_images ceiling_metrics metrics real_metrics.
"""

from __future__ import annotations

import dataclasses

from digit_bench.config import ExperimentConfig, Stage2Config, to_dict
from digit_bench.engine.dag import Node, imported_node
from digit_bench.generators.common import (acc_ol_probe, Generator, evaluate_node, grey, instrument_seed, judged, stage1_nodes,
                                           vqgan_nodes)
from digit_bench.stages import cluster, extract, pretrain_ssl, render, stage2, tokenize, tokenizer_metrics

SSL_BACKBONES = {"dino_tiny": "dino", "moco_tiny": "moco", "mae_tiny": "mae", "sup_tiny": "sup"}  # trained here by the pretrain_ssl stage
DECODING = ("top_p", "temperature", "maskgit_steps", "choice_temperature")  # stage2 fields the render stage reads


def backbone_parents(cfg: ExperimentConfig) -> dict[str, Node]:
    """{"ssl": the pretrain_ssl node} for a backbone trained here, else {} (the backbone loads by name)."""
    if cfg.backbone.name not in SSL_BACKBONES:
        return {}
    return {"ssl": Node("pretrain_ssl", f"{cfg.backbone.name}-{cfg.data.name}",
                        pretrain_ssl.Cfg(method=SSL_BACKBONES[cfg.backbone.name], data=cfg.data, ssl=cfg.ssl,
                                         seed=cfg.backbone.init_seed))}


def backbone_cfg(cfg: ExperimentConfig) -> dict:
    b = to_dict(cfg.backbone)
    b.pop("batch_size")  # changes speed, not bytes (extract and tokenize get it as a speed setting)
    return b


def decoding(cfg: ExperimentConfig) -> dict:
    """The stage-2 settings that only decoding reads: they key the rendered images, never the trained decoder."""
    return {k: v for k, v in to_dict(cfg.stage2).items() if k in DECODING}


def decoder_cfg(cfg: ExperimentConfig) -> Stage2Config:
    """cfg.stage2 with its decoding fields at their defaults: the trained decoder does not depend on them."""
    return dataclasses.replace(cfg.stage2, **{k: getattr(Stage2Config(), k) for k in DECODING})


def cluster_node(cfg: ExperimentConfig, features: Node, seed: int) -> Node:
    t = cfg.tokenizer
    return Node("cluster", f"k{t.k}-{t.backend}-s{seed}",
                cluster.Cfg(k=t.k, niter=t.niter, backend=t.backend, spherical=t.spherical,
                            max_points_per_centroid=t.max_points_per_centroid, init=t.init, seed=seed),
                {"features": features})


def kmeans_nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    """Backbone features of a sample of train images, K-Means centroids (fitted, or imported), tokens of every split;
    with fitted centroids also `reseeded_centroids` (seed + 1 on the same features: the seed-agreement metric)."""
    bb = backbone_parents(cfg)
    features = Node("extract", f"{cfg.backbone.name}-L{cfg.backbone.layer}-{cfg.data.name}",
                    extract.Cfg(data=cfg.data, backbone=backbone_cfg(cfg), features=cfg.features,
                                batch_size=cfg.backbone.batch_size), bb)
    out = {**bb, "features": features}
    if cfg.tokenizer.centroids:
        out["centroids"] = imported_node("centroids", cfg.tokenizer.centroids)
    else:
        out["centroids"] = cluster_node(cfg, features, cfg.tokenizer.seed)
        out["reseeded_centroids"] = cluster_node(cfg, features, cfg.tokenizer.seed + 1)
    out["tokens"] = Node("tokenize", f"{cfg.backbone.name}-k{cfg.tokenizer.k}",
                         tokenize.Cfg(data=cfg.data, backbone=backbone_cfg(cfg), views=cfg.tokenizer.views,
                                      spherical=cfg.tokenizer.spherical, batch_size=cfg.backbone.batch_size),
                         {"centroids": out["centroids"], **bb})
    return out


def nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    out = {**vqgan_nodes(cfg), **kmeans_nodes(cfg)}
    label = f"{cfg.backbone.name}-k{cfg.tokenizer.k}"
    out.update(stage1_nodes(cfg, out["tokens"], label))
    reseeded = {"reseeded_centroids": out["reseeded_centroids"]} if "reseeded_centroids" in out else {}
    out["tokenizer_metrics"] = Node("tokenizer_metrics", label,
                                    tokenizer_metrics.Cfg(stability=cfg.stability, data=cfg.data, probe=acc_ol_probe(cfg),
                                                          backbone=backbone_cfg(cfg)),
                                    {"tokens": out["tokens"], "centroids": out["centroids"], **reseeded,
                                     **backbone_parents(cfg)})
    out["stage2"] = Node("stage2", f"{cfg.stage2.kind}-{cfg.stage2.size}-{label}",
                         stage2.Cfg(stage2=decoder_cfg(cfg), seed=instrument_seed(cfg)),
                         {"tokens": out["tokens"], "vq_tokens": out["vq_tokens"]})
    decode = dict(grey=grey(cfg), stage2=decoding(cfg), sample_seed=cfg.sample.seed, batch_size=cfg.sample.batch_size)
    out["images"] = Node("render", f"digit-{label}-s{cfg.seed}", render.Cfg(source="samples", **decode),
                         {"samples": out["samples"], "stage2": out["stage2"], "vqgan": out["vqgan"]})
    out["ceiling_images"] = Node("render", f"digit_vq_ceiling-{label}",
                                 render.Cfg(source="ground_truth", split=cfg.eval.ceiling_split, **decode),
                                 {"tokens": out["tokens"], "stage2": out["stage2"], "vqgan": out["vqgan"]})
    out["ceiling_metrics"] = evaluate_node(cfg, out["ceiling_images"], f"digit_vq_ceiling-{label}",
                                           instrument_seed(cfg), cfg.backbone.name)
    return judged(cfg, out, cfg.backbone.name)


def seeds(cfg: ExperimentConfig) -> dict[str, int]:
    fixed = instrument_seed(cfg)
    return {"backbone": cfg.backbone.init_seed, "kmeans_images": cfg.features.seed, "kmeans": cfg.tokenizer.seed,
            "vqgan": fixed, "stage2": fixed, "gpt": cfg.seed, "sample": cfg.sample.seed, "judge": fixed}


GENERATOR = Generator(nodes, seeds, model_seeds=("gpt", "sample"), model_role="gpt", label="DiGIT")
