"""Stage `images_to_tokens`: every image of train/val/test -> nearest-centroid ids of its backbone patch features.

Output per split S: `tokens_S.npy` uint16 (V, N, T) for the V views (identity, horizontal flip, ...), `labels_S.npy`
int64 (N,), and `pooled_S.npy` float16 (N, D), the mean-pooled identity-view features (the backbone's own linear
probe, the paper's Acc@OL). The manifest gives vocab size, grid and sequence length; downstream stages read them from
here, never from a repeated flag. Same transform as the feature dump (the backbone's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig
from digit_bench.contracts import SPEED
from digit_bench.data import load_split
from digit_bench.errors import UserError
from digit_bench.loaders import TOKEN_SPLITS, device, device_info, load_backbone

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@torch.no_grad()
def images_to_tokens(backbone, centroids: np.ndarray, images, views: list[str], batch_size: int,
                     backend: str = "faiss", spherical: bool = False, desc: str = "tokens",
                     out: Path | None = None, split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """uint16 tokens (V, N, T) and float16 pooled identity features (N, D) of uint8 images (N, H, W, 3).

    With `out`, both are memory-mapped files `out/tokens_<split>.npy` and `out/pooled_<split>.npy` filled batch by
    batch (images streamed by data.iter_batches), so memory does not grow with the number of images.
    """
    from digit_bench.data import iter_batches
    from digit_bench.tokenizers.kmeans import assign

    dev = device()
    backbone = backbone.to(dev).eval()
    n, T, D = len(images), backbone.num_tokens, backbone.embed_dim
    if out is None:
        tokens = np.empty((len(views), n, T), np.uint16)  # (V, N, T)
        pooled = np.empty((n, D), np.float16)  # (N, D)
    else:
        tokens = np.lib.format.open_memmap(out / f"tokens_{split}.npy", "w+", np.uint16, (len(views), n, T))  # (V, N, T)
        pooled = np.lib.format.open_memmap(out / f"pooled_{split}.npy", "w+", np.float16, (n, D))  # (N, D)
    for v, view in enumerate(views):  # each view decoded on its own: crop<i> views crop the uncropped image
        start = 0
        for batch in tqdm(iter_batches(images, batch_size, view=view), desc=f"{desc} {view}", unit="batch",
                          total=-(-n // batch_size)):
            x = torch.from_numpy(batch).to(dev)  # (B, H, W, 3) uint8
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                feats = backbone(x).float()  # (B, T, D)
            ids = assign(feats.reshape(-1, D).cpu().numpy(), centroids, backend=backend, spherical=spherical)  # (B*T,)
            tokens[v, start:start + len(batch)] = ids.reshape(len(batch), T)
            if view == "identity":
                pooled[start:start + len(batch)] = feats.mean(1).cpu().numpy()  # (B, D)
            start += len(batch)
    if out is not None:
        tokens.flush(), pooled.flush()
    return tokens, pooled


@dataclass(frozen=True)
class Cfg:
    """Parents: centroids (cluster or imported), [ssl]."""

    data: DataConfig
    backbone: dict  # config.BackboneConfig fields but batch_size (a speed setting, below)
    views: tuple[str, ...]
    spherical: bool
    batch_size: int = field(default=256, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    centroids = np.load(parents["centroids"] / "centroids.npy")  # (K, D)
    backbone = load_backbone(cfg.backbone, parents)
    if centroids.shape[1] != backbone.embed_dim:
        raise UserError(f"centroids {parents['centroids'].id} are {centroids.shape[1]}-d but backbone "
                        f"{cfg.backbone['name']} gives {backbone.embed_dim}-d features; use centroids fit on this "
                        f"backbone's features (the released km_8k.npy: dinov2_vitb14_reg4, 768-d)")
    data = cfg.data
    backend = parents["centroids"].manifest["backend"]
    counts = {}
    for split in TOKEN_SPLITS:
        part = load_split(data, split)
        images_to_tokens(backbone, centroids, part.images, list(cfg.views), cfg.batch_size, backend=backend,
                         spherical=cfg.spherical, desc=f"tokens {split}", out=out, split=split)
        np.save(out / f"labels_{split}.npy", part.labels)
        counts[split] = len(part)
    return {"tokenizer": "kmeans", "vocab_size": len(centroids), "grid": backbone.grid, "seq_len": backbone.num_tokens,
            "views": list(cfg.views), "counts": counts, "num_classes": part.num_classes, "embed_dim": backbone.embed_dim,
            "image_size": data.image_size, **device_info()}
