#!/usr/bin/env bash
# Issue #8's device check as one prepared command (a few minutes on one GPU): the spectra benchmark on
# CUDA at the default sizes and at a longer synthetic layer. Uses the device's own python3 (torch,
# transformers); no install. Output also goes to $OUT (or /tmp/gpu_check) as text files.
#   run: bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 benchmarks/spectra.py --device cuda 2>&1 | tee "$out/spectra_cuda_default.txt"
python3 benchmarks/spectra.py --device cuda --tokens 2048 --block 128 --builtin-tokens 1024 --no-stats 2>&1 \
  | tee "$out/spectra_cuda_long.txt"
