"""staterank.spectra against an fp64 SVD reference. Shapes: K key dim, V value dim, N = min(K, V)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from staterank import spectra as sp
from staterank import spectra_engine as eng

torch.set_num_threads(1)

METHODS = ("auto", "gram", "svd")


def ref_sigma(S):
    return torch.linalg.svdvals(S.to(torch.float64))


def ref_rank(S, eps=1e-4):
    s = ref_sigma(S)
    return (s > eps * s[..., :1]).sum(-1)


def with_spectrum(sigma, K, V, seed=0, dtype=torch.float64):
    """[K, V] matrix with singular values ``sigma`` (len <= min(K, V)) and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    r = sigma.numel()
    U = torch.linalg.qr(torch.randn(K, r, generator=g, dtype=torch.float64))[0]
    W = torch.linalg.qr(torch.randn(V, r, generator=g, dtype=torch.float64))[0]
    return ((U * sigma) @ W.T).to(dtype)


def gdn_states(T, H=2, K=16, V=12, seed=0):
    """[T, H, K, V] fp32 states of the gated delta rule from a zero state."""
    g = torch.Generator().manual_seed(seed)
    S = torch.zeros(H, K, V)
    out = []
    for _ in range(T):
        k = torch.randn(H, K, generator=g)
        k = k / k.norm(dim=-1, keepdim=True)
        v = torch.randn(H, V, generator=g)
        beta = torch.rand(H, 1, generator=g)
        S = S * torch.exp(-torch.rand(H, 1, 1, generator=g))
        S = S + k[:, :, None] * (beta * (v - torch.einsum("hkv,hk->hv", S, k)))[:, None, :]
        out.append(S)
    return torch.stack(out)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c", [0.07, 0.15, 0.3, 0.45])  # 4/c not an integer: no σ on ε
def test_decaying_spectra_match_svd(method, c):
    K = V = 32
    sigma = 10.0 ** (-c * torch.arange(K, dtype=torch.float64))
    S = with_spectrum(sigma, K, V, seed=int(c * 100))
    expect = int((sigma > 1e-4).sum())
    for X in (S, S.float()):
        got = sp.singular_values(X, method=method)
        assert got.dtype == torch.float64 and got.shape == (K,)
        assert torch.all(got[:-1] >= got[1:])
        # the gram engine resolves σ to ~1e-7·σ_1 absolute
        torch.testing.assert_close(got, ref_sigma(X), rtol=1e-6, atol=1e-6)
        # 10^{-c·i} never lands within fp32 noise of ε = 1e-4 for these c, so the count is known
        assert sp.threshold_rank(X, method=method).item() == expect == ref_rank(X).item()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("side", [1 - 1e-2, 1 + 1e-2])
def test_straddling_threshold_safe_margin(method, side):
    # 5 values clearly above, one just across ε·σ_1 (1% margin, far beyond fp32 noise), rest below
    eps = 1e-4
    sigma = torch.tensor([1.0, 0.3, 0.1, 1e-2, 1e-3, eps * side, 1e-6, 1e-7])
    S = with_spectrum(sigma, 16, 24, seed=3).float()
    expect = 6 if side > 1 else 5
    assert sp.threshold_rank(S, eps, method=method).item() == expect == ref_rank(S, eps).item()
    assert sp.spectrum_stats(S, eps, method=method)["threshold_rank"].item() == expect


@pytest.mark.parametrize("delta", [1e-12, -1e-12, 1e-9, -1e-9, 1e-6, -1e-6, 0.0])
def test_on_threshold_agrees_with_fp64_svd(delta, monkeypatch):
    # σ right on ε·σ_1: only an SVD can decide; the engine must hand these to it and agree exactly
    eps = 1e-4
    sigma = torch.tensor([2.0, 1.0, 0.5, 2 * eps * (1 + delta), 2 * eps * (1 + delta) * (1 - 1e-10), 1e-9])
    S = with_spectrum(sigma, 12, 12, seed=7)
    calls = []
    real = eng._svd_sigma
    monkeypatch.setattr(eng, "_svd_sigma", lambda X: calls.append(X.shape[0]) or real(X))
    assert sp.threshold_rank(S, eps, method="gram").item() == ref_rank(S, eps).item()
    if abs(delta) <= 1e-9:
        assert calls, "an on-threshold σ must go to the SVD fallback"


