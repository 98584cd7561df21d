"""Stage: the VQGAN (reconstructive tokenizer and DiGIT's pixel renderer), trained here or loaded from a file.

CPU profiles train one on the dataset's train split (L1/L2 + patch-GAN after a warm-up, LPIPS when its weights
exist). The paper profile loads MAGE's `vqgan_jax_strongaug.ckpt` (taming-format state dict, MaskGIT layout) with a
strict key map. Output: `vqgan.json` (config, resolution, arch, weight file) and, when trained, `vqgan.pt`.
Reconstruction PSNR and codebook usage on val images go to the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, VQGANConfig, to_dict
from digit_bench.data import load_split
from digit_bench.loaders import device, device_info, save_json

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True
HELD_IMAGES = 256  # val images for reconstruction statistics


@dataclass(frozen=True)
class Cfg:
    data: DataConfig
    vqgan: VQGANConfig
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.vqgan import VQGAN, load_taming_checkpoint, reconstruction_metrics

    vcfg, data = cfg.vqgan, cfg.data
    held = load_split(data, "val").images[:HELD_IMAGES]
    if vcfg.weights:
        model = VQGAN(vcfg, data.image_size, arch=vcfg.arch)
        load_taming_checkpoint(model, vcfg.weights)
        stats = {**reconstruction_metrics(model.to(device()).eval(), held), "params": sum(p.numel() for p in model.parameters())}
    else:
        from digit_bench.models.vqgan import train_vqgan

        train = load_split(data, "train").images  # batches decoded as drawn: no split held in memory
        stats = train_vqgan(train, vcfg, out, cfg.seed, held_images=held, arch=vcfg.arch)
    save_json(out / "vqgan.json", {"vqgan": to_dict(vcfg), "resolution": data.image_size, "arch": vcfg.arch,
                                   "external": bool(vcfg.weights), "weights": vcfg.weights or "vqgan.pt"})
    return {**stats, "grid": data.image_size // 2 ** (len(vcfg.ch_mult) - 1), **device_info()}
