"""Tokenizer micro-benchmarks (pytest-benchmark): nearest-centroid assignment next to a same-shape fp32 matmul,
ViT-S/16 feature extraction and images -> tokens. They record GFLOP/s in `extra_info` and never assert speed.

Run with timings: `pytest tests/benchmarks --benchmark-enable --benchmark-json=results/benchmarks/pytest.json`
(the default `--benchmark-disable` runs each body once, as a test of the code path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from digit_bench.bench import assignment_workload, images_to_tokens, vit_flops, vit_s_backbone
from digit_bench.tokenizers.kmeans import assign

N, K, D = 16384, 256, 128  # the ViT-S token benchmark's codebook
SHAPES = {"tiny-k256-d128": (N, K, D), "vits-k1024-d384": (N, 1024, 384)}  # (N, K, D): CPU profile, ViT-S width
BATCH = 2


def record(benchmark, gflop: float, images: int = 0) -> None:
    """GFLOP per call always; GFLOP/s and images/s when timings were taken (--benchmark-enable)."""
    benchmark.extra_info["gflop"] = gflop
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        benchmark.extra_info["gflops"] = gflop / median
        if images:
            benchmark.extra_info["images_per_s"] = images / median


@pytest.fixture(scope="module", params=list(SHAPES))
def workload(request):
    n, k, d = SHAPES[request.param]
    return assignment_workload(n, k, d)


@pytest.fixture(scope="module")
def vit():
    return vit_s_backbone()


@pytest.fixture(scope="module")
def batch():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8))


@pytest.mark.benchmark
def test_matmul_fp32(benchmark, workload):
    x, c = (torch.from_numpy(a) for a in workload)
    out = benchmark(torch.mm, x, c.T)
    assert out.shape == (len(x), len(c))
    record(benchmark, 2 * x.numel() * len(c) / 1e9)


@pytest.mark.benchmark
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_assign(benchmark, workload, backend):
    x, c = workload
    tokens = benchmark(assign, x, c, backend, len(x))
    want = (((x[:2000, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)).argmin(1)
    np.testing.assert_array_equal(tokens[:2000], want)
    record(benchmark, 2 * x.size * len(c) / 1e9)


@pytest.mark.benchmark
def test_vit_s_features(benchmark, vit, batch):
    with torch.no_grad():
        feats = benchmark.pedantic(vit, args=(batch,), rounds=3, warmup_rounds=1)
    assert feats.shape == (BATCH, 196, 384)
    record(benchmark, vit_flops(vit)["total"] * BATCH / 1e9, images=BATCH)


@pytest.mark.benchmark
def test_images_to_tokens(benchmark, vit, batch):
    centroids = torch.from_numpy(assignment_workload(K, K, 384, seed=1)[1])
    with torch.no_grad():
        tokens = benchmark.pedantic(images_to_tokens, args=(vit, batch, centroids), rounds=3, warmup_rounds=1)
    assert tokens.shape == (BATCH, 196) and int(tokens.max()) < K
    record(benchmark, (vit_flops(vit)["total"] + 2 * 196 * K * 384) * BATCH / 1e9, images=BATCH)


def test_vit_flops_match_torch_flop_counter():
    """The analytic linear-layer count equals FlopCounterMode's (which sees no SDPA on the CPU)."""
    backbone = vit_s_backbone()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone.features(torch.zeros(1, 3, 224, 224))
    counted = counter.get_total_flops()
    assert counted == vit_flops(backbone)["linear"]
