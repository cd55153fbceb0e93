"""Exact per-token threshold ranks of delta-rule states from the recurrence (issue #20).

A leaf module (torch, numpy, scipy). Shapes: T tokens, H heads, K key dim, V value dim.

The rule writes S_t = d_t ∘ S_{t-1} + k_t w_tᵀ (d_t a scalar per head, or per key channel as in
Kimi; w_t = β_t (v_t − (d_t ∘ S_{t-1})ᵀ k_t)), so the Gram G = S Sᵀ [K, K] follows a rank-2 update
    G_t = D G_{t-1} D + a kᵀ + k aᵀ + ‖w‖² k kᵀ,   a = (D S_{t-1}) w,   D = diag(d_t),
O(K·V + K²) per token instead of the O(K²·V) product. ``IncrementalRanks`` keeps, per head, that Gram
Ĝ and the fp64 state Ŝ it is the Gram of, and counts #σ_i > ε σ_1 by Sylvester inertia of Ĝ − τ I
(one LAPACK ``dsytrf``, or a Cholesky ``dpotrf`` for states of full count) at two shifts τ± that
bracket every threshold consistent with the error bounds below. Equal counts certify the answer;
otherwise (a σ within the bounds of the threshold) the state's fp64 ``svdvals`` decide. Never an
uncertified count.

Error bounds (all computed per state, all cheap):
- The given states are fp32 and the rule rounded each of them: S (given) ≠ Ŝ (the recurrence in
  exact arithmetic on the rule's fp32 inputs). η = ‖S − Ŝ‖_F (+ Ŝ's own fp64 rounding, tracked)
  bounds every |σ_i(S) − σ_i(Ŝ)| (Weyl). It grows like √t·u32·‖S‖_F, so the Gram is re-formed
  from the given state (exactly, in fp64) every ``reform_every`` tokens or when η leaves
  ``max_drift``·ε σ_1: that restarts Ŝ = S.
- φ bounds ‖Ĝ − Ŝ Ŝᵀ‖ (the fp64 rounding of the updates, accumulated with the decay), ξ the
  backward error of the factorization (Higham Thm 10.5 / 11.3 with a generous p(n) = 8n).
- σ_1(Ŝ)² = λ_1(Ĝ) lies in [ρ, hi]: ρ the Rayleigh quotient of a power iteration warm-started
  from the previous token's vector, hi an upper bound (‖Ĝ‖_F, or tighter the 2×2 bound of the
  compression on x, x⊥ with λ_1 of the latter ≤ tr Ĝ − ρ, Ĝ being PSD).
The lower count is taken at τ+ = (ε σ1max + η)² + φ + ξ, the upper at τ− = (ε σ1min − η)² − φ − ξ.

Below ε ≈ 1e-7 a Gram in fp64 cannot decide (τ meets fp64 rounding of λ_1): every state then
goes to ``svdvals``, as in ``spectra``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import lapack

__all__ = ["IncrementalRanks", "svd_ranks"]

_U64 = float(np.finfo(np.float64).eps) / 2
_MIN_EPS = 1e-7


def svd_ranks(S: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference: fp64 ``svdvals`` counts, S [..., K, V] -> [...] long."""
    sig = torch.linalg.svdvals(S.to(torch.float64))
    return (sig > eps * sig[..., :1]).sum(-1)


def _inertia_pos(ldu: np.ndarray, ipiv: np.ndarray) -> tuple[int, float]:
    """(# positive eigenvalues of D, Σ_blocks ‖|D_b|‖₂ Σ_{j∈b} ‖L_j‖²) of a lower ``dsytrf``."""
    n = ldu.shape[0]
    d = np.diag(ldu)
    L = np.tril(ldu, -1)
    col2 = 1.0 + np.einsum("ij,ij->j", L, L)
    pos, weight, j = 0, 0.0, 0
    two = ipiv < 0
    if not two.any():
        return int((d > 0).sum()), float(np.abs(d) @ col2)
    while j < n:
        if two[j]:
            a, b, c = d[j], ldu[j + 1, j], d[j + 1]
            det = a * c - b * b
            pos += 1 if det < 0 else (2 if a + c > 0 else 0) if det > 0 else int(a + c > 0)
            col2[j + 1] -= b * b  # b is D's, not L's
            weight += (abs(a) + abs(b) + abs(c)) * (col2[j] + col2[j + 1])  # ‖|D_b|‖₂ ≤ its abs sum
            j += 2
        else:
            pos += int(d[j] > 0)
            weight += abs(d[j]) * col2[j]
            j += 1
    return pos, weight


