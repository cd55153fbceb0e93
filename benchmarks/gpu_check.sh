#!/usr/bin/env bash
# The prepared device check for a session that has a GPU: correctness steps first, then speed (run the
# two groups as two calls when fla is installed, see STEPS below):
#  1. capture on CUDA: analyze the builtin model with --device cuda and --device auto (the capture's
#     own self-check compares every replay with the model's rule outputs and final states there);
#  2. prune on CUDA: surgery, export, reload and the pruned-vs-masked check in bf16;
#  3. issue #8: the spectra benchmark on CUDA (Grams on the GPU, eigensolves where the engine's
#     timing puts them), then with eigensolves forced onto all CPU cores, onto the GPU (cuSOLVER;
#     MAGMA), and all on CPU cores (batched svdvals cannot use them; the engine's workers can);
#  4. decode throughput of a head-pruned builtin model vs the original on CUDA (benchmarks/decode.py);
#  5. probe (mean ablation: calibrated means, hooks) and stratify (with the init baseline) on CUDA.
# STEPS="analyze_cuda prune_cuda ..." runs only the named steps (a rerun after a fix). With fla installed
# its Triton kernels compile and autotune on first use: analyze took over 60 s on an H200 (2026-12-04), so
# the step limits now add up to more than one 600 s call: run the stage steps (analyze_cuda analyze_auto
# prune_cuda probe_cuda stratify_cuda) and the speed steps (spectra_* decode_cuda) as two calls.
# Each step has a time limit, so one slow path cannot eat the device time of the others.
# Uses the device's own python3 (torch, transformers); no install. Each step's output goes to $OUT
# (or /tmp/gpu_check) as a text file; a failed step does not stop the others.
#   run: bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
step() { local name=$1; shift; if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi; echo "== $name"; "$@" > "$out/$name.txt" 2>&1; echo "   rc=$? (tail:)"; tail -3 "$out/$name.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
n=$(nproc)
runs=$(mktemp -d)
# correctness first: if a slow solver path eats the time, these have already run
step analyze_cuda timeout 150 python3 -m staterank.cli analyze --model builtin --device cuda --prompt "$(printf 'The quick brown fox jumps over the lazy dog. %.0s' {1..40})" --out "$runs/a1" --quiet
step analyze_auto timeout 90 python3 -m staterank.cli analyze --model builtin --device auto --prompt "$(printf 'A stitch in time saves nine. %.0s' {1..40})" --out "$runs/a2" --quiet
step prune_cuda timeout 120 python3 -m staterank.cli prune --model builtin --device cuda --ranking per_layer --eval-n 20 --random-seeds 1 --calib-tokens 256 --out "$runs/p1" --quiet
step spectra_cuda_auto timeout 105 python3 benchmarks/spectra.py --device cuda --threads "$n"
step spectra_cuda_host timeout 45 python3 benchmarks/spectra.py --device cuda --threads "$n" --gpu-eig host --tokens 64 --builtin-tokens 64 --no-stats
step spectra_cuda_device timeout 45 python3 benchmarks/spectra.py --device cuda --threads "$n" --gpu-eig device --tokens 64 --builtin-tokens 64 --no-stats
step spectra_cuda_magma timeout 30 python3 benchmarks/spectra.py --device cuda --gpu-eig magma --tokens 32 --builtin-tokens 0 --no-stats
step spectra_cpu_all_cores timeout 45 python3 benchmarks/spectra.py --device cpu --threads "$n" --no-stats --builtin-tokens 0
step decode_cuda timeout 45 python3 benchmarks/decode.py --device cuda --batch 1 32 --repeats 3
step probe_cuda timeout 150 python3 -m staterank.cli probe --model builtin --device cuda --tasks mqar,ppl --mode mean --limit 20 --seeds 1 --groups low,high,random --out "$runs/q1" --quiet
step stratify_cuda timeout 90 python3 -m staterank.cli stratify --model builtin --device cuda --contexts prose,math --max-tokens 256 --t-early 64 --t-late 256 --out "$runs/s1" --quiet
cp "$runs"/a1/report.md "$out/analyze_cuda_report.md" 2>/dev/null; cp "$runs"/p1/report.md "$out/prune_cuda_report.md" 2>/dev/null; cp "$runs"/q1/report.md "$out/probe_cuda_report.md" 2>/dev/null; cp "$runs"/s1/report.md "$out/stratify_cuda_report.md" 2>/dev/null
true
