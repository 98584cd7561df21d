"""K-Means: assignment is the brute-force argmin, planted clusters come back, a seed fixes the codebook."""

from __future__ import annotations

import numpy as np
import pytest

from digit_bench.errors import UserError
from digit_bench.tokenizers.kmeans import adjusted_rand, assign, codebook_stats, fit_kmeans

BACKENDS = ["faiss", "torch"]


def planted(n: int = 3000, k: int = 8, d: int = 16, spread: float = 10.0, seed: int = 0):
    """n points around k well-separated Gaussian centres: (x float32 (n, d), labels (n,), centres (k, d))."""
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((k, d)) * spread).astype(np.float32)
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.standard_normal((n, d))).astype(np.float32), labels, centres


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spherical", [False, True])
def test_assign_is_brute_force_argmin(backend, spherical):
    rng = np.random.default_rng(1)
    x, c = rng.standard_normal((1000, 24), dtype=np.float32), rng.standard_normal((50, 24), dtype=np.float32)
    if spherical:
        xn, cn = x / np.linalg.norm(x, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
        want = (xn @ cn.T).argmax(1)
    else:
        want = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(1)
    before = x.copy()
    got = assign(x, c, backend, chunk=300, spherical=spherical)  # chunks of 300 rows: 4 blocks, the last partial
    np.testing.assert_array_equal(x, before)  # the caller's array is left alone
    assert got.dtype == np.int64 and got.shape == (1000,)
    np.testing.assert_array_equal(got, want)


def test_assign_reads_float16_memmaps_in_chunks(tmp_path):
    rng = np.random.default_rng(2)
    x = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(700, 16))
    x[:] = rng.standard_normal((700, 16))
    c = rng.standard_normal((10, 16), dtype=np.float32)
    np.testing.assert_array_equal(assign(x, c, "faiss", chunk=128), assign(np.asarray(x, np.float32), c, "torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_clusters_are_recovered(backend):
    x, labels, centres = planted()
    c, stats = fit_kmeans(x, k=8, niter=10, seed=0, backend=backend, init="kmeans++")
    assert adjusted_rand(assign(x, c, backend), labels) == pytest.approx(1.0)
    dist = np.linalg.norm(centres[:, None] - c[None], axis=-1)  # (8, 8) planted vs found
    assert dist.min(1).max() < 0.5 and sorted(dist.argmin(1)) == list(range(8))  # one centroid per centre, close
    assert stats["empty_clusters"] == 0 and stats["inertia"] == pytest.approx(16, rel=0.15)  # E||noise||² = d


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_init_overclustering_gives_pure_clusters(backend):
    """The paper's setting (faiss random init) with K above the number of modes: no cluster straddles two."""
    x, labels, _ = planted(n=4000, k=4)
    c, _ = fit_kmeans(x, k=32, niter=10, seed=0, backend=backend)
    tokens = assign(x, c, backend)
    for t in np.unique(tokens):
        assert len(np.unique(labels[tokens == t])) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_fixed_seed_gives_identical_centroids(backend, init):
    x, _, _ = planted(n=2000, k=16, spread=1.0)
    kw = dict(k=16, niter=5, backend=backend, init=init, max_points_per_centroid=100)  # 1600 of 2000 points
    a, sa = fit_kmeans(x, seed=3, **kw)
    b, sb = fit_kmeans(x, seed=3, **kw)
    other, _ = fit_kmeans(x, seed=4, **kw)
    np.testing.assert_array_equal(a, b)
    assert sa["obj"] == sb["obj"]
    assert not np.array_equal(a, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_stats(backend):
    x, _, _ = planted(n=3000, k=8)
    c, st = fit_kmeans(x, k=8, niter=4, seed=0, backend=backend, max_points_per_centroid=100, init="kmeans++")
    assert c.shape == (8, 16) and c.dtype == np.float32
    assert st["points_total"] == 3000 and st["points_used"] == 800
    assert 1 <= len(st["obj"]) <= 4  # faiss stops early once the objective stops falling (a fixed point)
    assert st["backend"] == backend and st["seed"] == 0
    assert st["obj"][-1] <= st["obj"][0]
    assert 1.0 <= st["imbalance_factor"] < 1.5 and st["size_max_over_mean"] >= 1.0 and st["size_cv"] >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_spherical_centroids_are_unit_vectors(backend):
    x, _, _ = planted(n=1500, k=6)
    before = x.copy()
    c, _ = fit_kmeans(x, k=6, niter=5, seed=0, backend=backend, spherical=True, init="kmeans++")
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-4)


def test_too_few_points_is_a_user_error():
    with pytest.raises(UserError, match="k=64"):
        fit_kmeans(np.zeros((10, 4), np.float32), k=64, niter=1, seed=0)


def test_codebook_stats_and_adjusted_rand():
    st = codebook_stats(np.array([[0, 0, 1, 1], [2, 2, 3, 3]]), k=8)
    assert st == {"codebook_usage": 0.5, "codebook_perplexity": pytest.approx(4.0), "dead_codes": 4}
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand(a, (a + 1) % 3) == pytest.approx(1.0)  # relabelling does not matter
    assert adjusted_rand(a, np.array([0, 1, 0, 1, 0, 1])) < 0.1
