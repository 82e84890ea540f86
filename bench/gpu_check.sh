#!/usr/bin/env bash
# The GPU check, one command on a machine with a CUDA GPU (no downloads, < 8 minutes):
#   bash bench/gpu_check.sh [--peak-tflops N] [--families ...]
# 1. the CUDA-only tests (pytest -m cuda), 2. bench/gpu_check.py: per generator family at paper
# size, training/sampling images/s, peak memory, FLOP utilisation; the classifier with batches
# augmented on the GPU; on >= 2 GPUs two concurrent jobs and a 2-rank NCCL DDP run. The table is
# appended to docs/benchmarks.md. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible")'
"$PY" -c 'import torch; [print(f"GPU {i}: {torch.cuda.get_device_name(i)}") for i in range(torch.cuda.device_count())]'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== CUDA-only tests"
timeout -k 10 180 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests
echo "== throughput, memory and utilisation per family"
timeout -k 10 270 "$PY" bench/gpu_check.py "$@"
