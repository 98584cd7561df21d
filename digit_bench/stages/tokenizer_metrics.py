"""Stage: tokenizer metrics, a results row of their own (paper Table 1 and Fig. 4a's Acc@OL).

- codebook usage, perplexity and dead codes of the test tokens;
- stability: Gaussian pixel noise at each SNR (dB) on held-out test images -> fraction of tokens that change and
  cosine similarity of the pre-quantisation features (definition in tokenizers/stability.py);
- K-Means only: seed agreement (adjusted Rand index between the assignments of this codebook and one fitted with
  seed + 1 on the same sample of features) and Acc@OL, the linear probe of the backbone's own mean-pooled features.
Works for K-Means tokens (parents: tokens, centroids, features, backbone) and VQGAN tokens (parents: tokens, vqgan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, build
from digit_bench.data import load_split
from digit_bench.stages.common import backbone_from, device, device_info, save_json

VERSION = 2
RESUMABLE = False


def kmeans_encoder(backbone, centroids: np.ndarray, backend: str, spherical: bool):
    """encode(images) -> (features (B, T, D), tokens (B, T)) for the stability metric."""
    from digit_bench.tokenizers.kmeans import assign

    backbone = backbone.to(device()).eval()

    @torch.no_grad()
    def encode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = backbone(images.to(device())).float().cpu()  # (B, T, D)
        ids = assign(feats.reshape(-1, feats.shape[-1]).numpy(), centroids, backend=backend, spherical=spherical)
        return feats, torch.from_numpy(ids.reshape(feats.shape[:2]))  # (B, T, D), (B, T)

    return encode


def vqgan_encoder(vqgan):
    vqgan = vqgan.to(device()).eval()

    @torch.no_grad()
    def encode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255 if images.dtype == torch.uint8 else images  # (B, 3, H, W)
        z = vqgan.encode_features(x.to(device()))  # (B, C, h, w)
        _, idx, _ = vqgan.encode(x.to(device()))  # (B, h, w)
        return z.flatten(2).transpose(1, 2).cpu(), idx.flatten(1).cpu()  # (B, h*w, C), (B, h*w)

    return encode


def seed_agreement(features: Artifact, centroids: np.ndarray, cfg: dict, images: np.ndarray, encode) -> float:
    """Adjusted Rand index of test-patch assignments under this codebook and one fitted with seed + 1."""
    from digit_bench.stages.cluster import features_to_centroids
    from digit_bench.tokenizers.kmeans import adjusted_rand, assign

    other, _ = features_to_centroids(np.load(features / "feats.npy", mmap_mode="r"), {**cfg, "seed": cfg["seed"] + 1})
    feats, tokens = encode(torch.from_numpy(images))  # (B, T, D), (B, T)
    flat = feats.reshape(-1, feats.shape[-1]).numpy()
    return float(adjusted_rand(tokens.flatten().numpy(), assign(flat, other, backend=cfg["backend"], spherical=cfg["spherical"])))


def compute(cfg: dict, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.tokenizers.kmeans import codebook_stats
    from digit_bench.tokenizers.stability import stability

    tok = parents["tokens"]
    meta = tok.manifest
    st = cfg["stability"]
    test = load_split(build(DataConfig, cfg["data"]), "test")
    pick = np.sort(np.random.default_rng(st["seed"]).choice(len(test), min(st["num_images"], len(test)), replace=False))
    images = test.images[pick]  # (n, H, W, 3) uint8
    row = codebook_stats(np.load(tok / "tokens_test.npy", mmap_mode="r")[0], meta["vocab_size"])
    if "vqgan" in parents:
        from digit_bench.stages.vqgan import load_vqgan

        encode = vqgan_encoder(load_vqgan(parents["vqgan"]))
    else:
        from digit_bench.eval.linear_probe import train_linear_probes

        centroids = np.load(parents["centroids"] / "centroids.npy")
        kcfg = parents["centroids"].manifest["config"]
        encode = kmeans_encoder(backbone_from(parents["features"].manifest["config"], parents), centroids,
                                kcfg["backend"], kcfg["spherical"])
        if "niter" in kcfg:  # fit here (imported centroids have no K-Means settings to refit with)
            row["kmeans_seed_ari"] = seed_agreement(parents["features"], centroids, kcfg, images, encode)
        pc = cfg["probe"]
        # float16 pooled features read from disk in the probe's chunks (copy-on-write maps: never written back)
        ol = train_linear_probes([torch.from_numpy(np.load(tok / "pooled_train.npy", mmap_mode="c"))],
                                 torch.from_numpy(np.load(tok / "labels_train.npy")),
                                 [torch.from_numpy(np.load(tok / "pooled_test.npy", mmap_mode="c"))],
                                 torch.from_numpy(np.load(tok / "labels_test.npy")),
                                 l2s=pc["l2s"], max_iter=pc["max_iter"], holdout_fraction=pc["holdout_fraction"],
                                 seed=0, num_classes=meta["num_classes"])
        row["acc_ol"] = ol["probe_top1"]
    row.update(stability(encode, images, st["snrs_db"], st["seed"]))
    save_json(out / "metrics.json", row)
    return {"num_images": len(images), **device_info()}
