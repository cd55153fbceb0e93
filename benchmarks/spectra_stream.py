"""Issue #20 prototype: threshold ranks from the rule's inputs (``staterank.spectra_stream``) vs
per-token fp64 svdvals of an fp64 replay, on a synthetic Qwen3-Next-sized layer (H heads, K = V).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/spectra_stream.py [--tokens 192 --eps 1e-4]

The layer is ``benchmarks/spectra.py``'s (L2-normalised anisotropic keys, per-head memories from ~3
to ~3000 tokens), its rule inputs fed to the engine and its fp64 states to the baseline. The last
line is ``speedup=<x> mismatches=<n>``; the engine's fallbacks to svdvals count in its time (its numba
kernels' one-off compilation does not: a tiny run before the timed one compiles them).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from staterank.spectra_stream import StreamRanks  # noqa: E402


def inputs(T, H, K, V, seed):
    g = torch.Generator().manual_seed(seed)
    mem = torch.exp(torch.empty(H).uniform_(math.log(3), math.log(3000), generator=g))
    kscale = torch.exp(-torch.empty(H, 1).uniform_(0.0, 8.0 / K, generator=g) * torch.arange(K))
    rot = torch.linalg.qr(torch.randn(H, K, K, generator=g))[0]
    ks, vs, bs, ds = [], [], [], []
    for _ in range(T):
        k = torch.einsum("hij,hj->hi", rot, torch.randn(H, K, generator=g) * kscale)
        ks.append(k / k.norm(dim=-1, keepdim=True))
        vs.append(torch.randn(H, V, generator=g))
        bs.append(torch.sigmoid(torch.randn(H, generator=g)))
        ds.append((-torch.rand(H, generator=g) * 2 / mem).exp())
    return torch.stack(ks), torch.stack(vs), torch.stack(bs), torch.stack(ds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--eps", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--refresh", type=int, default=16)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    k, v, b, d = inputs(a.tokens, a.heads, a.dim, a.dim, a.seed)
    S = torch.zeros(a.heads, a.dim, a.dim, dtype=torch.float64)
    # compile the numba kernels (or load them from numba's cache) before timing: a one-off per process
    StreamRanks(a.eps, 1, 4, 4).feed(k[:2, :1, :4], v[:2, :1, :4], b[:2, :1], d[:2, :1])
    eng = StreamRanks(a.eps, a.heads, a.dim, a.dim, krylov_steps=a.steps, refresh=a.refresh)
    base = mine = 0.0
    mism = 0
    blk = a.block
    for t0 in range(0, a.tokens, blk):
        refs = []
        for t in range(t0, min(t0 + blk, a.tokens)):
            S = S * d[t].double()[:, None, None]
            w = b[t].double()[:, None] * (v[t].double() - torch.einsum("hkv,hk->hv", S, k[t].double()))
            S = S + k[t].double()[:, :, None] * w[:, None, :]
            ta = time.perf_counter()
            sig = torch.linalg.svdvals(S)
            refs.append((sig > a.eps * sig[:, :1]).sum(-1))
            base += time.perf_counter() - ta
        t1 = time.perf_counter()
        r = eng.feed(k[t0:t0 + blk], v[t0:t0 + blk], b[t0:t0 + blk], d[t0:t0 + blk])
        mine += time.perf_counter() - t1
        mism += int((r != torch.stack(refs)).sum())
    n = a.tokens * a.heads
    print(f"{n} states {a.dim}x{a.dim}, eps {a.eps:g}: per-token fp64 svdvals {base / n * 1e6:.0f} us/state, "
          f"engine {mine / n * 1e6:.0f} us/state; {eng.counts}")



    print("us/state reform krylov cap certify fallback update refactor", (eng.stats[16:23] / n / 1e3).round(1))
    print("inc fails: cap-eig, cert, shift-dominated, woodbury-dominated", eng.FB[:, 9:13].sum(0))
    print(f"speedup={base / mine:.2f} mismatches={mism}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
