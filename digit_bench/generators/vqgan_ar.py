"""Baseline: the same GPT on VQGAN tokens (the paper's VQ-token GPT, §3.4); samples decoded by the VQGAN itself.

Roles: vqgan vq_tokens gpt samples [probe] tokenizer_metrics images ceiling_images ("VQ only": reconstructions)
ceiling_metrics metrics real_metrics.
"""

from __future__ import annotations

from digit_bench.config import ExperimentConfig, to_dict
from digit_bench.engine.dag import Node
from digit_bench.generators.common import (
    Generator,
    data_cfg,
    evaluate_node,
    instrument_seed,
    judged,
    pixels,
    stage1_nodes,
    vqgan_nodes,
)


def nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    out = vqgan_nodes(cfg)
    label = f"vq{cfg.vqgan.n_embed}"
    out.update(stage1_nodes(cfg, out["vq_tokens"], label))
    out["tokenizer_metrics"] = Node("tokenizer_metrics", label,
                                    {"stability": to_dict(cfg.stability), "data": data_cfg(cfg),
                                     "probe": to_dict(cfg.probe)},
                                    {"tokens": out["vq_tokens"], "vqgan": out["vqgan"]})
    speed = {"batch_size": cfg.sample.batch_size}
    out["images"] = Node("render", f"vqgan_ar-s{cfg.seed}", {"source": "samples", **pixels(cfg)},
                         {"samples": out["samples"], "vqgan": out["vqgan"]}, speed)
    out["ceiling_images"] = Node("render", "vq_recon",
                                 {"source": "reconstruction", "split": cfg.eval.ceiling_split, **pixels(cfg)},
                                 {"vqgan": out["vqgan"], "tokens": out["vq_tokens"]}, speed)
    out["ceiling_metrics"] = evaluate_node(cfg, out["ceiling_images"], "vq_only", instrument_seed(cfg), "vqgan")
    return judged(cfg, out, "vqgan_ar")


def seeds(cfg: ExperimentConfig) -> dict[str, int]:
    fixed = instrument_seed(cfg)
    return {"vqgan": fixed, "gpt": cfg.seed, "sample": cfg.sample.seed, "judge": fixed}


GENERATOR = Generator(nodes, seeds, model_seeds=("gpt", "sample"), model_role="gpt")
