"""Device check of state storage (issue #23) on CUDA, printing what it measured:
fp32 storage vs no storage (logits and cache, prefill in 64-token chunks + decode steps), every
precision's round trip on the GPU vs on the CPU, and a reduced compress run with its time.

    python3 benchmarks/compress_gpu_check.py [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from staterank.compress.config import CompressConfig
from staterank.compress.quant import PRECISIONS, roundtrip
from staterank.compress.run import run_compress
from staterank.compress.store import store_states
from staterank.models import cache_kwarg, load_model, output_cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    loaded = load_model("builtin", device=a.device, dtype="float32")
    model = loaded.model
    layers = loaded.adapter.linear_layers(model)
    dev = next(model.parameters()).device
    print("device", dev, torch.cuda.get_device_name(0) if dev.type == "cuda" else "")
    ids = torch.randint(0, 300, (2, 150), generator=torch.Generator().manual_seed(0)).to(dev)
    kw = cache_kwarg(model)

    def go():
        out = model(ids[:, :147], use_cache=True)
        logits = [out.logits]
        for i in range(147, 150):
            out = model(ids[:, i:i + 1], **{kw: output_cache(out)}, use_cache=True)
            logits.append(out.logits)
        return torch.cat(logits, 1), [output_cache(out).layers[l.index].recurrent_states[0] for l in layers]

    with torch.no_grad():
        base, sb = go()
        with store_states(model, {(l.index, h): "fp32" for l in layers for h in range(l.layout.h_v)}) as st:
            got, sg = go()
    print(f"fp32 storage: {st.stores} stores; max |Δlogit| {float((got - base).abs().max()):.3g}; "
          f"max |Δstate| {max(float((x - y).abs().max()) for x, y in zip(sg, sb)):.3g}")
    S = sb[0]
    for p in PRECISIONS:
        g, c = roundtrip(S, p), roundtrip(S.cpu(), p)
        print(f"roundtrip {p}: max |gpu - cpu| {float((g.cpu() - c).abs().max()):.3g}, "
              f"rel. error {float((g - S).norm() / S.norm()):.3g}")
    cfg = CompressConfig(budgets=(0.5, 0.25), eval_n=16, sens_n=4, random_seeds=1, calib_tokens=128,
                         sensitivity=("bf16", "int8_head", "drop"))
    out = a.out or tempfile.mkdtemp()
    t = time.perf_counter()
    res = run_compress(loaded, cfg, f"{out}/c1")
    print(f"reduced compress run on {dev}: {time.perf_counter() - t:.1f} s; base {res['base']['all']['acc']:.3f}; "
          + "; ".join(f"{k}: {v['accuracy']['all']['acc']:.3f} at {v['bytes_fraction']:.1%}" for k, v in res["all_heads"].items())
          + "; winners " + ", ".join(f"{b}: {w['winner']}" for b, w in res["winners"].items()))


if __name__ == "__main__":
    main()
