"""Baseline: latent diffusion (a diffusers VAE, a UNet or DiT denoiser on its cached latents, a diffusers sampler).

Roles: vae latents diffusion images metrics real_metrics.
"""

from __future__ import annotations

from digit_bench.config import ExperimentConfig, to_dict
from digit_bench.engine.dag import Node
from digit_bench.generators.common import Generator, grey, instrument_seed, judged
from digit_bench.stages import ldm_sample
from digit_bench.stages import vae as vae_stage
from digit_bench.stages import diffusion as diffusion_stage
from digit_bench.stages import latents as latents_stage

VAE_FIELDS = ("vae_weights", "latent_channels", "vae_channels", "kl_weight", "vae_train")  # the ldm fields of the VAE


def nodes(cfg: ExperimentConfig) -> dict[str, Node]:
    ldm = to_dict(cfg.ldm)
    vae = Node("vae", f"vae-{cfg.data.name}{cfg.data.image_size}",
               vae_stage.Cfg(data=cfg.data, ldm={k: ldm[k] for k in VAE_FIELDS}, seed=instrument_seed(cfg)))
    latents = Node("latents", f"latents-{cfg.data.name}", latents_stage.Cfg(data=cfg.data), {"vae": vae})
    diffusion = Node("diffusion", f"{ldm['denoiser']}-s{cfg.seed}", diffusion_stage.Cfg(ldm=cfg.ldm, seed=cfg.seed),
                     {"latents": latents})
    images = Node("ldm_sample", f"{ldm['denoiser']}-s{cfg.seed}",
                  ldm_sample.Cfg(ldm=cfg.ldm, num_samples=cfg.sample.num_samples, sample_seed=cfg.sample.seed,
                                 conditional=cfg.gpt.class_conditional, grey=grey(cfg), batch_size=cfg.sample.batch_size),
                  {"diffusion": diffusion, "vae": vae, "latents": latents})
    return judged(cfg, {"vae": vae, "latents": latents, "diffusion": diffusion, "images": images}, "ldm")


def seeds(cfg: ExperimentConfig) -> dict[str, int]:
    fixed = instrument_seed(cfg)
    return {"vae": fixed, "ldm": cfg.seed, "sample": cfg.sample.seed, "judge": fixed}


GENERATOR = Generator(nodes, seeds, model_seeds=("ldm", "sample"), model_role="diffusion", label="LDM")
