#!/usr/bin/env bash
# The GPU checks of issue #7 as one prepared script, for a lent GPU machine (PyTorch there, no MLflow).
# Here, first: python benchmarks/half_weights.py   (fills the ignored .gpu_carry/)
# Then run this there with .gpu_carry carried; results go to $OUT (or benchmarks/results).
# `gpu_check.sh profile` runs benchmarks/gpu_profile.py instead. The whole of fast.py takes a few
# minutes; the two figures of issue #7 still to confirm take about one:
#   FAST_ARGS="--only speed,sweep --sizes 512" bash benchmarks/gpu_check.sh
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export STYLELAB_WEIGHTS_DIR=.gpu_carry STYLELAB_IMAGES_DIR=.gpu_carry/images PYTHONUNBUFFERED=1
export PYTHONPATH=".:benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' | tee -a "$OUT/gpu.txt"
if [ "${1:-}" = "profile" ]; then  # where the time goes, and variants (benchmarks/gpu_profile.py)
  "$PY" benchmarks/gpu_profile.py 2>&1 | tee "$OUT/profile.txt"
  exit
fi
# Engine checks on CUDA first (fast, fail early): the batched L-BFGS against torch's, a tiny run, a batch.
"$PY" benchmarks/cuda_smoke.py 2>&1 | tee "$OUT/smoke.txt" || exit 1
"$PY" benchmarks/fast.py --device cuda --out "$OUT" ${FAST_ARGS:-} 2>&1 | tee "$OUT/fast-log.txt"
# Issue #14: 4K and 8K by tiles within a 24 GB card's budget (peak allocated, seconds per iteration).
STYLELAB_MEMORY_LIMIT_GIB=24 "$PY" benchmarks/tiling.py gpu 2>&1 | tee "$OUT/tiling-gpu.txt"