def test_fallback_only_for_ambiguous(monkeypatch):
    S = gdn_states(40, H=4, K=16, V=16).float()
    calls = []
    real = eng._svd_sigma
    monkeypatch.setattr(eng, "_svd_sigma", lambda X: calls.append(X.shape[0]) or real(X))
    r = sp.threshold_rank(S, method="gram")
    assert torch.equal(r, ref_rank(S))
    assert sum(calls) <= 2  # random states essentially never sit in the band


def test_gdn_states_exact_and_bounded():
    T, K, V = 24, 16, 12
    S = gdn_states(T, H=3, K=K, V=V)
    r = sp.threshold_rank(S)
    assert r.shape == (T, 3)
    assert torch.equal(r, ref_rank(S))
    t = torch.arange(1, T + 1)[:, None]
    assert torch.all(r <= sp.rank_bound(t, K, V))
    # the bound settles t <= 1 without an eigensolve, and agrees with the full computation
    assert torch.equal(sp.threshold_rank(S, tokens=t), r)
    assert torch.equal(sp.threshold_rank(S[:1], tokens=1), torch.ones(1, 3, dtype=torch.long))
    assert torch.equal(sp.threshold_rank(torch.zeros(2, K, V), tokens=torch.tensor([0, 1])), torch.zeros(2, dtype=torch.long))


def test_rank_bound():
    assert sp.rank_bound(5, 128, 64) == 5
    assert sp.rank_bound(500, 128, 64) == 64
    assert sp.rank_bound(0, 4, 4) == 0
    assert torch.equal(sp.rank_bound(torch.tensor([1, 10, 100]), 16, 32), torch.tensor([1, 10, 16]))
    assert np.array_equal(sp.rank_bound(np.array([3, 30]), 8, 8), np.array([3, 8]))


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix(method):
    S = torch.zeros(3, 8, 5)
    stats = sp.spectrum_stats(S, method=method)
    assert set(stats) == set(sp.STAT_NAMES) and tuple(stats) == sp.STAT_NAMES
    for name, val in stats.items():
        assert val.shape == (3,)
        assert not torch.isnan(val).any(), name
        assert torch.all(val == 0), name
    assert stats["threshold_rank"].dtype == torch.long
    assert torch.all(sp.singular_values(S, method=method) == 0)


