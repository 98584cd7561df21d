"""Stage `images_to_features`: patch features of a seeded fraction of one split, through a frozen backbone.

Output: `feats.npy` float16 (N, T, D) written through `np.lib.format.open_memmap` and `index.npy` (which images of
the split). Long dumps resume: `progress.json` records how many images are written, so a preempted job continues
where it stopped. The backbone's own transform is used, the same one `tokenize` uses (the official DiGIT code dumps
with RandomCrop(224) + flip but tokenises with a 256->224 resize; we keep one transform, guarded by a parity test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, FeaturesConfig
from digit_bench.contracts import SPEED
from digit_bench.data import load_split
from digit_bench.loaders import device, device_info, load_backbone, load_json, save_json

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = True
CHUNK = 2048  # images between progress records


def kept_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the images kept: each with probability `fraction` (seeded), at least one."""
    keep = np.flatnonzero(np.random.default_rng(seed).random(n) < fraction)
    return keep if len(keep) else np.array([0])


def images_to_features(backbone, images, index: np.ndarray, out: Path, batch_size: int) -> np.ndarray:
    """Write float16 features of images[index] into out/feats.npy, resuming from out/progress.json."""
    from digit_bench.backbones import extract
    from digit_bench.data import iter_batches

    path, progress = out / "feats.npy", out / "progress.json"
    shape = (len(index), backbone.num_tokens, backbone.embed_dim)
    done = load_json(progress)["done"] if progress.is_file() and path.is_file() else 0
    feats = np.lib.format.open_memmap(path, mode="r+" if done else "w+", dtype=np.float16, shape=shape)  # (N, T, D)
    for start in range(done, len(index), CHUNK):
        stop = min(start + CHUNK, len(index))
        extract(backbone, iter_batches(images, batch_size, index[start:stop]), batch_size, device(),
                desc=f"features {start}/{len(index)}", out=feats[start:stop])
        feats.flush()
        save_json(progress, {"done": stop})
    return feats


@dataclass(frozen=True)
class Cfg:
    """Parent: [ssl] (a backbone trained here)."""

    data: DataConfig
    backbone: dict  # config.BackboneConfig fields but batch_size (a speed setting, below)
    features: FeaturesConfig
    batch_size: int = field(default=256, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    split = load_split(cfg.data, cfg.features.split)
    index = kept_indices(len(split), cfg.features.fraction, cfg.features.seed)
    backbone = load_backbone(cfg.backbone, parents)
    feats = images_to_features(backbone, split.images, index, out, cfg.batch_size)
    np.save(out / "index.npy", index)
    (out / "progress.json").unlink()
    return {"shape": list(feats.shape), "dtype": "float16", "num_images": len(index), "split_size": len(split),
            "grid": backbone.grid, "embed_dim": backbone.embed_dim, "skipped_files": split.skipped, **device_info()}
