"""digit_bench: a benchmark and ablation harness for image autoregressive modeling (DiGIT and its baselines).

Importing the package stays light: heavy modules (torch, timm, faiss, diffusers) load only when used.
"""

import os

__version__ = "0.1.0"


def _openblas_coretype() -> str | None:
    """The OpenBLAS kernel family this x86-64 Linux CPU supports, from /proc/cpuinfo flags (None elsewhere).

    faiss-cpu wheels bundle their own OpenBLAS (0.3.15), which does not recognise recent Xeons and falls back to its
    generic `Prescott` kernels: K-Means assignment then ran at 53-62 GFLOP/s against 280 for numpy's matmul on a
    2-core Sapphire Rapids VM, and at 220-264 GFLOP/s with OPENBLAS_CORETYPE=SkylakeX (README, micro-benchmarks).
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


# OpenBLAS reads this once, when faiss (or numpy) loads it; an explicit setting of the user's wins.
if "OPENBLAS_CORETYPE" not in os.environ and (_coretype := _openblas_coretype()):
    os.environ["OPENBLAS_CORETYPE"] = _coretype