class IncrementalRanks:
    """Exact threshold ranks #σ_i > ε σ_1 of a stream of delta-rule states, per head.

    ``feed(states, k, w, decay)`` with states [T, H, K, V] (the rule's outputs S_t, any float dtype),
    k [T, H, K], w [T, H, V] (the written value, S_t ≈ d_t ∘ S_{t-1} + k_t w_tᵀ) and decay d_t
    [T, H] or [T, H, K] (exp(g_t)) -> LongTensor [T, H], equal to fp64 ``svdvals`` counts of
    ``states``. Call it block after block; the engine starts from a zero state (or ``start``'s S0
    [H, K, V]). ``fallbacks`` / ``reforms`` / ``states_seen`` count what happened.
    """

    def __init__(self, eps: float = 1e-4, *, reform_every: int = 64, max_drift: float = 2e-3,
                 power_iters: int = 2):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.reform_every = int(reform_every)
        self.max_drift = float(max_drift)
        self.power_iters = int(power_iters)
        self.S = self.G = None
        self.fallbacks = self.reforms = self.states_seen = 0

    def start(self, S0: torch.Tensor | None = None, *, H: int | None = None, K: int | None = None,
              V: int | None = None) -> None:
        """Begin a sequence at S0 [H, K, V] (or zeros of that size)."""
        if S0 is None:
            S0 = torch.zeros(H, K, V, dtype=torch.float64)
        self.S = None
        self._anchor(S0.to(torch.float64).cpu().clone(), torch.ones(S0.shape[0], dtype=torch.bool))
        self.reforms = 0
        self.x = torch.full(self.S.shape[:2], self.S.shape[1] ** -0.5, dtype=torch.float64)
        self.zero_start = not bool(S0.any())
        self.t = 0

    def _anchor(self, S: torch.Tensor, heads: torch.Tensor) -> None:
        """Re-form Ĝ exactly from S (fp64, exact products of fp32 states) for ``heads`` [H] bool."""
        if self.S is None or self.S.shape != S.shape:
            H = S.shape[0]
            self.S, self.G = S.clone(), S @ S.mT
            self.phi = torch.zeros(H, dtype=torch.float64)
            self.psi = torch.zeros(H, dtype=torch.float64)
            self.since = torch.zeros(H, dtype=torch.long)
            self.cap = torch.full((H,), min(S.shape[-2:]), dtype=torch.long)
        idx = heads.nonzero().squeeze(-1)
        self.S[idx] = S[idx]
        self.G[idx] = S[idx] @ S[idx].mT
        K, V = S.shape[-2:]
        # the product itself: ≤ V·u·Σ|s_ik||s_jk| entrywise, ≤ V·u·‖S‖_F² in norm
        self.phi[idx] = V * _U64 * (S[idx] ** 2).sum((-2, -1)) * 1.01
        self.psi[idx] = 0
        self.since[idx] = 0
        self.cap[idx] = min(K, V)  # a re-formed state carries the rule's rounding in every direction
        self.reforms += len(idx)

    def _step(self, k: torch.Tensor, w: torch.Tensor, d: torch.Tensor) -> None:
        """Ŝ ← D Ŝ + k wᵀ and Ĝ ← D Ĝ D + a kᵀ + k aᵀ + ‖w‖² k kᵀ for all heads; k [H, K], w [H, V],
        d [H, K] (a per-head decay broadcast over K)."""
        P = d[:, :, None] * self.S  # D Ŝ_{t-1}
        a = (P @ w[:, :, None])[..., 0]  # [H, K]
        w2 = (w * w).sum(-1)
        Gn, Pn, an, kn, wn = (torch.linalg.vector_norm(x, dim=dims) for x, dims in
                              ((self.G, (-2, -1)), (P, (-2, -1)), (a, -1), (k, -1), (w, -1)))
        dmax = d.abs().amax(-1)
        G = self.G
        G.mul_(d[:, :, None] * d[:, None, :])
        G.add_(a[:, :, None] * k[:, None, :]).add_(k[:, :, None] * a[:, None, :])
        G.add_((w2[:, None] * k)[:, :, None] * k[:, None, :])
        self.S = P.add_(k[:, :, None] * w[:, None, :])
        # rounding of this step (each entry: ≤ 4 roundings of terms bounded by these norms), plus
        # the Gram of the previous Ŝ's rounding ψ carried through a (≤ 2ψ‖w‖‖k‖) and ψ itself
        kw = kn * wn
        V = w.shape[-1]
        self.phi = dmax ** 2 * self.phi + 6 * _U64 * (dmax ** 2 * Gn + 2 * an * kn + w2 * kn ** 2) \
            + (V + 2) * _U64 * (2 * Pn * kw + w2 * kn ** 2) + 2 * self.psi * dmax * kw
        self.psi = dmax * self.psi + 3 * _U64 * (Pn + kw)
        self.since += 1

    def _sigma1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[H] bounds lo ≤ λ_1(Ĝ) ≤ hi (before φ): power iteration warm-started from the last x."""
        G, x = self.G, self.x
        for _ in range(self.power_iters):
            y = (G @ x[:, :, None])[..., 0]
            nrm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
            x = torch.where(nrm > 0, y / torch.where(nrm > 0, nrm, 1), x)
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        self.x = x
        y = (G @ x[:, :, None])[..., 0]
        rho = (x * y).sum(-1)
        r = torch.linalg.vector_norm(y - rho[:, None] * x, dim=-1)
        tr = G.diagonal(dim1=-2, dim2=-1).sum(-1)
        fro = torch.linalg.vector_norm(G, dim=(-2, -1))
        mu = (tr - rho).clamp(min=0)  # ≥ λ_1 of the compression on x⊥ (Ĝ PSD up to φ)
        half = (rho - mu) / 2
        two = (rho + mu) / 2 + torch.sqrt(half * half + r * r)  # λ_1 of [[ρ, ‖r‖], [‖r‖, μ]]
        hi = torch.minimum(fro, tr).minimum(two)
        # rounding of ρ, r, tr, ‖·‖_F themselves: K·u relative, generous
        n = G.shape[-1]
        lo = rho * (1 - 4 * n * _U64) - 4 * n * _U64 * fro
        return lo.clamp(min=0), hi * (1 + 4 * n * _U64) + 4 * n * _U64 * fro

    def feed(self, states: torch.Tensor, k: torch.Tensor, w: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        T, H, K, V = states.shape
        if self.S is None or self.S.shape != (H, K, V):
            self.start(H=H, K=K, V=V)
        out = torch.empty(T, H, dtype=torch.long)
        k, w = k.to(torch.float64).cpu(), w.to(torch.float64).cpu()
        decay = decay.to(torch.float64).cpu()
        if decay.dim() == 2:
            decay = decay[:, :, None].expand(T, H, K)
        for i in range(T):
            self._step(k[i], w[i], decay[i])
            self.t += 1
            out[i] = self._ranks(states[i].to(torch.float64).cpu())
        return out

    def _ranks(self, S: torch.Tensor) -> torch.Tensor:
        """Certified counts [H] for the given states S [H, K, V] at this token."""
        H, K, V = S.shape
        n = min(K, V)
        self.states_seen += H
        eps = self.eps
        if eps < _MIN_EPS:  # an fp64 Gram cannot resolve σ this far down: SVD throughout
            self.fallbacks += H
            return svd_ranks(S, eps)
        D = S - self.S
        eta = torch.linalg.vector_norm(D, dim=(-2, -1)) * (1 + 1e-12) + self.psi \
            + 2 * _U64 * torch.linalg.vector_norm(S, dim=(-2, -1))
        lo, hi = self._sigma1()
        s1min = (lo - self.phi).clamp(min=0).sqrt() - eta
        s1max = (hi + self.phi).sqrt() + eta
        # drifted too far (or due): re-form from the given state, which restarts Ŝ = S, η ≈ 0
        redo = (self.since >= self.reform_every) | (eta > self.max_drift * eps * s1min.clamp(min=0))
        if bool(redo.any()):
            self._anchor(S, redo)
            D = S - self.S
            eta = torch.linalg.vector_norm(D, dim=(-2, -1)) + self.psi
            lo, hi = self._sigma1()
            s1min = (lo - self.phi).clamp(min=0).sqrt() - eta
            s1max = (hi + self.phi).sqrt() + eta
        cap = self.cap if self.zero_start else torch.full_like(self.cap, n)
        cap = torch.minimum(cap, torch.full_like(cap, self.t)) if self.zero_start else cap
        th_plus = eps * s1max + eta
        th_minus = eps * s1min - eta
        tau_plus = (th_plus ** 2 + self.phi).tolist()
        tau_minus = torch.where(th_minus > 0, th_minus ** 2 - self.phi, -1.0).tolist()
        G = self.G.numpy()
        fro = torch.linalg.vector_norm(self.G, dim=(-2, -1)).tolist()
        tr = self.G.diagonal(dim1=-2, dim2=-1).sum(-1).tolist()
        caps = cap.tolist()
        eta_l, s1min_l = eta.tolist(), s1min.tolist()
        ranks = [0] * H
        bad = []
        prev = getattr(self, "_prev", None)
        eye = np.eye(K)
        for h in range(H):
            if s1min_l[h] <= 0 and hi[h] + self.phi[h] <= 0:
                ranks[h] = 0 if eta_l[h] == 0 else -1  # a zero Ŝ: rank 0 only if S is Ŝ exactly
                if ranks[h] < 0:
                    bad.append(h)
                continue
            if th_minus[h] <= 0:  # the bounds do not separate σ_1 from 0
                bad.append(h)
                continue
            # fast path: a head at full count last time is likely still there: one Cholesky at τ+
            if prev is not None and prev[h] == n:
                xi_c = 2 * (K + 1) * _U64 * tr[h] * 1.01  # Demmel: success proves Ĝ − τ + ΔA ≻ 0
                _, info = lapack.dpotrf(G[h] - (tau_plus[h] + xi_c) * eye, lower=1, clean=0)
                if info == 0 and n == K:
                    ranks[h] = n
                    continue
            lower = self._count(G[h], tau_plus[h], fro[h], tr[h], +1)
            upper = caps[h] if lower == caps[h] else self._count(G[h], tau_minus[h], fro[h], tr[h], -1)
            if lower == upper:
                ranks[h] = lower
            else:
                bad.append(h)
        out = torch.tensor(ranks, dtype=torch.long)
        if bad:
            self.fallbacks += len(bad)
            out[bad] = svd_ranks(S[bad], eps)
        self._prev = out.tolist()
        return out

    @staticmethod
    def _count(G: np.ndarray, tau: float, fro: float, tr: float, side: int) -> int:
        """#eigenvalues of G above τ ± ξ (side +1: a lower bound on the count of G at τ; −1: an
        upper bound), from the inertia of one Bunch–Kaufman LDLᵀ of G − (τ ± ξ)I, which is exact
        for G − (τ ± ξ)I + ΔA with ‖ΔA‖ ≤ ξ. ξ is guessed first (growth ~1, as for a PSD G) and
        checked against the factors; a larger one refactors."""
        n = G.shape[0]
        xi = 8 * n * _U64 * (fro + n * abs(tau) + 2 * tr)
        while True:
            A = G.copy()
            A.flat[:: n + 1] -= tau + side * xi
            ldu, ipiv, info = lapack.dsytrf(A, lower=1, overwrite_a=1)
            if info < 0:
                raise RuntimeError(f"dsytrf: illegal argument {-info}")
            pos, weight = _inertia_pos(ldu, ipiv)
            # |ΔA| ≤ p(n)·u·(|A| + |L||D||Lᵀ|), p(n) = 8n; ‖|L||D||Lᵀ|‖ ≤ Σ_b ‖|D_b|‖₂ Σ_{j∈b} ‖L_j‖²
            need = 8 * n * _U64 * (fro + n * (abs(tau) + xi) + weight) * 1.01
            if need <= xi:
                return pos
            xi = 2 * need


def _self_check(T: int = 64, H: int = 4, K: int = 16, V: int = 16, eps: float = 1e-4, seed: int = 0) -> int:
    """Mismatches of IncrementalRanks vs ``svd_ranks`` on a random rule run (a smoke check)."""
    g = torch.Generator().manual_seed(seed)
    S = torch.zeros(H, K, V)
    eng = IncrementalRanks(eps)
    bad = 0
    for _ in range(T):
        k = torch.nn.functional.normalize(torch.randn(H, K, generator=g), dim=-1)
        v = torch.randn(H, V, generator=g)
        beta = torch.rand(H, generator=g)
        d = torch.exp(-torch.rand(H, generator=g) / math.e)
        S = S * d[:, None, None]
        w = beta[:, None] * (v - torch.einsum("hkv,hk->hv", S, k))
        S = S + k[:, :, None] * w[:, None, :]
        r = eng.feed(S[None], k[None], w[None], d[None])[0]
        bad += int((r != svd_ranks(S, eps)).sum())
    return bad
