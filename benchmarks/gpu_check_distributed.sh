#!/usr/bin/env bash
# Device check of torchrun on one GPU (nccl needs a GPU per rank, so 2 ranks here use gloo and share
# GPU 0): the builtin probe (mean ablation: means calibrated on rank 0 and sent to rank 1 as CUDA
# tensors) and stratify with --device auto, each as 1 process and as 2 ranks; the result files must
# be equal. Uses the device's own python3. Output in $OUT (or /tmp/gpu_dist). ~2 minutes.
set -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 STATERANK_DIST_BACKEND=gloo
out="${OUT:-/tmp/gpu_dist}"; mkdir -p "$out"; runs=$(mktemp -d)
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$out/gpu.txt"
P=(probe --model builtin --device cuda --tasks mqar --mode mean --limit 12 --seeds 1 --groups low,high,random --batch-size 4 --threads 1 --quiet)
S=(stratify --model builtin --device auto --contexts prose,math,code --max-tokens 128 --t-early 32 --t-late 128 --threads 1 --quiet --no-report)
step() { local name=$1; shift; echo "== $name"; "$@" > "$out/$name.txt" 2>&1; echo "   rc=$?"; tail -3 "$out/$name.txt"; }
step probe_1 timeout 60 python3 -m staterank.cli "${P[@]}" --out "$runs/p1"
step probe_2 timeout 90 python3 -m torch.distributed.run --nproc-per-node 2 -m staterank.cli "${P[@]}" --out "$runs/p2"
step stratify_1 timeout 60 python3 -m staterank.cli "${S[@]}" --out "$runs/s1"
step stratify_2 timeout 90 python3 -m torch.distributed.run --nproc-per-node 2 -m staterank.cli "${S[@]}" --out "$runs/s2"
for f in p/probe.json p/items.jsonl p/means.npz s/stratify.json s/heads.csv s/analyze/dynamics.npz s/analyze_init/dynamics.npz; do
  a="$runs/${f%%/*}1/${f#*/}"; b="$runs/${f%%/*}2/${f#*/}"
  if cmp -s "$a" "$b"; then echo "same: $f"; else echo "DIFFERENT: $f"; fi
done | tee "$out/compare.txt"
