"""A tokenizer as an encode function: uint8 or float images -> (features, token ids), for the stability metric,
Acc@OL and the paper-protocol probe, which tokenize images on the fly."""

from __future__ import annotations

import numpy as np
import torch

from digit_bench.loaders import device


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
