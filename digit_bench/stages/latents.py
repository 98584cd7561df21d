"""Stage: VAE latents of the train split (posterior means x scaling factor), cached for diffusion training.
Output: `latents.npy` float32 (N, C, h, w), `labels.npy`; the scaling factor is in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, build
from digit_bench.data import load_split
from digit_bench.stages.common import device_info
from digit_bench.stages.vae import load_vae_artifact

VERSION = 1
RESUMABLE = False


def compute(cfg: dict, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.ldm import encode_latents

    train = load_split(build(DataConfig, cfg["data"]), "train")
    with torch.no_grad():
        latents, factor = encode_latents(load_vae_artifact(parents["vae"]), train.images.all(), batch_size=256)
    np.save(out / "latents.npy", latents)
    np.save(out / "labels.npy", train.labels)
    return {"shape": list(latents.shape), "scaling_factor": factor, "num_classes": train.num_classes, **device_info()}
