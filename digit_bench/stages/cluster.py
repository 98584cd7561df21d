"""Stage `features_to_centroids`: K-Means on patch features (faiss by default, as the paper's released code).

The paper fits K=8192 with faiss defaults, whose `max_points_per_centroid=256` subsamples the 33M dumped vectors
to 2.1M. We draw that subsample ourselves (seeded, before converting to float32) so memory stays at k*256*D floats
whatever the dump size, and record how many points were used in `fit.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.loaders import device, device_info, save_json

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """The tokenizer fields of the fit (config.TokenizerConfig); parent: features (extract)."""

    k: int
    niter: int
    backend: str
    spherical: bool
    max_points_per_centroid: int
    init: str
    seed: int


def features_to_centroids(feats: np.ndarray, cfg: Cfg) -> tuple[np.ndarray, dict]:
    """Centroids float32 (K, D) and fit statistics from float16 features (N, T, D)."""
    from digit_bench.tokenizers.kmeans import fit_kmeans

    flat = feats.reshape(-1, feats.shape[-1])  # (N*T, D) view of the memmap
    cap = cfg.k * cfg.max_points_per_centroid
    rows = np.arange(len(flat))
    if len(flat) > cap:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(len(flat), cap, replace=False))
    x = np.ascontiguousarray(flat[rows], dtype=np.float32)  # (P, D)
    centroids, stats = fit_kmeans(x, k=cfg.k, niter=cfg.niter, seed=cfg.seed, backend=cfg.backend,
                                  spherical=cfg.spherical, max_points_per_centroid=cfg.max_points_per_centroid,
                                  init=cfg.init, device=str(device()))
    return centroids, {**stats, "points_available": len(flat), "points_sampled": len(rows)}


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    feats = np.load(parents["features"] / "feats.npy", mmap_mode="r")  # (N, T, D)
    centroids, stats = features_to_centroids(feats, cfg)
    np.save(out / "centroids.npy", centroids)
    save_json(out / "fit.json", stats)
    # backend/spherical: how tokens are assigned to these centroids (the tokenize stage reads them from here)
    return {"shape": list(centroids.shape), "k": cfg.k, "backend": cfg.backend, "spherical": cfg.spherical, "points_used": stats.get("points_used", len(centroids)),
            **device_info()}
