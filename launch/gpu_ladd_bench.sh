#!/usr/bin/env bash
# `ladd-jax bench ladd` on one NVIDIA GPU in under 10 minutes: one LADD step of an SD3-medium-sized teacher and
# student (random weights, nothing to download) at 512^2 and 1024^2, bfloat16, cuDNN attention; the jitted JAX
# step beside the PyTorch reference (diffusers' SD3Transformer2DModel, eager and torch.compile'd). Prints one JSON
# line per run (ms/step, img/s, TFLOP/s, MFU, torch_*_over_jax).
#
#   launch/gpu_ladd_bench.sh                    # from anywhere; runs in the repository root
#   BATCH_512=16 BATCH_1024=4 launch/gpu_ladd_bench.sh
#
# Needs: `pip install "jax[cuda13]" -e ".[test]"` plus a CUDA build of torch (the test extra pins a CPU one), e.g.
# `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130`.
#
# Three runs: 512^2 and 1024^2 with PyTorch eager, then 512^2 again with torch.compile. The third finds its JAX
# executables in the persistent compilation cache the first one filled (so its jax_*_compile_s is a cache load),
# which leaves its time to torch.compile. Each run has a time limit so that the three fit 10 minutes; a run stopped
# prints an {"error": ...} line instead of its report.
# Environment: BATCH_512 (default 8), BATCH_1024 (default 2), STEPS (timed steps after warm-up, default 3),
# LIMIT_512 / LIMIT_1024 / LIMIT_COMPILE (seconds per run, default 180 / 180 / 220),
# JAX_COMPILATION_CACHE_DIR (default a fresh temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."

# PyTorch runs first in each process and hands its memory back; XLA then allocates as it goes (by default it
# would take 75% of the GPU when JAX first touches it, before PyTorch has run).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d -t ladd_bench_jax_cache.XXXX)}"
export PYTHONUNBUFFERED=1

COMMON=(--preset sd3-medium --config configs/ladd.py:sd3-medium --dtype bfloat16 --attention cudnn)
COMMON+=(--steps "${STEPS:-3}" --json)

python -c "import jax, torch; assert jax.devices()[0].platform == 'gpu', jax.devices(); \
assert torch.cuda.is_available(), 'torch has no CUDA: install a CUDA build of torch'; print(jax.devices()[0].device_kind)"

bench() {  # bench SECONDS ARGS...
  local limit="$1"
  shift
  timeout "${limit}" ladd-jax bench ladd "${COMMON[@]}" "$@" ||
    echo "{\"error\": \"exit $? (124: stopped after ${limit} s)\", \"args\": \"$*\"}"
}
bench "${LIMIT_512:-180}" --resolution 512 --batch "${BATCH_512:-8}" --no-torch-compile
bench "${LIMIT_1024:-180}" --resolution 1024 --batch "${BATCH_1024:-2}" --no-torch-compile
bench "${LIMIT_COMPILE:-220}" --resolution 512 --batch "${BATCH_512:-8}"
