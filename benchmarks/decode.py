"""Decode throughput and recurrent-state bytes of a head-pruned model vs the original, in one run.

    .venv/bin/python benchmarks/decode.py [--model builtin --fraction 0.389 --batch 1 8 32 --device cpu]
    .venv/bin/python benchmarks/decode.py --plan runs/demo/prune/plan.json
    .venv/bin/python benchmarks/decode.py --model qwen3_next-shaped --fraction 0.25 --whole-groups --batch 1 32

The paper's pruning saves recurrent state (38.9 % at 7/18 of the heads); whether that buys decode
speed depends on the hardware and the batch (state reads grow with the batch, weights do not). This
removes the same number of value heads from every linear-attention layer (seeded random heads, or the
heads of ``--plan``) with the real surgery and the export's key-head grouping (with GVA, which heads
go decides how many key heads survive or are duplicated: both counts are printed), then times
greedy decoding alone (the prompt's prefill untimed, ``prune.export.decode_rate``) of both models,
alternating original and pruned on every repeat so machine load hits both alike. Per batch size:
median tokens/s of each, the ratio, and the state bytes the cache actually holds. The last line:
``decode_speedup=<x> state_saved=<y>`` at the largest batch. Shapes: B batch.

``--model qwen3_next-shaped``: a random model with Qwen3-Next-80B's Gated DeltaNet widths (hidden 2048,
H_k = 16 key heads, H_v = 32 value heads, K = V = 128, conv kernel 4), 3 GDN layers + 1 attention layer,
a dense MLP of 4096 in place of the MoE, vocabulary 8192: the layer shapes where pruning's speed is
decided, at a size a CPU can decode.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from staterank.adapters import get_adapter  # noqa: E402
from staterank.models import Loaded, load_model  # noqa: E402
from staterank.prune.export import decode_rate, state_bytes  # noqa: E402
from staterank.prune.plan import Plan  # noqa: E402
from staterank.prune.surgery import common_group, prune_heads  # noqa: E402


def random_per_layer(loaded, fraction: float, seed: int) -> dict[int, list[int]]:
    g = np.random.default_rng(seed)
    out = {}
    for layer in loaded.adapter.linear_layers(loaded.model):
        h = layer.layout.h_v
        k = min(h - 1, int(round(fraction * h)))
        out[layer.index] = sorted(g.choice(h, size=k, replace=False).tolist())
    return out


def random_groups(loaded, fraction: float, seed: int) -> dict[int, list[int]]:
    """Whole GVA groups (a key head with all its value heads), round(fraction · H_k) per layer, as
    the prune stage's key_groups ranking removes them: no key head is duplicated on export."""
    g = np.random.default_rng(seed)
    out = {}
    for layer in loaded.adapter.linear_layers(loaded.model):
        lo = layer.layout
        k = min(lo.h_k - 1, int(round(fraction * lo.h_k)))
        out[layer.index] = sorted(j for kh in g.choice(lo.h_k, size=k, replace=False).tolist()
                                  for j in range(kh * lo.group, (kh + 1) * lo.group))
    return out


SHAPED = "qwen3_next-shaped"


def qwen3_next_shaped(seed: int = 0) -> Loaded:
    """Random weights, Qwen3-Next's GDN widths (see the module docstring), fp32, eval mode."""
    from staterank.testing import char_tokenizer, tiny_model

    m = tiny_model("qwen3_next", seed, h_k=16, h_v=32, k=128, v=128, vocab=8192, hidden=2048,
                   layers=("linear_attention",) * 3 + ("full_attention",))
    return Loaded(model=m, tokenizer=char_tokenizer(), adapter=get_adapter(m), spec=SHAPED, source="random")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin", help=f"HF id, folder, builtin (default) or {SHAPED}")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the loader's)")
    p.add_argument("--fraction", type=float, default=0.389, help="share of value heads removed per layer (default 0.389)")
    p.add_argument("--plan", default=None, help="a prune run's plan.json instead of random heads")
    p.add_argument("--whole-groups", action="store_true",
                   help="remove whole key-head groups (round(fraction·H_k) per layer, as --ranking key_groups)")
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
    if a.model == SHAPED:
        loaded = qwen3_next_shaped(a.seed)
        loaded.model.to(device=a.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        dtype=getattr(torch, a.dtype) if a.dtype else None)
    else:
        loaded = load_model(a.model, device=a.device, dtype=a.dtype)
    original = loaded.model
    layers = loaded.adapter.linear_layers(original)
    if a.plan:
        plan = Plan.load(a.plan)
        plan.check_model(original)
        removed = {li: list(hs) for li, hs in plan.by_layer().items()}
        what = f"the heads of {a.plan}"
    elif a.whole_groups:
        removed = random_groups(loaded, a.fraction, a.seed)
        what = f"{a.fraction:g} of the key-head groups of every layer (seeded random, whole groups)"
    else:
        removed = random_per_layer(loaded, a.fraction, a.seed)
        what = f"{a.fraction:g} of the value heads of every layer (seeded random)"
    # the export's grouping: one GVA ratio valid in every layer (as a stock checkpoint needs)
    group = common_group([l.layout for l in layers], [removed.get(l.index, []) for l in layers])
    pruned = copy.deepcopy(original)
    after = prune_heads(pruned, removed, group=group)
    n_removed = sum(len(v) for v in removed.values())
    heads = lambda los: (sum(lo.h_k for lo in los), sum(lo.h_v for lo in los))  # noqa: E731
    (k0, v0), (k1, v1) = heads([l.layout for l in layers]), heads(after.values())
    dev = next(original.parameters()).device
    print(f"model {a.model} on {dev}, {next(original.parameters()).dtype}, threads {a.threads}; removed {what}: "
          f"{n_removed} of {v0} value heads; key heads {k0} -> {k1}, value heads {v0} -> {v1} over "
          f"{len(layers)} layers; prompt {a.prompt} (prefill untimed), {a.new_tokens} new tokens, median of {a.repeats}")
    vocab = int(original.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(a.seed)
    last = None
    for b in a.batch:
        ids = torch.randint(3, vocab, (b, a.prompt), generator=g).to(dev)
        for m in (original, pruned):  # warm-up: kernels, allocator, caches
            decode_rate(m, ids, 2)
        rates = {"original": [], "pruned": []}
        for r in range(a.repeats):
            order = (("original", original), ("pruned", pruned)) if r % 2 == 0 else (("pruned", pruned), ("original", original))
            for name, m in order:
                rates[name].append(decode_rate(m, ids, a.new_tokens))
        ro, rp = float(np.median(rates["original"])), float(np.median(rates["pruned"]))
        ctx = a.prompt + a.new_tokens
        sb_o, sb_p = state_bytes(original, b, ctx, a.seed), state_bytes(pruned, b, ctx, a.seed)
        saved = 1 - sb_p["linear_state"] / sb_o["linear_state"]
        print(f"batch {b:>4}: original {ro:9.1f} tok/s, pruned {rp:9.1f} tok/s -> {rp / ro:.2f}x; "
              f"linear state {sb_o['linear_state']:,} -> {sb_p['linear_state']:,} B ({saved:.1%} saved), "
              f"conv state {sb_o['conv_state']:,} -> {sb_p['conv_state']:,} B, "
              f"whole cache {sb_o['total']:,} -> {sb_p['total']:,} B")
        last = (rp / ro, saved)
    print(f"decode_speedup={last[0]:.2f} state_saved={last[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
