"""Baseline: MaskGIT over VQGAN tokens (the paper's non-autoregressive MIM family; Table 3's MaskGIT row), on the
same VQGAN and tokens as the VQGAN-AR baseline; samples decoded by the VQGAN.

Roles: vqgan vq_tokens tokenizer_metrics maskgit samples images ceiling_images ("VQ only") ceiling_metrics metrics
real_metrics. The VQGAN, its tokens, the tokenizer metrics and the "VQ only" ceiling are the very artifacts of
vqgan_ar (same nodes, same ids), so a sweep with both computes them once.
"""

from __future__ import annotations

import dataclasses

from digit_bench.config import ExperimentConfig, MaskGITVQConfig
from digit_bench.engine.dag import Node
from digit_bench.generators.common import Generator, grey, instrument_seed, judged, vqgan_nodes
from digit_bench.generators.vqgan_ar import nodes as vqgan_ar_nodes
from digit_bench.stages import maskgit_vq, maskgit_vq_sample, render

DECODING = ("steps", "choice_temperature", "temperature")  # maskgit_vq fields only sampling reads


def nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    shared = vqgan_ar_nodes(cfg)  # the VQ tokenizer's own nodes: its metrics and the "VQ only" ceiling
    out = {**vqgan_nodes(cfg), **{r: shared[r] for r in ("tokenizer_metrics", "ceiling_images", "ceiling_metrics")}}
    mv, defaults = cfg.maskgit_vq, MaskGITVQConfig()
    trained = dataclasses.replace(mv, **{k: getattr(defaults, k) for k in DECODING})  # decoding keys the samples only
    model = Node("maskgit_vq", f"maskgit-{mv.size}-vq{cfg.vqgan.n_embed}-s{cfg.seed}",
                 maskgit_vq.Cfg(model=trained, conditional=cfg.gpt.class_conditional, seed=cfg.seed),
                 {"tokens": out["vq_tokens"]})
    samples = Node("maskgit_vq_sample", f"maskgit-{mv.size}-s{cfg.seed}",
                   maskgit_vq_sample.Cfg(**{k: getattr(mv, k) for k in DECODING}, num_samples=cfg.sample.num_samples,
                                         seed=cfg.sample.seed, batch_size=cfg.sample.batch_size), {"model": model})
    images = Node("render", f"maskgit_vq-s{cfg.seed}",
                  render.Cfg(source="samples", grey=grey(cfg), batch_size=cfg.sample.batch_size),
                  {"samples": samples, "vqgan": out["vqgan"]})
    return judged(cfg, {**out, "maskgit": model, "samples": samples, "images": images}, "maskgit_vq")


def seeds(cfg: ExperimentConfig) -> dict[str, int]:
    fixed = instrument_seed(cfg)
    return {"vqgan": fixed, "maskgit": cfg.seed, "sample": cfg.sample.seed, "judge": fixed}


GENERATOR = Generator(nodes, seeds, model_seeds=("maskgit", "sample"), model_role="maskgit", label="MaskGIT-VQ")
