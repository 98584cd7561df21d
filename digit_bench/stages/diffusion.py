"""Stage: the LDM baseline's denoiser (diffusers UNet2DModel or DiT), DDPM-trained on cached latents with label
dropout (classifier-free guidance) and EMA, through the shared training loop (resume, DDP, AMP, checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.config import LDMConfig
from digit_bench.loaders import device_info

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


@dataclass(frozen=True)
class Cfg:
    """Parent: latents."""

    ldm: LDMConfig
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.ldm import train_ldm

    lat = parents["latents"]
    latents = np.load(lat / "latents.npy", mmap_mode="r")  # (N, C, h, w)
    _, stats = train_ldm(latents, np.load(lat / "labels.npy"), cfg.ldm, out, cfg.seed,
                         lat.manifest["num_classes"])
    return {**stats, **device_info()}
