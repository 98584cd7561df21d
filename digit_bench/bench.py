"""Tokenizer micro-benchmarks: nearest-centroid assignment, backbone features, images -> tokens.

    digit-bench bench [--n 65536 --k 1024 --d 384] [--batch 8] [--repeats 3] [--device cpu] [--threads T]
                      [--out results/benchmarks/tokenizer.json]

Prints one table (seconds per call, GFLOP per call, GFLOP/s, images/s, ratio to a float32 matmul of the same
shape as the assignment, measured in the same run) and writes it as JSON with the machine and library versions.
Assignment does 2·N·K·D FLOP per pass. Feature extraction uses a random-init ViT-S/16 at 224 px (384 wide, 6 heads;
10 of its 12 blocks run for layer -3); its FLOP count (`vit_flops`) is the analytic matmul count, checked against
torch's FlopCounterMode in tests/benchmarks/test_bench_tokenizer.py. Timings are the median of `--repeats` calls
after one warm-up call; on a shared machine they are noisy, so record, never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch

from digit_bench.backbones import FeatureBackbone, random_vit
from digit_bench.tokenizers.kmeans import assign, nearest_centroid


def assignment_workload(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 features (N, D) and centroids (K, D)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal((k, d), dtype=np.float32)


def vit_s_backbone() -> FeatureBackbone:
    """ViT-S/16 at 224 px with random weights, features of layer -3 (the paper's layer 3)."""
    return random_vit(layer=-3, patch_size=16, embed_dim=384, depth=12, num_heads=6, init_seed=0, img_size=224,
                      name="random_vit_s16_224")


def vit_flops(backbone: FeatureBackbone) -> dict[str, float]:
    """Analytic FLOP per image up to block `layer`: linear layers (patch embed, qkv, proj, MLP) and attention."""
    model = backbone.model
    D, T, p = backbone.embed_dim, backbone.num_tokens, backbone.patch_size
    L = T + model.num_prefix_tokens  # sequence length inside the blocks
    hidden = model.blocks[0].mlp.fc1.out_features
    blocks = backbone.layer % backbone.num_layers + 1  # stop_early: blocks after `layer` do not run
    linear = 2 * T * 3 * p * p * D + blocks * 2 * L * (3 * D * D + D * D + 2 * D * hidden)
    attention = blocks * 2 * 2 * L * L * D  # q·kᵀ and attn·v
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


def images_to_tokens(backbone: FeatureBackbone, images: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> token ids (B, T): backbone features, then the nearest centroid (torch)."""
    feats = backbone(images)  # (B, T, D)
    B, T, D = feats.shape
    return nearest_centroid(feats.reshape(B * T, D), centroids)[0].view(B, T)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def run(n: int, k: int, d: int, batch: int, repeats: int, device: str = "cpu") -> list[dict]:
    """Measure every benchmark once; one row each (name, seconds, gflop, gflops, images_per_s, ratio_to_matmul)."""
    dev = torch.device(device)
    x, c = assignment_workload(n, k, d)
    xt, ct = torch.from_numpy(x).to(dev), torch.from_numpy(c).to(dev)
    backbone = vit_s_backbone().to(dev)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)).to(dev)
    tok_centroids = torch.from_numpy(assignment_workload(k, k, backbone.embed_dim, seed=1)[1]).to(dev)  # (K, 384)
    vit = vit_flops(backbone)["total"] * batch
    cases = [  # name, fn, FLOP per call, images per call
        ("matmul_fp32", lambda: xt @ ct.T, 2.0 * n * k * d, 0),
        ("assign_faiss", lambda: assign(x, c, "faiss", chunk=n), 2.0 * n * k * d, 0),
        ("assign_torch", lambda: assign(x, c, "torch", device=dev), 2.0 * n * k * d, 0),
        ("features_vit_s16_224", lambda: backbone(images), vit, batch),
        ("images_to_tokens_vit_s16_224", lambda: images_to_tokens(backbone, images, tok_centroids),
         vit + 2.0 * batch * backbone.num_tokens * k * backbone.embed_dim, batch),
    ]
    rows = []
    for name, fn, flop, nimg in cases:
        s = median_seconds(fn, repeats, dev)
        rows.append({"name": name, "seconds": s, "gflop": flop / 1e9, "gflops": flop / 1e9 / s,
                     "images_per_s": nimg / s if nimg else None})
    peak = rows[0]["gflops"]
    for r in rows:
        r["ratio_to_matmul"] = r["gflops"] / peak
    return rows


def machine() -> dict:
    """Where the numbers were taken: the load average says whether other jobs shared the CPU."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "torch_threads": torch.get_num_threads(), "faiss_omp_threads": faiss.omp_get_max_threads(),
            "faiss_gpus": faiss.get_num_gpus(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<30}{'s/call':>10}{'GFLOP':>10}{'GFLOP/s':>10}{'img/s':>10}{'/ matmul':>10}"]
    for r in rows:
        img = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        lines.append(f"{r['name']:<30}{r['seconds']:>10.4f}{r['gflop']:>10.2f}{r['gflops']:>10.1f}{img:>10}"
                     f"{r['ratio_to_matmul']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="digit-bench bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=65536, help="feature vectors assigned per call")
    p.add_argument("--k", type=int, default=1024, help="centroids")
    p.add_argument("--d", type=int, default=384, help="feature width")
    p.add_argument("--batch", type=int, default=8, help="images per ViT-S call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per benchmark (median)")
    p.add_argument("--device", default="cpu", help="torch device (faiss uses its GPUs when it has any)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and faiss (default: theirs)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/tokenizer.json"), help="JSON output file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rows = run(args.n, args.k, args.d, args.batch, args.repeats, args.device)
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0
