"""Stage: a tiny self-supervised ViT trained here (DINO, MAE) or a supervised one, for the CPU profiles.

No pretrained weights can be downloaded on many first machines, so the tiny profile trains its own backbones on the
dataset's train split (digit_bench/ssl.py). The kNN and linear accuracy on val images (the paper's Acc@OL) go to
the manifest; `backbone.pt` is what the `dino_tiny` / `mae_tiny` / `sup_tiny` backbones load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, SSLConfig
from digit_bench.data import load_split
from digit_bench.loaders import device_info

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


@dataclass(frozen=True)
class Cfg:
    method: str  # dino | moco | mae | sup
    data: DataConfig
    ssl: SSLConfig
    seed: int  # backbone.init_seed


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.ssl import pretrain

    train, val = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    stats = pretrain(cfg.method, train.images, train.labels, cfg.ssl, out, cfg.seed,
                     eval_images=val.images, eval_labels=val.labels)  # batches decoded as drawn
    return {**stats, "method": cfg.method, **device_info()}
