"""K-Means codebooks on frozen backbone patch features, and nearest-centroid tokenisation (DiGIT stage 0).

The paper clusters with `faiss.Kmeans(d, K, niter=20)` and faiss defaults otherwise: L2, random init, seed 1234,
`max_points_per_centroid=256` (so at most 256·K training vectors) [DiGIT repo: preprocess/cluster_kmeans.py].
Tokens are the index of the nearest centroid by squared L2, `||f||² - 2 f·C + ||C||²` then argmin
[repo: fairseq_user/image_generation_stage1/model.py].

Two backends, one set of statistics:
- `faiss`: `faiss.Kmeans` (on all GPUs when faiss has any) and `IndexFlatL2` search; the fastest on CPU
  (about 0.9 of the fp32 matmul peak, measured on a 2-core CPU).
- `torch`: Lloyd iterations with chunked `addmm` + argmin and `index_add_`; runs on any torch device. Empty
  clusters keep their previous centroid (faiss instead splits the largest cluster; both report empties).

Both subsample the training vectors the same way (a seeded choice of min(N, K·max_points_per_centroid) rows,
done here so the two backends see the same points) and offer the same init methods ("random": K distinct
training points, faiss's default; "kmeans++": D²-weighted sampling), each drawn by its own seeded RNG.
Spherical K-Means normalises the features and the centroids; on unit vectors the L2 argmin is the inner-product
argmax.
"""

from __future__ import annotations

import time
from typing import Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from digit_bench.errors import UserError

Backend = Literal["faiss", "torch"]
Init = Literal["random", "kmeans++"]


def fit_kmeans(x: np.ndarray, *, k: int, niter: int, seed: int, backend: Backend = "faiss", spherical: bool = False,
               max_points_per_centroid: int = 256, init: Init = "random",
               device: str | torch.device = "cpu") -> tuple[np.ndarray, dict]:
    """Fit K centroids to feature vectors.

    Args:
        x: (N, D) features (float16/float32; a memmap is fine, only the sampled rows are read).
        k: codebook size. niter: Lloyd iterations. seed: subsampling and init seed.
        backend: "faiss" (the paper) or "torch".
        spherical: cosine K-Means (features and centroids normalised).
        max_points_per_centroid: at most k * this rows are used (faiss's subsampling rule, done here).
        init: "random" (faiss default, the paper) or "kmeans++".
        device: torch backend only.

    Returns:
        centroids float32 (K, D), and fit statistics:
        - `obj`: objective per iteration, the sum of squared L2 distances (faiss spherical: of inner products;
          faiss stops early at a fixed point, so the list may be shorter than niter);
        - `inertia`: final mean squared L2 distance of the used points to their centroid;
        - `points_total`, `points_used`, `empty_clusters`, `nsplit` (faiss's splits of empty clusters);
        - `imbalance_factor` (faiss's K·Σn²/N², 1 = balanced), `size_max_over_mean`, `size_cv`;
        - the settings (backend, seed, k, niter, init, spherical, ...) and `fit_seconds`.
    """
    n, d = x.shape
    if n < k:
        raise UserError(f"K-Means with k={k} needs at least {k} feature vectors, got {n}; "
                        f"lower tokenizer.k or use more images (features.fraction)")
    n_used = min(n, k * max_points_per_centroid)
    rows = np.sort(np.random.default_rng(seed).choice(n, n_used, replace=False)) if n_used < n else slice(None)
    xs = np.ascontiguousarray(x[rows], dtype=np.float32)  # (n_used, D); may share memory with x
    if spherical:
        xs = xs / (np.linalg.norm(xs, axis=1, keepdims=True) + 1e-12)
    t0 = time.perf_counter()
    if backend == "faiss":
        centroids, obj, nsplit = _faiss_kmeans(xs, k, niter, seed, spherical, init, max_points_per_centroid)
    elif backend == "torch":
        centroids, obj = _torch_kmeans(xs, k, niter, seed, spherical, init, torch.device(device))
        nsplit = 0
    else:
        raise UserError(f"unknown K-Means backend {backend!r}; choose faiss or torch")
    fit_seconds = time.perf_counter() - t0

    labels, dist = _assign_with_distance(xs, centroids, backend, chunk=16384, device=device)
    sizes = np.bincount(labels, minlength=k)  # (K,)
    stats = dict(backend=backend, seed=seed, k=k, niter=niter, init=init, spherical=spherical,
                 max_points_per_centroid=max_points_per_centroid, points_total=n, points_used=n_used,
                 gpu=backend == "faiss" and faiss.get_num_gpus() > 0, device=str(device), fit_seconds=fit_seconds,
                 obj=[float(o) for o in obj], inertia=float(dist.mean()), nsplit=int(nsplit),
                 empty_clusters=int((sizes == 0).sum()),
                 imbalance_factor=float(k * (sizes.astype(np.float64) ** 2).sum() / n_used**2),
                 size_max_over_mean=float(sizes.max() / sizes.mean()), size_cv=float(sizes.std() / sizes.mean()))
    return centroids, stats


