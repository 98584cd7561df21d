"""Latent-space stability under pixel noise (paper Table 1): how many tokens change, how far the features move.

Add Gaussian noise to the image pixels at a given SNR, re-tokenise, and compare with the clean tokenisation:
- `token_change_snr{X}`: fraction of token positions whose index changes (lower = more stable);
- `cos_sim_snr{X}`: mean per-position cosine similarity of the pre-quantisation features (higher = more stable).

The paper gives neither its noise model nor its SNR unit (docs/paper.md §6); this harness uses the assumption written
there: SNR in dB, σ² = P_signal / 10^(SNR/10) with P_signal the mean of x² per image in [0, 1]. The noisy image
is x + σ·z, not clipped to [0, 1]: clipping removes the noise wherever the image is black (most of a Fashion-MNIST
image) and made the realised SNR about 2 dB higher than its label. z is scaled per image to mean square exactly
1, so the realised SNR of every image equals the label (`realised_snr_db`; tests/test_stability.py checks it).
The encoders normalise pixels linearly, so values outside [0, 1] are fine. Clean and noisy images go to the
tokenizer as float, never re-quantised to uint8, and SNR = ∞ gives exactly zero change. The same tokenizer-agnostic
`encode` serves K-Means-on-backbone and VQGAN tokens (the encoders are built in `stages/tokenizer_metrics.py`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def add_noise(images: np.ndarray, snr_db: float, seed: int | Sequence[int]) -> np.ndarray:
    """Gaussian pixel noise at exactly `snr_db`: uint8 (N, H, W, 3) -> float32 (N, H, W, 3), not clipped.

    x = images / 255; per image P_signal = mean(x²) and σ² = P_signal / 10^(snr_db / 10); the result is x + σ·z
    with z ~ N(0, 1) drawn from `np.random.default_rng(seed)` and scaled per image to mean(z²) = 1, so one seed
    gives the same z at every SNR (only its scale changes). snr_db = inf gives x unchanged.
    """
    x = images.astype(np.float32) / 255  # (N, H, W, 3)
    p_signal = (x**2).mean(axis=(1, 2, 3), keepdims=True)  # (N, 1, 1, 1)
    sigma = np.sqrt(p_signal / 10 ** (snr_db / 10))  # (N, 1, 1, 1)
    z = np.random.default_rng(seed).standard_normal(x.shape, dtype=np.float32)  # (N, H, W, 3)
    z /= np.sqrt((z.astype(np.float64) ** 2).mean(axis=(1, 2, 3), keepdims=True)).astype(np.float32)
    return x + sigma * z


def realised_snr_db(images: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Per image 10 log10(mean(x²) / mean((noisy - x)²)) of uint8 `images` and their float [0, 1]-scale `noisy`."""
    x = images.astype(np.float64) / 255  # (N, H, W, 3)
    p_noise = ((noisy - x) ** 2).mean(axis=(1, 2, 3))  # (N,)
    return 10 * np.log10((x**2).mean(axis=(1, 2, 3)) / p_noise)


def snr_key(snr_db: float) -> str:
    """Metric-name suffix of an SNR: 20 -> 'snr20', 0.01 -> 'snr0.01'."""
    return f"snr{snr_db:g}"


@torch.no_grad()
def stability(encode: Encode, images: np.ndarray, snrs_db: Sequence[float], seed: int,
              batch_size: int = 64) -> dict[str, float]:
    """Token change and feature cosine similarity between clean and noisy images, per SNR.

    Args:
        encode: float (B, 3, H, W) in [0, 1] -> (features (B, T, D), tokens (B, T)) on any device; the features
            are the continuous vectors that get quantised.
        images: uint8 (N, H, W, 3) held-out images.
        snrs_db: SNRs in dB (paper: 30, 25, 20, 15, 10, 5, 1, 0.01).
        seed: noise seed; batch b draws its noise with seed (seed, b's first index), shared by all SNRs.
        batch_size: images per encode call.

    Returns:
        {"token_change_snr{X}": ..., "cos_sim_snr{X}": ...} for each SNR X, averaged over images and positions.
    """
    change = {s: 0.0 for s in snrs_db}
    cos = {s: 0.0 for s in snrs_db}
    positions = 0
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size])  # (B, H, W, 3) uint8
        clean_feats, clean_tokens = encode(_to_tensor(batch.astype(np.float32) / 255))  # (B, T, D), (B, T)
        positions += clean_tokens.numel()
        for s in snrs_db:
            feats, tokens = encode(_to_tensor(add_noise(batch, s, (seed, start))))  # (B, T, D), (B, T)
            change[s] += (tokens != clean_tokens).sum().item()
            cos[s] += F.cosine_similarity(feats.float(), clean_feats.float(), dim=-1).sum().item()
    out = {}
    for s in snrs_db:
        out[f"token_change_{snr_key(s)}"] = change[s] / positions
        out[f"cos_sim_{snr_key(s)}"] = cos[s] / positions
    return out


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (B, H, W, 3) -> (B, 3, H, W)
