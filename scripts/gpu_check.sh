#!/usr/bin/env bash
# Device check of the paper path: `bash scripts/gpu_check.sh [--device cuda|cpu] [--tiny] [--only SECTION] ...`
# On a CUDA machine it first installs the `gpu` extra (faiss-gpu for CUDA 12) when faiss sees no GPU, then runs
# `python -m digit_bench.doctor` with --random-weights (no weights are downloaded) and writes
# results/gpu/<device>.json. Without a GPU, `--device cpu --tiny` runs every section at CPU size (<= 2 min).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
device=""
prev=""
for arg in "$@"; do
  case "$arg" in --device=*) device=${arg#--device=} ;; esac
  [ "$prev" = "--device" ] && device=$arg
  prev=$arg
done
if [ -z "$device" ]; then
  device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
  set -- --device "$device" "$@"
fi
if [ "$device" = "cuda" ]; then
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: --device cuda but torch sees no CUDA device; run with --device cpu --tiny" >&2
    exit 0
  fi
  if ! $PY -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; then
    # The `gpu` extra (faiss-gpu-cu12 + its CUDA 12 runtime) goes into its own folder put first on the path, so it
    # shadows faiss-cpu without uninstalling it; without a registry the doctor falls back to CPU faiss and says so.
    site=${DIGIT_BENCH_GPU_SITE:-/tmp/digit_bench_gpu_site}
    if $PY -m pip install --quiet --no-deps --target "$site" "faiss-gpu-cu12>=1.8" nvidia-cuda-runtime-cu12 \
        nvidia-cublas-cu12 >&2; then
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
      echo "gpu_check: could not install faiss-gpu (the gpu extra); K-Means runs on CPU faiss" >&2
    fi
  fi
fi
exec $PY -m digit_bench.doctor --random-weights "$@"
