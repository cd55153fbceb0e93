"""#20 record: the stream engine equals per-token fp64 svdvals on adversarial runs (K = 8)."""
import math

import pytest
import torch

pytest.importorskip("numba")
from staterank.spectra_stream import StreamRanks, replay

def run(eps, T, seed, beta_mode="mix", repeat=False, K=8, V=8, H=3, block=5):
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(-torch.arange(K, dtype=torch.float64) * 1.2)
    ks, vs, bs, ds = [], [], [], []
    k = v = None
    for t in range(T):
        if k is None or not (repeat and t % 3):
            k = torch.nn.functional.normalize(torch.randn(H, K, generator=g, dtype=torch.float64) * scale, dim=-1)
            v = torch.randn(H, V, generator=g, dtype=torch.float64)
        beta = {"low": torch.full((H,), 1e-6), "one": torch.full((H,), 1 - 1e-7), "mix": torch.rand(H, generator=g)}[beta_mode].double()
        d = torch.exp(-torch.rand(H, generator=g, dtype=torch.float64) / math.e)
        ks.append(k); vs.append(v); bs.append(beta); ds.append(d)
    k, v, b, d = (torch.stack(x) for x in (ks, vs, bs, ds))
    S = replay(k, v, b, d)
    sig = torch.linalg.svdvals(S)
    ref = (sig > eps * sig[..., :1]).sum(-1)
    eng = StreamRanks(eps, H, K, V)
    out = torch.cat([eng.feed(k[i:i+block], v[i:i+block], b[i:i+block], d[i:i+block]) for i in range(0, T, block)])
    return out, ref, eng

@pytest.mark.parametrize("eps", [1e-3, 1e-4])
@pytest.mark.parametrize("bm", ["low", "one", "mix"])
@pytest.mark.parametrize("rep", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_stream_equals_svdvals(eps, bm, rep, seed):
    out, ref, eng = run(eps, 40, seed, bm, rep)
    assert torch.equal(out, ref), eng.counts
