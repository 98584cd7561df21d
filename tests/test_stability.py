"""Stability metric (paper Table 1): the noise model, and token change / cosine similarity against SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digit_bench.backbones import extract, random_vit
from digit_bench.tokenizers.kmeans import assign, fit_kmeans
from digit_bench.tokenizers.stability import add_noise, realised_snr_db, snr_key, stability


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): random 4x4 colour fields upsampled, so patches have structure to lose."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 226, (n, 4, 4, 3)).astype(np.uint8)
    return small.repeat(size // 4, axis=1).repeat(size // 4, axis=2)


def test_add_noise_definition():
    x = np.full((4, 64, 64, 3), 128, np.uint8)
    x[1] = 100
    clean = add_noise(x, float("inf"), seed=0)
    assert clean.dtype == np.float32
    np.testing.assert_array_equal(clean, x.astype(np.float32) / 255)
    noisy = add_noise(x, 20.0, seed=0)
    p_signal = ((x.astype(np.float64) / 255) ** 2).mean(axis=(1, 2, 3))  # (4,)
    p_noise = ((noisy - clean) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(10 * np.log10(p_signal / p_noise), 20.0, atol=0.2)


@pytest.mark.parametrize("snr_db", [30, 20, 10, 1, 0.01])
def test_realised_snr_equals_the_label_on_black_background_images(snr_db):
    # Fashion-MNIST-like: a bright object on a black background, where clipping to [0, 1] would remove half the noise
    x = np.zeros((8, 32, 32, 3), np.uint8)
    x[:, 8:24, 10:22] = np.random.default_rng(0).integers(60, 256, (8, 16, 12, 1), dtype=np.uint8)
    realised = realised_snr_db(x, add_noise(x, snr_db, seed=3))  # (8,)
    np.testing.assert_allclose(realised, snr_db, atol=0.2)
    clipped = realised_snr_db(x, np.clip(add_noise(x, snr_db, seed=3), 0, 1))
    assert clipped.min() > snr_db + 1  # what the clipped noise of the earlier version realised


def test_add_noise_is_seeded_and_shares_z_across_snrs():
    x = np.full((2, 8, 8, 3), 120, np.uint8)
    a, b, c = add_noise(x, 10, seed=1), add_noise(x, 10, seed=1), add_noise(x, 10, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    clean = x.astype(np.float32) / 255
    z10 = (add_noise(x, 10, seed=(1, 0)) - clean) / np.sqrt(10 ** -1.0)
    z20 = (add_noise(x, 20, seed=(1, 0)) - clean) / np.sqrt(10 ** -2.0)
    np.testing.assert_allclose(z10, z20, atol=1e-4)


def test_snr_key():
    assert [snr_key(s) for s in (30, 20.0, 0.01, float("inf"))] == ["snr30", "snr20", "snr0.01", "snrinf"]


def kmeans_encode(images: np.ndarray):
    """A K-Means-on-backbone tokenizer fitted on `images`: encode([0, 1] floats) -> (features, tokens)."""
    backbone = random_vit(layer=-3, patch_size=4, embed_dim=32, depth=4, num_heads=2, init_seed=0)
    feats = extract(backbone, images, batch_size=16, device="cpu").reshape(-1, 32).astype(np.float32)
    centroids, _ = fit_kmeans(feats, k=32, niter=10, seed=0, backend="faiss")

    @torch.no_grad()
    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = backbone(x)  # (B, T, D)
        tokens = assign(f.reshape(-1, 32).numpy(), centroids, "faiss")  # (B*T,)
        return f, torch.from_numpy(tokens).view(f.shape[:2])  # (B, T, D), (B, T)

    return encode


def test_stability_is_zero_without_noise_and_grows_as_snr_falls():
    images = smooth_images(24)
    snrs = [float("inf"), 30, 20, 10, 0, -10]
    out = stability(kmeans_encode(images), images, snrs, seed=0, batch_size=10)
    assert set(out) == {f"{m}_{snr_key(s)}" for m in ("token_change", "cos_sim") for s in snrs}
    change = [out[f"token_change_{snr_key(s)}"] for s in snrs]
    cos = [out[f"cos_sim_{snr_key(s)}"] for s in snrs]
    assert change[0] == 0.0 and cos[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a <= b for a, b in zip(change, change[1:])), change
    assert all(a >= b for a, b in zip(cos, cos[1:])), cos
    assert change[-1] > change[1] + 0.2 and cos[-1] < cos[1] - 0.05
