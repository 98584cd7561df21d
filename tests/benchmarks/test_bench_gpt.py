"""GPT micro-benchmarks (record speed, never assert it): KV-cache sampling speed-up, and training throughput as
tokens/s and as model FLOP/s relative to a matmul's FLOP/s measured in the same run and precision. The assertions
are on results and on that ratio's physical bound, never on a time.

Run: .venv/bin/pytest tests/benchmarks/test_bench_gpt.py --benchmark-enable
"""

import itertools
import time

import pytest
import torch

from digit_bench.config import TrainConfig
from digit_bench.models.gpt import GPT, gpt_config
from digit_bench.training import device_for, fit

pytestmark = pytest.mark.benchmark
DEVICE = device_for("fp32")


def timed(fn) -> float:
    """Wall seconds of fn(), waiting for the device to finish."""
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_flops_per_s(n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of an n x n matmul on DEVICE in fit's "auto" precision (bf16 autocast on CUDA, fp32 on the CPU): the
    roofline the model's throughput is compared with."""
    a = torch.randn(n, n, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
        timed(lambda: a @ a)  # warm-up
        return 2 * n**3 * reps / timed(lambda: [a @ a for _ in range(reps)])


@pytest.mark.parametrize("num", [4, 16])
def test_sampling_kv_cache_speedup(benchmark, num):
    """256 tokens per sample; at 4 samples per call both paths are mostly per-op overhead on a CPU, at 16 the
    uncached path's quadratic recompute starts to dominate (the sweeps sample 100-256 per call)."""
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-micro", seq_len=256)).to(DEVICE).eval()
    seeds = list(range(num))
    outputs = {}

    def sample(use_cache: bool):
        outputs[use_cache] = model.generate(num, seeds=seeds, top_k=100, use_cache=use_cache)

    cache_s = min(timed(lambda: sample(True)) for _ in range(2))
    no_cache_s = timed(lambda: sample(False))
    assert torch.equal(outputs[True], outputs[False])
    benchmark.extra_info.update(
        samples_per_call=num,
        tokens_per_s_kv_cache=num * 256 / cache_s,
        tokens_per_s_no_cache=num * 256 / no_cache_s,
        kv_cache_speedup=no_cache_s / cache_s,
    )
    benchmark.pedantic(sample, args=(True,), rounds=3, iterations=1)


def test_training_throughput(benchmark, tmp_path):
    size, batch, seq_len, steps = "gpt-micro", 32, 64, 12
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=3e-4, warmup_steps=2, checkpoint_every=10**9)
    data = torch.randint(0, 512, (batch * steps, seq_len), generator=torch.Generator().manual_seed(0))
    run_ids = itertools.count()
    results = []

    def train():
        torch.manual_seed(0)
        model = GPT(gpt_config(size, seq_len=seq_len))
        stats = fit(model, lambda m, idx: ({"main": m.loss(idx)}, {}),
                    lambda step, rank, world: [data[step * batch:(step + 1) * batch]],
                    cfg, tmp_path / str(next(run_ids)), seed=0, desc=f"bench {size}")
        results.append((stats["tokens_per_s"], model.flops_per_token()))

    benchmark.pedantic(train, rounds=2, iterations=1)
    tokens_per_s, flops_per_token = max(results)
    matmul = matmul_flops_per_s()
    benchmark.extra_info.update(
        model=size, device=DEVICE.type, tokens_per_s=tokens_per_s, model_flops_per_s=tokens_per_s * flops_per_token,
        matmul_flops_per_s=matmul, fraction_of_matmul=tokens_per_s * flops_per_token / matmul,
    )
    # A small GPT's forward + backward cannot beat a large square matmul in the same precision: a fraction above 1
    # means flops_per_token (the FLOPs and MFU columns of every report) or tokens_per_s over-counts.
    assert 0 < tokens_per_s * flops_per_token / matmul < 1, benchmark.extra_info