@pytest.mark.parametrize("method", METHODS)
def test_rank_one(method):
    k = torch.randn(10)
    S = torch.outer(k / k.norm(), 3 * torch.randn(7))
    stats = sp.spectrum_stats(S, method=method)
    fro = S.double().norm()
    assert stats["threshold_rank"].item() == 1
    assert stats["entropy_rank"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["stable_rank"].item() == pytest.approx(1.0, rel=1e-6)
    for name in ("nuclear_norm", "spectral_norm", "frobenius_norm"):
        assert stats[name].item() == pytest.approx(fro.item(), rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_identity(method):
    S = torch.eye(9)
    stats = sp.spectrum_stats(S, method=method)
    assert stats["threshold_rank"].item() == 9
    for name, want in [("entropy_rank", 9), ("stable_rank", 9), ("nuclear_norm", 9), ("frobenius_norm", 3), ("spectral_norm", 1)]:
        assert stats[name].item() == pytest.approx(want, rel=1e-12), name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("K,V", [(8, 20), (20, 8), (1, 5), (5, 1), (16, 17)])
def test_rectangular(method, K, V):
    S = torch.randn(4, K, V) * torch.logspace(0, -6, V)
    s = sp.singular_values(S, method=method)
    assert s.shape == (4, min(K, V))
    torch.testing.assert_close(s, ref_sigma(S), rtol=1e-6, atol=1e-6 * s[..., :1].max().item())
    assert torch.equal(sp.threshold_rank(S, method=method), ref_rank(S))


def test_batched_shapes_preserved():
    S = torch.randn(2, 3, 4, 6, 5)
    stats = sp.spectrum_stats(S)
    for val in stats.values():
        assert val.shape == (2, 3, 4)
    assert sp.singular_values(S).shape == (2, 3, 4, 5)
    flat = sp.spectrum_stats(S.reshape(-1, 6, 5))
    for name in sp.STAT_NAMES:
        torch.testing.assert_close(stats[name].reshape(-1), flat[name])
    empty = sp.spectrum_stats(torch.zeros(0, 6, 5))
    assert all(v.shape == (0,) for v in empty.values())


def test_threads_and_chunks_give_same_result(monkeypatch):
    S = gdn_states(20, H=4, K=12, V=12)
    one = sp.spectrum_stats(S, threads=1)
    monkeypatch.setattr(eng, "_CHUNK_ELEMS", 7 * 144)
    for threads in (1, 3):
        got = sp.spectrum_stats(S, threads=threads)
        for name in sp.STAT_NAMES:
            torch.testing.assert_close(got[name], one[name], rtol=1e-12, atol=0)


def test_formulas_vs_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        S = rng.standard_normal((7, 11)) * rng.uniform(0.01, 10)
        s = np.linalg.svd(S, compute_uv=False)
        p = s / s.sum()
        stats = sp.spectrum_stats(torch.from_numpy(S))
        assert stats["entropy_rank"].item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
        assert stats["stable_rank"].item() == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-9)
        assert stats["nuclear_norm"].item() == pytest.approx(s.sum(), rel=1e-9)
        assert stats["frobenius_norm"].item() == pytest.approx(np.linalg.norm(S), rel=1e-12)
        assert stats["spectral_norm"].item() == pytest.approx(s[0], rel=1e-12)
        sig = torch.from_numpy(s)
        assert sp.entropy_rank(sig).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
        assert sp.stable_rank(sig).item() == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-12)
        assert sp.threshold_rank(sigma=sig, eps=0.1).item() == int((s > 0.1 * s[0]).sum())
    # zero entries of σ contribute 0·log 0 = 0
    assert sp.entropy_rank(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(2.0)
    assert sp.stable_rank(torch.zeros(3)).item() == 0 and sp.entropy_rank(torch.zeros(3)).item() == 0


def test_eps_is_configurable():
    S = with_spectrum(torch.tensor([1.0, 1e-1, 1e-2, 1e-3, 1e-5, 1e-7]), 8, 8, seed=1)
    assert [sp.threshold_rank(S, e).item() for e in (0.5, 0.05, 5e-3, 5e-4, 5e-6, 5e-8)] == [1, 2, 3, 4, 5, 6]
    # below the gram route's resolution, auto switches to the SVD
    assert sp.threshold_rank(S, 5e-8).item() == sp.threshold_rank(S, 5e-8, method="svd").item() == 6


def test_bad_arguments():
    S = torch.randn(4, 4)
    with pytest.raises(ValueError):
        sp.threshold_rank(S, method="nope")
    with pytest.raises(ValueError):
        sp.threshold_rank(S, -1.0)
    with pytest.raises(ValueError):
        sp.threshold_rank()
    with pytest.raises(ValueError):
        sp.threshold_rank(S, sigma=torch.ones(4))
    with pytest.raises(ValueError):
        sp.spectrum_stats(torch.randn(5))


matrices = st.tuples(
    st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1), st.floats(0.0, 1.5), st.integers(-20, 20)
)


def _random(K, V, seed, decay):
    g = torch.Generator().manual_seed(seed)
    cols = 10.0 ** (-decay * torch.arange(V, dtype=torch.float64))
    return (torch.randn(K, V, generator=g, dtype=torch.float64) * cols).float()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices)
