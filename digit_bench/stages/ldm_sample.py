"""Stage: LDM samples -> uint8 image artifact. Any diffusers scheduler by name (DDIM by default), N steps, CFG
scale; sample i uses seed `sample_seed + i` (independent of batch size). Unconditional runs sample the null class,
so the LDM is compared with the unconditional GPTs; class-conditional runs get class-balanced labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.config import LDMConfig
from digit_bench.contracts import SPEED
from digit_bench.data import to_grey
from digit_bench.loaders import device, device_info, load_vae

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """Parents: diffusion, vae, latents."""

    ldm: LDMConfig
    num_samples: int
    sample_seed: int  # sample i uses seed sample_seed + i
    conditional: bool  # class-balanced labels, else the null class
    grey: bool  # grey data set: grey (R=G=B) images
    batch_size: int = field(default=256, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.grids import save_grid
    from digit_bench.models.ldm import load_denoiser, sample_ldm

    lcfg = cfg.ldm
    lat = parents["latents"].manifest
    num_classes, (_, channels, size, _) = lat["num_classes"], lat["shape"]
    model = load_denoiser(parents["diffusion"] / "ckpt.pt", lcfg, num_classes, channels, size).to(device())
    n = cfg.num_samples
    conditional = cfg.conditional
    labels = np.arange(n) % num_classes if conditional else np.full(n, num_classes)
    seeds = cfg.sample_seed + np.arange(n)
    images = sample_ldm(model, load_vae(parents["vae"]), lat["scaling_factor"], labels, seeds, lcfg, cfg.batch_size)  # (N, H, W, 3)
    if cfg.grey:
        images = to_grey(images)
    np.savez(out / "images.npz", images=images, labels=labels)
    save_grid(images[:64], out / "grid.png", labels[:64] if conditional else None)
    return {"shape": list(images.shape), "source": "ldm", "conditional": conditional, **device_info()}
