"""Decode throughput and recurrent-state bytes of a head-pruned model vs the original, in one run.

    .venv/bin/python benchmarks/decode.py [--model builtin --fraction 0.389 --batch 1 8 32 --device cpu]
    .venv/bin/python benchmarks/decode.py --plan runs/demo/prune/plan.json

The paper's pruning saves recurrent state (38.9 % at 7/18 of the heads); whether that buys decode
speed depends on the hardware and the batch (state reads grow with the batch, weights do not). This
removes the same number of value heads from every linear-attention layer (a seeded random choice:
speed and bytes depend on how many heads go, not which; or the heads of ``--plan``) with the real
surgery, then times greedy decoding of both models, alternating original and pruned on every repeat
so machine load hits both alike. Per batch size: median tokens/s of each, the ratio, and the state
bytes the cache actually holds. The last line: ``decode_speedup=<x> state_saved=<y>`` at the largest
batch. Shapes: B batch.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from staterank.models import load_model  # noqa: E402
from staterank.prune.export import state_bytes  # noqa: E402
from staterank.prune.plan import Plan  # noqa: E402
from staterank.prune.surgery import prune_heads  # noqa: E402


def random_per_layer(loaded, fraction: float, seed: int) -> dict[int, list[int]]:
    g = np.random.default_rng(seed)
    out = {}
    for layer in loaded.adapter.linear_layers(loaded.model):
        h = layer.layout.h_v
        k = min(h - 1, int(round(fraction * h)))
        out[layer.index] = sorted(g.choice(h, size=k, replace=False).tolist())
    return out


@torch.no_grad()
def tokens_per_s(model, ids: torch.Tensor, new_tokens: int) -> float:
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin", help="HF id, folder or builtin (default builtin)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the loader's)")
    p.add_argument("--fraction", type=float, default=0.389, help="share of value heads removed per layer (default 0.389)")
    p.add_argument("--plan", default=None, help="a prune run's plan.json instead of random heads")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes (default 1 8 32)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per run (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each model per batch size (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 0 <= a.fraction < 1 or min(a.batch + [a.prompt, a.new_tokens, a.repeats, a.threads]) < 1:
        p.error("--fraction in [0, 1); batch sizes, --prompt, --new-tokens, --repeats, --threads >= 1")
    torch.set_num_threads(a.threads)
    loaded = load_model(a.model, device=a.device, dtype=a.dtype)
    original = loaded.model
    if a.plan:
        removed: dict[int, list[int]] = {}
        for li, h in Plan.load(a.plan).removed:
            removed.setdefault(int(li), []).append(int(h))
        what = f"the heads of {a.plan}"
    else:
        removed = random_per_layer(loaded, a.fraction, a.seed)
        what = f"{a.fraction:g} of the value heads of every layer (seeded random)"
    pruned = copy.deepcopy(original)
    prune_heads(pruned, removed)
    n_removed = sum(len(v) for v in removed.values())
    n_heads = sum(l.layout.h_v for l in loaded.adapter.linear_layers(original))
    dev = next(original.parameters()).device
    print(f"model {a.model} on {dev}, {next(original.parameters()).dtype}, threads {a.threads}; removed {what}: "
          f"{n_removed} of {n_heads} value heads; prompt {a.prompt}, {a.new_tokens} new tokens, median of {a.repeats}")
    vocab = int(original.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(a.seed)
    last = None
    for b in a.batch:
        ids = torch.randint(3, vocab, (b, a.prompt), generator=g).to(dev)
        for m in (original, pruned):  # warm-up: kernels, allocator, caches
            tokens_per_s(m, ids, 2)
        rates = {"original": [], "pruned": []}
        for r in range(a.repeats):
            order = (("original", original), ("pruned", pruned)) if r % 2 == 0 else (("pruned", pruned), ("original", original))
            for name, m in order:
                rates[name].append(tokens_per_s(m, ids, a.new_tokens))
        ro, rp = float(np.median(rates["original"])), float(np.median(rates["pruned"]))
        ctx = a.prompt + a.new_tokens
        sb_o, sb_p = state_bytes(original, b, ctx, a.seed), state_bytes(pruned, b, ctx, a.seed)
        saved = 1 - sb_p["linear_state"] / sb_o["linear_state"]
        print(f"batch {b:>4}: original {ro:9.1f} tok/s, pruned {rp:9.1f} tok/s -> {rp / ro:.2f}x; "
              f"linear state {sb_o['linear_state']:,} -> {sb_p['linear_state']:,} B ({saved:.1%} saved), "
              f"whole cache {sb_o['total']:,} -> {sb_p['total']:,} B")
        last = (rp / ro, saved)
    print(f"decode_speedup={last[0]:.2f} state_saved={last[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