def _faiss_kmeans(xs: np.ndarray, k: int, niter: int, seed: int, spherical: bool, init: Init,
                  max_points_per_centroid: int) -> tuple[np.ndarray, list[float], int]:
    """faiss.Kmeans on the already-subsampled rows (so faiss samples nothing more); centroids, objective, splits."""
    init_method = {"random": faiss.ClusteringInitMethod_RANDOM,
                   "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS}[init]
    km = faiss.Kmeans(xs.shape[1], k, niter=niter, seed=seed, spherical=spherical, init_method=init_method,
                      max_points_per_centroid=max_points_per_centroid, gpu=faiss.get_num_gpus() > 0)
    km.train(xs)
    return km.centroids.astype(np.float32), list(km.obj), sum(s["nsplit"] for s in km.iteration_stats)


@torch.no_grad()
def _torch_kmeans(xs: np.ndarray, k: int, niter: int, seed: int, spherical: bool, init: Init,
                  device: torch.device) -> tuple[np.ndarray, list[float]]:
    """Lloyd's algorithm: chunked addmm argmin, then index_add_ of the members; returns centroids and objective."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(xs).to(device)  # (N, D)
    c = _kmeanspp(x, k, g) if init == "kmeans++" else x[torch.randperm(len(x), generator=g)[:k].to(device)].clone()
    obj = []
    for _ in tqdm(range(niter), desc=f"k-means K={k}", unit="iter"):
        labels, dist = nearest_centroid(x, c)  # (N,), (N,)
        obj.append(dist.sum().item())
        sums = torch.zeros_like(c).index_add_(0, labels, x)  # (K, D)
        counts = torch.bincount(labels, minlength=k)  # (K,)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]  # empty clusters keep their centroid
        if spherical:
            c = F.normalize(c, dim=1)
    return c.float().cpu().numpy(), obj


def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn's variant): at each step draw 2 + ln(K)
    candidates with probability ∝ D² and keep the one that lowers the total D² the most."""
    trials = 2 + int(np.log(k))
    x2 = (x * x).sum(1)  # (N,)
    c = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)  # (K, D)
    c[0] = x[torch.randint(len(x), (1,), generator=g).item()]
    d2 = (x2 - 2 * x @ c[0] + c[0] @ c[0]).clamp_min(0)  # (N,) squared distance to the nearest chosen centroid
    for i in range(1, k):
        cdf = d2.double().cumsum(0)  # (N,)
        u = torch.rand(trials, generator=g, dtype=torch.float64).to(x.device) * cdf[-1]  # (L,)
        cand = x[torch.searchsorted(cdf, u).clamp(max=len(x) - 1)]  # (L, D)
        cand_d2 = torch.addmm((cand * cand).sum(1)[:, None], cand, x.T, alpha=-2).add_(x2).clamp_min_(0)  # (L, N)
        new_d2 = torch.minimum(d2, cand_d2)  # (L, N)
        best = new_d2.sum(1).argmin()
        c[i], d2 = cand[best], new_d2[best]
    return c


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by squared L2 for (N, D) against (K, D): labels int64 (N,) and squared distances (N,)."""
    c2 = (centroids * centroids).sum(1)  # (K,)
    labels, dists = [], []
    for xb in x.split(chunk):
        d = torch.addmm(c2, xb, centroids.T, alpha=-2)  # (b, K) = ||c||² - 2 x·c
        m, i = d.min(1)  # (b,), (b,)
        labels.append(i)
        dists.append((m + (xb * xb).sum(1)).clamp_min(0))  # (b,) + ||x||²
    return torch.cat(labels), torch.cat(dists)


def assign(x: np.ndarray, centroids: np.ndarray, backend: Backend = "faiss", chunk: int = 16384,
           spherical: bool = False, device: str | torch.device = "cpu") -> np.ndarray:
    """Token ids int64 (N,): the nearest centroid by L2 of each row of x (N, D), `chunk` rows at a time (so x may
    be a float16 memmap far larger than memory).

    Spherical: rows and centroids are normalised first (L2 order on unit vectors = inner-product order).
    """
    if spherical:
        centroids = centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk):
        xb = np.ascontiguousarray(x[start:start + chunk], dtype=np.float32)  # (b, D); may share memory with x
        if spherical:
            xb = xb / (np.linalg.norm(xb, axis=1, keepdims=True) + 1e-12)
        out[start:start + len(xb)] = _assign_with_distance(xb, centroids, backend, chunk, device)[0]
    return out


def _assign_with_distance(x: np.ndarray, centroids: np.ndarray, backend: Backend, chunk: int,
                          device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Labels int64 (N,) and squared L2 distances (N,) of float32 rows x against centroids."""
    if backend == "faiss":
        index = faiss.IndexFlatL2(centroids.shape[1])
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        dist, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)  # (N, 1), (N, 1)
        return labels[:, 0].astype(np.int64), dist[:, 0]
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)  # (K, D)
    labels, dist = nearest_centroid(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device), c, chunk)
    return labels.cpu().numpy(), dist.cpu().numpy()


def codebook_stats(tokens: np.ndarray, k: int) -> dict[str, float]:
    """Codebook use of a token array: fraction of codes used, exp(entropy) of code frequencies, unused codes."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel(), minlength=k)  # (K,)
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {"codebook_usage": used / k, "codebook_perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "dead_codes": k - used}


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two tokenisations of the same patches (e.g. two K-Means seeds); 1 = identical."""
    return float(adjusted_rand_score(np.asarray(a).ravel(), np.asarray(b).ravel()))
