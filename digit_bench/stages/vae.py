"""Stage: the LDM baseline's VAE (diffusers AutoencoderKL), trained on the train split or loaded from a local folder
(paper profile: sd-vae-ft-ema, as DiT uses). Output: a diffusers folder `vae/` (trained), or the loaded folder's
absolute path in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, LDMConfig, build
from digit_bench.data import load_split
from digit_bench.loaders import device_info

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


@dataclass(frozen=True)
class Cfg:
    data: DataConfig
    ldm: dict  # the LDMConfig fields of the VAE (generators.ldm.VAE_FIELDS)
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.ldm import load_vae, train_vae

    lcfg = build(LDMConfig, cfg.ldm)
    if lcfg.vae_weights:
        vae = load_vae(lcfg.vae_weights)
        return {"vae_folder": str(Path(lcfg.vae_weights).resolve()), "params": sum(p.numel() for p in vae.parameters())}
    train = load_split(cfg.data, "train")
    _, stats = train_vae(train.images, lcfg, out, cfg.seed)  # batches decoded as drawn
    return {**stats, "vae_folder": "vae", **device_info()}
