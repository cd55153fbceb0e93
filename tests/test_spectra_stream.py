"""Issue #20 (prototype): the incremental engine's threshold ranks equal per-token fp64 svdvals of an
fp64 replay, on adversarial runs: spectra decaying smoothly through the threshold, repeated tokens,
β near 0 and 1, per-head and per-channel decay."""

import math

import pytest
import torch

from staterank.spectra_stream import StreamRanks


def _run(eps, T, seed, beta_mode, repeat, channel, K=8, V=8, H=3, compiled=None):
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(-torch.arange(K, dtype=torch.float64) * 1.2)  # σ fall smoothly through ε·σ_1
    ks, vs, bs, ds = [], [], [], []
    k = v = None
    for t in range(T):
        if k is None or not (repeat and t % 3):  # repeated tokens: the same k, v thrice
            k = torch.nn.functional.normalize(torch.randn(H, K, generator=g, dtype=torch.float64) * scale, dim=-1)
            v = torch.randn(H, V, generator=g, dtype=torch.float64)
        beta = {"low": torch.full((H,), 1e-6), "one": torch.full((H,), 1 - 1e-7),
                "mix": torch.rand(H, generator=g)}[beta_mode].double()
        d = torch.exp(-torch.rand(H, K if channel else 1, generator=g, dtype=torch.float64) / math.e)
        ks.append(k), vs.append(v), bs.append(beta), ds.append(d if channel else d[:, 0])
    k, v, b, d = (torch.stack(x) for x in (ks, vs, bs, ds))
    S = torch.zeros(H, K, V, dtype=torch.float64)
    ref = []
    for t in range(T):
        S = S * (d[t][:, :, None] if channel else d[t][:, None, None])
        w = b[t][:, None] * (v[t] - torch.einsum("hkv,hk->hv", S, k[t]))
        S = S + k[t][:, :, None] * w[:, None, :]
        sig = torch.linalg.svdvals(S)
        ref.append((sig > eps * sig[:, :1]).sum(-1))
    eng = StreamRanks(eps, H, K, V, compiled=compiled)
    out = torch.cat([eng.feed(k[i:i + 5], v[i:i + 5], b[i:i + 5], d[i:i + 5]) for i in range(0, T, 5)])
    return out, torch.stack(ref), eng


@pytest.mark.parametrize("eps", [1e-3, 1e-4])
@pytest.mark.parametrize("beta_mode", ["low", "one", "mix"])
@pytest.mark.parametrize("repeat", [False, True])
@pytest.mark.parametrize("channel", [False, True])
def test_counts_equal_svdvals(eps, beta_mode, repeat, channel):
    for seed in range(3):
        out, ref, eng = _run(eps, 40, seed, beta_mode, repeat, channel)
        assert torch.equal(out, ref), (seed, eng.counts, eng.reasons)


@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("beta_mode", ["one", "mix"])
def test_numpy_path(beta_mode, channel):
    """The numpy path (used without numba) keeps its own counts exact."""
    for seed in range(2):
        out, ref, eng = _run(1e-4, 40, seed, beta_mode, False, channel, compiled=False)
        assert torch.equal(out, ref), (seed, eng.counts, eng.reasons)


def test_mostly_certified():
    out, ref, eng = _run(1e-4, 80, 0, "mix", False, False)
    assert torch.equal(out, ref)
    assert eng.counts["fallback"] < out.numel() // 5, eng.reasons


def test_bad_eps():
    with pytest.raises(ValueError):
        StreamRanks(0.0, 1, 2, 2)
