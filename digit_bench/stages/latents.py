"""Stage: VAE latents of the train split (posterior means x scaling factor), cached for diffusion training.
Output: `latents.npy` float32 (N, C, h, w), written as a memory map while the images stream through the VAE (memory
does not grow with N), `labels.npy`; the scaling factor is in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig
from digit_bench.data import load_split
from digit_bench.loaders import device_info, load_vae

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False
BATCH = 256  # images per VAE forward


@dataclass(frozen=True)
class Cfg:
    """Parent: vae."""

    data: DataConfig


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.data import iter_batches
    from digit_bench.models.ldm import to_model_range

    train = load_split(cfg.data, "train")
    vae = load_vae(parents["vae"]).eval()
    dev = next(vae.parameters()).device
    latents, start, total, total_sq = None, 0, 0.0, 0.0
    with torch.no_grad():
        for batch in iter_batches(train.images, BATCH):  # (b, H, W, 3) uint8, streamed
            z = vae.encode(to_model_range(torch.from_numpy(batch).to(dev))).latent_dist.mean.float().cpu()  # (b, C, h, w)
            if latents is None:
                latents = np.lib.format.open_memmap(out / "latents.npy", "w+", np.float32, (len(train), *z.shape[1:]))
            latents[start:start + len(z)] = z.numpy()
            zd = z.double()
            total, total_sq, start = total + zd.sum().item(), total_sq + zd.square().sum().item(), start + len(z)
    factor = vae.config.scaling_factor
    if factor is None:  # LDM's scale_by_std: 1 / std of these latents (float64 sums, as torch.std accumulates)
        m = latents.size
        factor = 1.0 / float(np.float32(np.sqrt((total_sq - total * total / m) / (m - 1))))
    for s in range(0, len(latents), BATCH):
        latents[s:s + BATCH] *= np.float32(factor)
    latents.flush()
    np.save(out / "labels.npy", train.labels)
    return {"shape": list(latents.shape), "scaling_factor": float(factor), "num_classes": train.num_classes, **device_info()}