def test_properties(m):
    K, V, seed, decay, p = m
    S = _random(K, V, seed, decay)
    stats = sp.spectrum_stats(S)
    r = stats["threshold_rank"].item()
    assert 0 <= r <= min(K, V)
    assert r == ref_rank(S).item()
    assert stats["nuclear_norm"].item() >= stats["spectral_norm"].item() * (1 - 1e-12)
    assert stats["frobenius_norm"].item() >= stats["spectral_norm"].item() * (1 - 1e-12)
    assert 1 - 1e-9 <= stats["entropy_rank"].item() <= min(K, V) + 1e-9
    assert 1 - 1e-9 <= stats["stable_rank"].item() <= min(K, V) + 1e-9
    # power-of-two scaling is exact in floating point, so ranks must not move at all
    scaled = sp.spectrum_stats(S * 2.0**p)
    assert scaled["threshold_rank"].item() == r
    assert scaled["entropy_rank"].item() == pytest.approx(stats["entropy_rank"].item(), rel=1e-9)
    assert scaled["stable_rank"].item() == pytest.approx(stats["stable_rank"].item(), rel=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    S = gdn_states(30, H=4, K=16, V=16)
    cpu = sp.spectrum_stats(S)
    gpu = sp.spectrum_stats(S.cuda())
    assert torch.equal(gpu["threshold_rank"].cpu(), cpu["threshold_rank"])
    torch.testing.assert_close(gpu["nuclear_norm"].cpu(), cpu["nuclear_norm"], rtol=1e-6, atol=0)


def test_torch_threads_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sp.spectrum_stats(torch.randn(6, 5, 5), threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("scale", [1e-170, 1e170])
def test_fp64_states_far_from_one_keep_their_spectrum(scale):
    """fp64 squares can under- or overflow the Gram: states are scaled by a power of two first."""
    g = torch.Generator().manual_seed(0)
    S = (torch.randn(4, 8, 3, generator=g, dtype=torch.float64) @ torch.randn(4, 3, 6, generator=g, dtype=torch.float64))
    ref = sp.spectrum_stats(S)
    got = sp.spectrum_stats(S * scale)
    assert torch.equal(got["threshold_rank"], ref["threshold_rank"]) and ref["threshold_rank"].tolist() == [3] * 4
    for k in ("nuclear_norm", "frobenius_norm", "spectral_norm"):
        torch.testing.assert_close(got[k] / scale, ref[k], rtol=1e-12, atol=0)
    torch.testing.assert_close(got["stable_rank"], ref["stable_rank"], rtol=1e-12, atol=0)


def test_non_finite_states_are_refused():
    S = torch.zeros(2, 4, 4)
    S[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inf or nan"):
        sp.threshold_rank(S)


def _record(monkeypatch):
    """Route spy: every call of the engines' workers, by name, with its batch size."""
    calls = []
    for name in ("_svd_sigma", "_gram_sigma"):
        real = getattr(eng, name)
        monkeypatch.setattr(eng, name, lambda X, *a, _n=name, _r=real, **k: calls.append((_n, X.shape[0])) or _r(X, *a, **k))
    return calls


def test_auto_routes_to_svd_below_min_gram_eps(monkeypatch):
    """"auto" takes the Gram route down to ε = 1e-6 (inclusive) and fp64 svdvals below it: compared
    by the route taken, since both routes agree on easy spectra."""
    S = gdn_states(6, H=2, K=10, V=9)
    calls = _record(monkeypatch)
    for fn in (lambda e: sp.threshold_rank(S, e), lambda e: sp.spectrum_stats(S, e)["threshold_rank"]):
        for eps, route in [(1e-4, "_gram_sigma"), (1e-6, "_gram_sigma"), (9.99e-7, "_svd_sigma"), (5e-8, "_svd_sigma"),
                           (0.0, "_svd_sigma")]:
            calls.clear()
            r = fn(eps)
            assert torch.equal(r, ref_rank(S, eps)), eps
            assert calls and {c[0] for c in calls} == {route}, (eps, calls)
    # no ε (singular_values): the Gram route; explicit methods are obeyed at any ε
    calls.clear()
    sp.singular_values(S)
    assert {c[0] for c in calls} == {"_gram_sigma"}
    calls.clear()
    sp.threshold_rank(S, 5e-8, method="gram")
    assert "_gram_sigma" in {c[0] for c in calls}
    calls.clear()
    sp.threshold_rank(S, 1e-2, method="svd")
    assert {c[0] for c in calls} == {"_svd_sigma"}


@pytest.mark.parametrize("scale", [1e170, 1e-170])
def test_fp64_ambiguous_fallback_is_rescaled(scale, monkeypatch):
    """A far-from-one fp64 state with σ exactly on ε·σ_1 goes to the SVD fallback inside the Gram
    engine, which works in the power-of-two-scaled units: its σ must come back in the state's own."""
    eps = 1e-4
    g = torch.Generator().manual_seed(5)
    easy = torch.randn(8, 6, generator=g, dtype=torch.float64)
    on = with_spectrum(torch.tensor([1.0, 0.5, 0.2, eps, 1e-7]), 8, 6, seed=11)  # σ_4 = ε·σ_1
    base = torch.stack([easy, on * 3.0, easy.flip(0) / 7.0])  # [3, 8, 6]; only the middle one is ambiguous
    S = base * scale
    calls = _record(monkeypatch)
    stats = sp.spectrum_stats(S, eps, method="gram")
    svd_batches = [n for name, n in calls if name == "_svd_sigma"]
    assert svd_batches == [1], "the on-threshold state (and only it) must go to the fallback"
    ref = torch.linalg.svdvals(base) * scale  # the unscaled state's spectrum, times the scale
    fro = torch.linalg.vector_norm(base, dim=(-2, -1)) * scale
    s1 = ref[:, 0]
    torch.testing.assert_close(stats["spectral_norm"], s1, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["nuclear_norm"], ref.sum(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["frobenius_norm"], fro, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["stable_rank"], (fro / s1) ** 2, rtol=1e-10, atol=0)
    p = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(stats["entropy_rank"], torch.exp(-(p * p.log()).sum(-1)), rtol=1e-10, atol=0)
    assert torch.equal(stats["threshold_rank"], ref_rank(S, eps))
    assert stats["threshold_rank"][0].item() == 6 and stats["threshold_rank"][2].item() == 6
    sig = sp.singular_values(S, method="gram")  # no ε, no fallback: still in the state's units
    torch.testing.assert_close(sig[:, 0], s1, rtol=1e-12, atol=0)


def test_tokens_shortcut_only_for_bound_at_most_one():
    """t = 2 writes bound the rank by 2, which settles nothing: such states are solved. A genuinely
    rank-2 state stays 2, two writes along one key are rank 1, and a state that decayed to 0 is 0."""
    g = torch.Generator().manual_seed(2)
    K, V = 9, 7
    k1, k2 = torch.randn(K, generator=g), torch.randn(K, generator=g)
    v1, v2 = torch.randn(V, generator=g), torch.randn(V, generator=g)
    two = torch.outer(k1, v1) + torch.outer(k2, v2)  # rank 2
    same_key = torch.outer(k1, v1) + torch.outer(k1, v2)  # rank 1 after 2 writes
    # delta rule, β = 1, unit key written twice: the second write replaces the first (rank 1)
    k = k1 / k1.norm()
    S1 = torch.outer(k, v1)
    overwrite = S1 + torch.outer(k, v2 - S1.T @ k)
    for S, want in [(two, 2), (same_key, 1), (overwrite, 1)]:
        assert ref_rank(S).item() == want
        assert sp.threshold_rank(S, tokens=2).item() == want
        assert sp.threshold_rank(S[None], tokens=torch.tensor([2])).item() == want
    # a batch mostly settled by the shortcut (t <= 1) with t = 2 states among them
    batch = torch.stack([torch.outer(k1, v1), torch.zeros(K, V), torch.outer(k2, v2), same_key, two,
                         torch.outer(v1[:1].repeat(K), v2)])
    t = torch.tensor([1, 0, 1, 2, 2, 1])
    assert torch.equal(sp.threshold_rank(batch, tokens=t), torch.tensor([1, 0, 1, 1, 2, 1]))
    assert torch.equal(sp.threshold_rank(batch, tokens=t), ref_rank(batch))


@pytest.mark.parametrize("method", ["auto", "svd"])  # the Gram route cannot resolve 1e-9 (its docstring)
def test_tokens_shortcut_off_below_min_gram_eps(method):
    """An fp32 rank-one write has fp64 rank > 1 at ε = 1e-9 (fp32 rounding of k_i·v_j): tokens = 1
    must not claim rank 1 there; the count is fp64 svdvals'."""
    eps = 1e-9
    g = torch.Generator().manual_seed(4)
    S = torch.stack([torch.outer(torch.randn(16, generator=g), torch.randn(12, generator=g)) for _ in range(3)])
    assert S.dtype == torch.float32
    sig = ref_sigma(S)
    ratio = sig / sig[:, :1]
    assert not ((ratio - eps).abs() < 0.05 * eps).any()  # no σ near the threshold: the count is robust
    want = (ratio > eps).sum(-1)
    assert (want > 1).all()
    assert torch.equal(sp.threshold_rank(S, eps, tokens=1, method=method), want)
    assert torch.equal(sp.threshold_rank(S[:1], eps, tokens=torch.tensor([1]), method=method), want[:1])
    # mixed with zero states (t = 0 bound): those stay 0 either way
    Z = torch.cat([S, torch.zeros(3, 16, 12)])
    assert torch.equal(sp.threshold_rank(Z, eps, tokens=torch.tensor([1, 1, 1, 0, 0, 0]), method=method),
                       torch.cat([want, torch.zeros(3, dtype=torch.long)]))


def test_where_accelerator_grams_are_solved(monkeypatch):
    # meta tensors stand in for CUDA ones: the choice depends on the device type, EIGH_PLACE and,
    # for "auto", one timing per (device, N, workers)
    timed = []
    monkeypatch.setattr(eng, "_host_is_faster", lambda S, threads: timed.append((min(S.shape[-2:]), threads)) or True)
    monkeypatch.setattr(eng, "_PLACE_CACHE", {})
    gpu = torch.empty(3, 40, 33, device="meta")
    assert not eng._eig_on_host(torch.empty(3, 40, 40), 4)  # CPU states: solved in place by CPU workers
    assert eng._eig_on_host(gpu, 4) and eng._eig_on_host(gpu[:1], 4) and eng._eig_on_host(gpu, 2)
    assert timed == [(33, 4), (33, 2)]
    for place, host in (("device", False), ("host", True)):
        monkeypatch.setattr(eng, "EIGH_PLACE", place)
        assert eng._eig_on_host(gpu, 4) is host and eng._eig_on_host(torch.empty(3, 8, 8, device="meta"), 1) is host
    assert len(timed) == 2


def test_timing_the_places_runs_both(monkeypatch):
    calls = []
    real = eng._map_cpu
    monkeypatch.setattr(eng, "_map_cpu", lambda fn, items, threads: calls.append(len(items)) or real(fn, items, threads))
    grams = []
    real_gram = eng._gram
    monkeypatch.setattr(eng, "_gram", lambda X: grams.append(X) or real_gram(X))
    S = gdn_states(5, H=3, K=9, V=7)  # 15 states
    assert eng._host_is_faster(S, 2) in (True, False)
    assert calls == [2, 2, 2]  # host runs, the 256-state sample split over both workers
    flat = S.reshape(-1, 9, 7)
    assert len(grams) == 1 and grams[0].shape[0] == 256  # a small batch is repeated up to the sample size
    assert torch.equal(grams[0][0], flat[0]) and torch.equal(grams[0][-1], flat[-1])  # spread over all of it
    assert {tuple(x.flatten().tolist()) for x in grams[0]} == {tuple(x.flatten().tolist()) for x in flat}


@pytest.mark.parametrize("threads", [1, 2])
def test_host_route_equals_in_place_route(threads, monkeypatch):
    """The accelerator path (Grams on the device, eigensolves in CPU workers, ambiguous matrices
    fetched back for the SVD) run on CPU tensors: the same numbers as the in-place Gram route."""
    eps = 1e-4
    S32 = gdn_states(20, H=3, K=12, V=10)  # fp32 [T, H, K, V]
    on = with_spectrum(torch.tensor([1.0, 0.5, 0.2, eps, 1e-7]), 8, 6, seed=11)  # σ_4 = ε·σ_1: ambiguous
    g = torch.Generator().manual_seed(5)
    S64 = torch.stack([torch.randn(8, 6, generator=g, dtype=torch.float64), on * 3.0]) * 1e170
    want = [(sp.spectrum_stats(S, eps, method="gram", threads=threads), sp.threshold_rank(S, eps, threads=threads),
             sp.singular_values(S, threads=threads)) for S in (S32, S64)]
    monkeypatch.setattr(eng, "_eig_on_host", lambda S, threads: True)
    monkeypatch.setattr(eng, "_CUDA_CHUNK_ELEMS", 7 * 12 * 10)  # several device chunks, uneven
    calls = _record(monkeypatch)
    for S, (stats, rank, sigma) in zip((S32, S64), want):
        got = sp.spectrum_stats(S, eps, method="gram", threads=threads)
        assert got.keys() == stats.keys()
        for k in stats:
            assert got[k].shape == stats[k].shape and torch.equal(got[k], stats[k]), k
        assert torch.equal(sp.threshold_rank(S, eps, threads=threads), rank)
        assert torch.equal(sp.singular_values(S, threads=threads), sigma)
    assert ("_svd_sigma", 1) in calls and not any(n == "_gram_sigma" for n, _ in calls)
    assert torch.equal(want[0][1], ref_rank(S32, eps)) and torch.equal(want[1][1], ref_rank(S64, eps))


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e160])
def test_svd_method_norms_survive_extreme_fp64_states(scale):
    """The SVD route's Frobenius norm (and stable rank) is scaled like the Gram route's: no inf or 0."""
    S = torch.randn(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * scale
    a, b = sp.spectrum_stats(S, method="svd"), sp.spectrum_stats(S)
    for name in ("frobenius_norm", "stable_rank"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=0)
