"""Baseline: the same GPT on VQGAN tokens (the paper's VQ-token GPT, §3.4); samples decoded by the VQGAN itself.

Roles: vqgan vq_tokens gpt samples [probe] tokenizer_metrics images ceiling_images ("VQ only": reconstructions)
ceiling_metrics metrics real_metrics.
"""

from __future__ import annotations

from digit_bench.config import ExperimentConfig
from digit_bench.engine.dag import Node
from digit_bench.generators.common import (acc_ol_probe, Generator, evaluate_node, grey, instrument_seed, judged, stage1_nodes,
                                           vqgan_nodes)
from digit_bench.stages import render, tokenizer_metrics


def nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    out = vqgan_nodes(cfg)
    label = f"vq{cfg.vqgan.n_embed}"
    out.update(stage1_nodes(cfg, out["vq_tokens"], label))
    out["tokenizer_metrics"] = Node("tokenizer_metrics", label,
                                    tokenizer_metrics.Cfg(stability=cfg.stability, data=cfg.data, probe=acc_ol_probe(cfg)),
                                    {"tokens": out["vq_tokens"], "vqgan": out["vqgan"]})
    out["images"] = Node("render", f"vqgan_ar-s{cfg.seed}",
                         render.Cfg(source="samples", grey=grey(cfg), batch_size=cfg.sample.batch_size),
                         {"samples": out["samples"], "vqgan": out["vqgan"]})
    out["ceiling_images"] = Node("render", "vq_recon",
                                 render.Cfg(source="reconstruction", split=cfg.eval.ceiling_split, grey=grey(cfg),
                                            batch_size=cfg.sample.batch_size),
                                 {"vqgan": out["vqgan"], "tokens": out["vq_tokens"]})
    out["ceiling_metrics"] = evaluate_node(cfg, out["ceiling_images"], "vq_only", instrument_seed(cfg), "vqgan")
    return judged(cfg, out, "vqgan_ar")


def seeds(cfg: ExperimentConfig) -> dict[str, int]:
    fixed = instrument_seed(cfg)
    return {"vqgan": fixed, "gpt": cfg.seed, "sample": cfg.sample.seed, "judge": fixed}


GENERATOR = Generator(nodes, seeds, model_seeds=("gpt", "sample"), model_role="gpt", label="VQGAN-AR")
