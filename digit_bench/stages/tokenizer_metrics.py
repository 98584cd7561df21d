"""Stage: tokenizer metrics, a results row of their own (paper Table 1 and Fig. 4a's Acc@OL).

- codebook usage, perplexity and dead codes of the test tokens;
- stability: Gaussian pixel noise at each SNR (dB) on held-out test images -> fraction of tokens that change and
  cosine similarity of the pre-quantisation features (definition in tokenizers/stability.py);
- K-Means only: seed agreement (adjusted Rand index between the assignments of this codebook and of the
  `reseeded_centroids` parent, a cluster artifact fitted with seed + 1 on the same features; absent for imported
  centroids), Acc@OL, the linear probe of the backbone's own mean-pooled features, and kNN@OL, DINO's weighted kNN
  (k = 20, T = 0.07, cosine) on the same features: an encoder-quality axis with no fitted parameters.
Works for K-Means tokens (parents: tokens, centroids, [reseeded_centroids], [ssl]; the backbone config is this
stage's own input) and VQGAN tokens (parents: tokens, vqgan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, ProbeConfig, StabilityConfig
from digit_bench.data import load_split
from digit_bench.loaders import device_info, load_backbone, load_vqgan, save_json
from digit_bench.tokenizers.encoders import kmeans_encoder, vqgan_encoder

VERSION = 4
KIND = "infer"  # one task
RESUMABLE = False


KNN_BANK = 10_000  # train rows in the kNN bank at most (seeded), so memory does not grow with the data set
KNN_CHUNK = 4_096  # test rows per search


def knn_top1(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Weighted kNN top-1 (%) of test rows against a seeded bank of at most KNN_BANK train rows, chunk by chunk;
    features (N, D) may be float16 memory maps."""
    from digit_bench.ssl import knn_accuracy

    bank = np.sort(np.random.default_rng(0).permutation(len(train))[:KNN_BANK])
    bank_feats, bank_labels = np.asarray(train[bank], np.float32), train_labels[bank]  # (M, D), (M,)
    correct = 0.0
    for start in range(0, len(test), KNN_CHUNK):
        y = test_labels[start:start + KNN_CHUNK]
        correct += len(y) * knn_accuracy(bank_feats, bank_labels, np.asarray(test[start:start + KNN_CHUNK]), y)
    return 100 * correct / len(test)


def seed_agreement(other: np.ndarray, backend: str, spherical: bool, images: np.ndarray, encode) -> float:
    """Adjusted Rand index of test-patch assignments under this codebook and the centroids `other` (K, D)."""
    from digit_bench.tokenizers.kmeans import adjusted_rand, assign

    feats, tokens = encode(torch.from_numpy(images))  # (B, T, D), (B, T)
    flat = feats.reshape(-1, feats.shape[-1]).numpy()  # (B*T, D)
    return float(adjusted_rand(tokens.flatten().numpy(), assign(flat, other, backend=backend, spherical=spherical)))


@dataclass(frozen=True)
class Cfg:
    """Parents: tokens and either vqgan, or centroids + [reseeded_centroids] + [ssl]."""

    stability: StabilityConfig
    data: DataConfig
    probe: ProbeConfig  # Acc@OL's probe settings (K-Means tokens)
    backbone: Optional[dict] = None  # K-Means tokens: config.BackboneConfig fields but batch_size; VQ tokens: None


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.tokenizers.kmeans import codebook_stats
    from digit_bench.tokenizers.stability import stability

    tok = parents["tokens"]
    meta = tok.manifest
    st = cfg.stability
    test = load_split(cfg.data, "test")
    pick = np.sort(np.random.default_rng(st.seed).choice(len(test), min(st.num_images, len(test)), replace=False))
    images = test.images[pick]  # (n, H, W, 3) uint8
    row = codebook_stats(np.load(tok / "tokens_test.npy", mmap_mode="r")[0], meta["vocab_size"])
    if "vqgan" in parents:
        encode = vqgan_encoder(load_vqgan(parents["vqgan"]))
    else:
        from digit_bench.eval.linear_probe import train_linear_probes

        centroids = np.load(parents["centroids"] / "centroids.npy")
        backend, spherical = parents["centroids"].manifest["backend"], parents["centroids"].manifest["spherical"]
        encode = kmeans_encoder(load_backbone(cfg.backbone, parents), centroids, backend, spherical)
        if "reseeded_centroids" in parents:
            row["kmeans_seed_ari"] = seed_agreement(np.load(parents["reseeded_centroids"] / "centroids.npy"), backend,
                                                    spherical, images, encode)
        pc = cfg.probe
        # float16 pooled features read from disk in the probe's chunks (copy-on-write maps: never written back)
        ol = train_linear_probes([torch.from_numpy(np.load(tok / "pooled_train.npy", mmap_mode="c"))],
                                 torch.from_numpy(np.load(tok / "labels_train.npy")),
                                 [torch.from_numpy(np.load(tok / "pooled_test.npy", mmap_mode="c"))],
                                 torch.from_numpy(np.load(tok / "labels_test.npy")),
                                 l2s=list(pc.l2s), max_iter=pc.max_iter, holdout_fraction=pc.holdout_fraction,
                                 seed=0, num_classes=meta["num_classes"])
        row["acc_ol"] = ol["probe_top1"]
        row["knn_ol"] = knn_top1(np.load(tok / "pooled_train.npy", mmap_mode="r"), np.load(tok / "labels_train.npy"),
                                 np.load(tok / "pooled_test.npy", mmap_mode="r"), np.load(tok / "labels_test.npy"))
    row.update(stability(encode, images, list(st.snrs_db), st.seed))
    save_json(out / "metrics.json", row)
    return {"num_images": len(images), **device_info()}
