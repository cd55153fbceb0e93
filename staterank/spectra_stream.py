"""Threshold ranks at every token from the delta rule's inputs: incremental Gram + certified inertia.

A gated-delta-rule layer's state follows, per value head and token (``recurrence``):
    S_t = D_t S_{t-1} + k_t w_tᵀ,   w_t = β_t (v_t − (D_t S_{t-1})ᵀ k_t),   D_t = exp(g_t)
(one decay per head, or one per key channel). Its Gram G_t = S_t S_tᵀ [K, K] then follows a rank-2 update,
    G_t = D_t G_{t-1} D_t + a_t k_tᵀ + k_t a_tᵀ + |w_t|² k_t k_tᵀ,   a_t = D_t S_{t-1} w_t,
O(K·V + K²) per token instead of the O(K²·V) product, and #{i : σ_i > ε σ_1} (paper Eq. 6) is
certified without computing eigenvalues:

- σ_1² ∈ [θ_lo, θ_hi]. θ_lo is a Rayleigh quotient (a lower bound) of the best vector in a
  4-dimensional Krylov space started from the last token's top vector and the new key; θ_hi is proven
  by a float32 Cholesky of θ_hi·I − G (it exists only if G ≺ θ_hi·I), widened by its rounding bound.
- count = c, for every threshold in [ε²θ_lo, ε²θ_hi]: one block LDLᵀ of G − s·I with D = diag(I_c, −I)
  succeeds: a Cholesky of the leading c×c block (positive definite, so λ_c > s by interlacing) and a
  Cholesky of minus its Schur complement less a margin μ (negative definite with room, so
  λ_{c+1} < s − μ). Sylvester's law of inertia; s and μ bracket the threshold interval.
- The c coordinates of the leading block come from the previous token (the Gram moves by rank 2 a
  token): a pivot that fails is dropped, the Schur complement's largest positive diagonal is added.

Margins carry rounding bounds: Cholesky's backward error (2·γ_{K+1}·‖L‖_F², doubled), and a per-head
running bound on how far the incremental Gram is from the Gram of the exact recurrence (re-formed
exactly when that bound would eat 1 % of the threshold). A state no certificate settles is answered
by fp64 ``svdvals`` of the state, the reference; ``StreamRanks.counts`` says how often. So the counts
are those of the exact-arithmetic states of the given inputs, which fp64 ``svdvals`` of an fp64
replay reproduces unless a σ sits within its rounding (~1e-15 relative) of the threshold.

Below ε ≈ 1e-6 an fp64 Gram cannot separate σ at the threshold from rounding: every state falls back.

Two paths run this algorithm: the numba kernels of ``_stream_kernels`` (used when numba imports; one
compiled call per block of tokens, LAPACK/BLAS in place) and the numpy/scipy methods below (without
numba, or ``compiled=False``). The compiled path adds to the numpy one: the rounding of Householder
rotations of the Schur complement and the drift the rotations add to the Gram are counted in the
certificate (the numpy path leaves both out); a Gram re-formation and a retry before svdvals when the
drift bound widened the threshold interval; a fresh leading block after two lost pivots; σ_1 bounded
without a factorization when the top Ritz direction dominates (see ``_stream_kernels.deflated_upper``).

Shapes: T tokens, H value heads, K key dim, V value dim.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack

try:  # the compiled path (same algorithm and certificates); the numpy path below runs without numba
    from . import _stream_kernels as _nb
except ImportError:  # pragma: no cover - numba missing
    _nb = None

_U64 = float(np.finfo(np.float64).eps) / 2
_U32 = float(np.finfo(np.float32).eps) / 2


def _as_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class StreamRanks:
    """Exact threshold ranks of the states of one layer's delta rule, fed token blocks in order.

    ``feed(k [T, H, K], v [T, H, V], beta [T, H], decay [T, H] or [T, H, K])`` -> ranks [T, H] int64,
    with k as the rule uses it (normalised if the layer normalises) and decay = exp(g). The state
    starts at ``state0`` [H, K, V] (zeros by default) and carries over between calls.
    ``counts``: states settled by a certificate, by fallback to svdvals (``reasons`` says why), and
    Gram re-formations.

    Each head's Gram is kept in an orthonormal basis U [K, K] whose first c columns span the
    directions above the threshold: a new direction found in the Schur complement is rotated into
    the leading block by a Householder reflection, so the next token starts from it. (With a
    per-channel decay U stays a permutation, since D G D must stay O(K²).)
    """

    def __init__(self, eps: float, H: int, K: int, V: int, state0=None, compiled: bool | None = None):
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.eps, self.H, self.K, self.V = float(eps), H, K, V
        self.S = np.zeros((H, K, V)) if state0 is None else _as_np(state0).reshape(H, K, V).copy()
        self.fS = np.ones(H)  # the state is fS[h]·S[h]: a per-head decay scales fS only
        self.U = np.tile(np.eye(K), (H, 1, 1))  # basis of each head's Gram (columns)
        self.G = np.empty((H, K, K))  # Uᵀ S Sᵀ U / fS²
        self.e = np.zeros(H)  # bound on ‖G̃ − Uᵀ S Sᵀ U‖₂ (true scale)
        self.dS = np.zeros(H)  # bound on ‖S − S*‖_F, S* the exact-arithmetic state
        self.eta = np.zeros(H)  # bound on ‖UᵀU − I‖₂
        self.c = np.zeros(H, dtype=np.int64)  # leading-block size that settled the last token
        self.y = np.zeros((H, K))  # last top Ritz vector (U coordinates)
        self.theta = np.zeros(H)  # last λ_1 lower bound
        self.fresh = np.ones(H, dtype=bool)  # choose the leading block anew (pivoted Cholesky)
        self.rotate = True  # False once a per-channel decay is seen
        self.counts = {"certified": 0, "fallback": 0, "reformed": 0}
        self.reasons: dict[str, int] = {}  # why states fell back
        self.why = ""
        self.compiled = (_nb is not None) if compiled is None else bool(compiled)
        if self.compiled and _nb is None:
            raise ImportError("compiled=True needs numba")
        self.rounds = 4  # drop-and-retry rounds of the leading block (compiled path)
        self.skip = np.zeros(H, dtype=np.int64)  # tokens until the deflated σ_1 bound is tried again
        for h in range(H):
            self._reform(h)

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _normalise(self, h: int) -> None:
        f = self.fS[h]
        if f != 1.0:
            self.S[h] *= f
            self.G[h] *= f * f
            self.fS[h] = 1.0

    def _reform(self, h: int) -> None:
        """G̃ := Uᵀ S Sᵀ U formed in fp64 (U re-orthonormalised when it has drifted); its rounding bound
        replaces the drift."""
        self._normalise(h)
        K, V = self.K, self.V
        if self.eta[h] > 1e-10:
            Q, R = np.linalg.qr(self.U[h])
            self.U[h] = Q * np.sign(np.diagonal(R))
            self.eta[h] = 4 * (K + 2) * _U64
        SU = self.U[h].T @ self.S[h]
        self.G[h] = SU @ SU.T
        self.e[h] = 2 * (2 * K + V + 2) * _U64 * float(np.einsum("ij,ij->", SU, SU))

    def _swap(self, h: int, i: int, j: int) -> None:
        if i != j:
            G, U, y = self.G[h], self.U[h], self.y[h]
            G[[i, j]] = G[[j, i]]
            G[:, [i, j]] = G[:, [j, i]]
            U[:, [i, j]] = U[:, [j, i]]
            y[[i, j]] = y[[j, i]]

    def _reflect(self, h: int, c: int, v: np.ndarray, beta: float) -> None:
        """Rotate basis columns c.. by H = I − β v vᵀ (G̃ ← H G̃ H on those rows and columns)."""
        G, U, y = self.G[h], self.U[h], self.y[h]
        G[c:] -= beta * np.outer(v, v @ G[c:])
        G[:, c:] -= beta * np.outer(G[:, c:] @ v, v)
        U[:, c:] -= beta * np.outer(U[:, c:] @ v, v)
        y[c:] -= beta * v * float(v @ y[c:])
        m = self.K - c
        self.eta[h] += 8 * (m + 2) * _U64
        self.e[h] += 16 * (m + 2) * _U64 * float(np.einsum("ii->", G)) * self.fS[h] ** 2

    def _error(self, h: int, trG: float) -> float:
        """Bound on |λ_i(G̃) − λ_i(Uᵀ S* S*ᵀ U)|: G̃'s drift plus the state's."""
        return self.e[h] + 2 * np.sqrt(trG + self.K * self.e[h]) * self.dS[h] + self.dS[h] ** 2

    # ---- tokens ---------------------------------------------------------------------------------
    def feed(self, k, v, beta, decay) -> torch.Tensor:
        k, v, beta, decay = _as_np(k), _as_np(v), _as_np(beta), _as_np(decay)
        T, H, K, V = k.shape[0], self.H, self.K, self.V
        if k.shape != (T, H, K) or v.shape != (T, H, V) or beta.shape != (T, H) \
                or decay.shape not in ((T, H), (T, H, K)):
            raise ValueError(f"feed expects k [T, {H}, {K}], v [T, {H}, {V}], beta [T, {H}], decay [T, {H}] or "
                             f"[T, {H}, {K}]; got {k.shape}, {v.shape}, {beta.shape}, {decay.shape}")
        if decay.ndim == 3 and self.rotate:
            if not all(np.array_equal(np.abs(u), np.abs(u).round()) for u in self.U):
                raise ValueError("a per-channel decay after per-head ones: feed one kind per StreamRanks")
            self.rotate = False
        if self.compiled:
            return torch.from_numpy(self._feed_compiled(k, v, beta, decay))
        out = np.empty((T, H), dtype=np.int64)
        eps2 = self.eps ** 2
        for t in range(T):
            kU, bU = self._update(k[t], v[t], beta[t], decay[t])
            trG = np.einsum("hii->h", self.G) * self.fS ** 2
            for h in range(H):
                if self.e[h] > 0 and self._error(h, trG[h]) > 0.01 * eps2 * self.theta[h]:
                    self._reform(h)
                    self.counts["reformed"] += 1
            theta, theta2, rho, trG = self._ritz(kU)
            self.theta = theta
            for h in range(H):
                out[t, h] = self._certify(h, theta[h], theta2[h], rho[h], trG[h], kU[h], bU[h])
        return torch.from_numpy(out)

    def _feed_compiled(self, k, v, beta, decay) -> np.ndarray:
        T, H = k.shape[:2]
        channel = decay.ndim == 3
        dec = np.ascontiguousarray(decay if channel else decay[:, :, None])
        counts = np.zeros(3, np.int64)
        reasons = np.zeros(len(_nb.REASONS), np.int64)
        out = _nb.feed(np.ascontiguousarray(k), np.ascontiguousarray(v), np.ascontiguousarray(beta), dec,
                       channel, self.rotate, self.eps, self.S, self.fS, self.U, self.G, self.e, self.dS, self.eta,
                       self.c, self.y, self.theta, self.fresh, self.skip, counts, reasons, self.rounds)
        for name, n in zip(("certified", "fallback", "reformed"), counts):
            self.counts[name] += int(n)
        for why, n in zip(_nb.REASONS, reasons):
            if n:
                self.reasons[why] = self.reasons.get(why, 0) + int(n)
        return out

    def _update(self, k, v, beta, d):
        """One token of the recurrence for every head, the Gram by rank 2; rounding bounds grow.
        Returns the key and b = D S w + |w|²/2 · k in each head's basis."""
        H, K = self.H, self.K
        S, G, U = self.S, self.G, self.U
        trG0 = np.einsum("hii->h", G) * self.fS ** 2
        if d.ndim == 2:  # per-channel decay: D S and (U a permutation) D G D, explicitly
            for h in range(H):
                self._normalise(h)
            S *= d[:, :, None]
            dU = np.matmul(np.abs(U).transpose(0, 2, 1), d[:, :, None])[:, :, 0]
            G *= dU[:, :, None] * dU[:, None, :]
            dmax = d.max(1)
        else:
            self.fS *= d
            dmax = d
        for h in np.nonzero(self.fS < 1e-100)[0]:
            self._normalise(h)
        fS = self.fS
        kv = np.matmul(k[:, None, :], S)[:, 0] * fS[:, None]  # (D S)ᵀ k  [H, V]
        w = beta[:, None] * (v - kv)
        a = np.matmul(S, w[:, :, None])[:, :, 0] * fS[:, None]  # D S w  [H, K]
        cw = np.einsum("hv,hv->h", w, w)
        ka = np.matmul(U.transpose(0, 2, 1), np.stack([k, a], axis=2))  # [H, K, 2] in U coordinates
        kU = ka[:, :, 0]
        bU = ka[:, :, 1] + 0.5 * cw[:, None] * kU  # a kᵀ + k aᵀ + c kkᵀ = b kᵀ + k bᵀ
        UW = np.stack([bU, kU], axis=2)
        WW = np.stack([kU, bU], axis=1)
        for h in range(H):
            f = fS[h]
            blas.dger(1.0 / f, w[h], k[h], a=S[h].T, overwrite_a=1)
            blas.dgemm(1.0 / (f * f), UW[h], WW[h], beta=1.0, c=G[h].T, overwrite_c=1)
        # rounding bounds, each new term doubled: the state's drift from the exact recurrence (which
        # (I − β k kᵀ) D carries over) and G̃'s drift from Uᵀ S Sᵀ U
        nk = np.sqrt(np.einsum("hk,hk->h", k, k))
        nw, na = np.sqrt(cw), np.sqrt(np.einsum("hk,hk->h", a, a))
        nv = np.sqrt(np.einsum("hv,hv->h", v, v))
        nS = np.sqrt(np.maximum(dmax ** 2 * trG0, 0) + K * self.e)  # ≥ ‖D S‖_F
        gK = (K + 2) * _U64
        contract = np.maximum(1.0, np.abs(1 - beta * nk ** 2))
        self.dS = contract * dmax * self.dS + 2 * (_U64 * (2 * nS + nk * nw) + nk * gK * beta * (nv + nS * nk))
        nb = na + 0.5 * cw * nk
        growth = _U64 * (2 * nS ** 2 + 2 * (nS + nk * nw) ** 2) + gK * (2 * nS * nw * nk + cw * nk ** 2) \
            + 4 * _U64 * (dmax ** 2 * trG0 + 2 * nb * nk) + 4 * (gK + self.eta) * nb * nk
        self.e = dmax ** 2 * self.e + 2 * growth
        return kU, bU

    def _ritz(self, kU: np.ndarray):
        """Top Ritz pair of each head's Gram on span{y, k, G y, G k} (y: last top vector, k: the new
        key): θ, a Rayleigh quotient less its rounding (a lower bound on λ_1(G̃)), the second Ritz
        value, the residual norm, and tr G̃; all at true scale."""
        H, K = self.H, self.K
        G, f2 = self.G, self.fS ** 2
        y = self.y
        unset = np.abs(y).sum(1) == 0
        if unset.any():  # no top vector yet: the coordinate of the largest diagonal
            idx = np.argmax(np.einsum("hii->hi", G), axis=1)
            y[unset, idx[unset]] = 1.0
        B = np.empty((H, K, 4))
        B[:, :, 0] = y
        B[:, :, 1] = kU
        GB = np.empty_like(B)
        GB[:, :, :2] = np.matmul(G, B[:, :, :2])
        B[:, :, 2:] = GB[:, :, :2]
        GB[:, :, 2:] = np.matmul(G, B[:, :, 2:])
        # Rayleigh-Ritz on span(B), orthonormalised through the eigenvectors of BᵀB
        Bt = B.transpose(0, 2, 1)
        M = np.matmul(Bt, B)
        N = np.matmul(Bt, GB)
        N = 0.5 * (N + N.transpose(0, 2, 1))
        mu, Vm = np.linalg.eigh(M)
        keep = mu > 1e-10 * mu[:, -1:]
        Tm = Vm * np.where(keep, 1 / np.sqrt(np.where(keep, mu, 1)), 0.0)[:, None, :]
        th, X = np.linalg.eigh(np.matmul(Tm.transpose(0, 2, 1), np.matmul(N, Tm)))
        coef = np.matmul(Tm, X[:, :, -1:])
        z = np.matmul(B, coef)[:, :, 0]
        Gz = np.matmul(GB, coef)[:, :, 0]
        zz = np.einsum("hk,hk->h", z, z)
        zz = np.where(zz > 0, zz, 1.0)
        theta = np.einsum("hk,hk->h", z, Gz) / zz
        r = Gz - theta[:, None] * z
        rho = np.sqrt(np.einsum("hk,hk->h", r, r) / zz)
        self.y = z / np.sqrt(zz)[:, None]
        trG = np.einsum("hii->h", G)
        theta = theta - 4 * (K + 8) * _U64 * trG  # the quotient's rounding
        return theta * f2, th[:, -2] * f2, rho * f2, trG * f2

    # ---- the certificate ------------------------------------------------------------------------
    def _certify(self, h: int, theta: float, theta2: float, rho: float, trG: float, kU, bU) -> int:
        eps2 = self.eps ** 2
        e = self._error(h, trG)
        if trG == 0 and e == 0:  # the exact state is zero
            self.counts["certified"] += 1
            return 0
        lo = theta - e  # ≤ λ_1 of the exact state's Gram
        if lo <= 0 or e > 0.02 * eps2 * lo:
            self.why = "drift"
            return self._fallback(h)
        hi = self._upper(h, theta, theta2, rho, trG)
        if hi is None:
            self.why = "sigma_1 bound"
            return self._fallback(h)
        # U's departure from orthonormality scales eigenvalues by at most (1 ± eta)
        w = 2 * self.eta[h]
        c = self._count(h, eps2 * lo * (1 - w) - e, eps2 * (hi + e) * (1 + w) + e, trG, kU, bU)
        if c is None:
            return self._fallback(h)
        self.counts["certified"] += 1
        return c

    def _upper(self, h, theta, theta2, rho, trG):
        """θ_hi ≥ λ_1(G̃), proven by a float32 Cholesky of θ_hi·I − G̃, widened by its rounding."""
        K, f2 = self.K, self.fS[h] ** 2
        gap = max(theta - theta2, rho, 1e-300)
        step = max(4 * rho * rho / gap, 2e-5 * theta)
        g = (K + 1) * _U32 / (1 - (K + 1) * _U32)
        ones = np.ones(K, dtype=np.float32)
        while step < theta:
            t = theta + step
            A = (self.G[h] * -f2).astype(np.float32)
            A.flat[:: K + 1] += np.float32(t)
            L, info = lapack.spotrf(A.T, lower=1, clean=1, overwrite_a=1)
            if info == 0:
                aL = np.abs(L)
                rho_LL = float((aL @ (aL.T @ ones)).max())  # ≥ ρ(|L||Lᵀ|) (Collatz-Wielandt)
                return t + 2 * (g * rho_LL * (1 + 1e-3) + _U32 * (np.sqrt(K) * t + trG))
            step *= 16
        return None

    def _count(self, h, s_lo, s_hi, trG, kU, bU):
        """c with λ_c(G̃) > s_hi and λ_{c+1}(G̃) < s_lo; None if not settled.

        Upper side: a block LDLᵀ of G̃ − s·I, s just under s_lo, with D = diag(I_c, −I): inertia (c, K − c),
        so at most c eigenvalues above s. Lower side: a Cholesky of the same leading block less s'·I,
        s' just over s_hi: by interlacing λ_c ≥ its smallest eigenvalue > s'. The shifts keep room for
        each factorization's backward error (≤ 2·γ_{K+1}·‖L‖_F², checked on the computed factors)."""
        K, f2 = self.K, self.fS[h] ** 2
        g = (K + 1) * _U64 / (1 - (K + 1) * _U64)
        m = 4 * g * (trG + 2 * K * s_hi)
        s_under, s_over = s_lo - m, s_hi + m
        if s_under <= 0 or m > 0.05 * (s_hi - s_lo) + 0.01 * s_lo:
            self.why = "rounding margins"
            return None
        if self.fresh[h]:
            self._pivot(h, s_under / f2)
        for _ in range(2):
            c = K if self.c[h] == K else self._inertia(h, s_under, f2, g, m, kU, bU)
            if c is None:
                break  # self.why says why
            if c == 0:
                return 0
            A = self.G[h][:c, :c] * f2
            A.flat[:: c + 1] -= s_over
            L1, info = lapack.dpotrf(A.T, lower=1, clean=1, overwrite_a=1)
            if info == 0:
                if 2 * g * float(np.einsum("ij,ij->", L1, L1)) * (1 + 1e-3) <= m:
                    return c
                self.why = "rounding of the upper check"
                break
            if c < K:  # the leading block may hold a weak direction: count above s' itself
                if self._inertia(h, s_over, f2, g, m, kU, bU) == c:
                    return c
                self.why = "an eigenvalue near the threshold"
                break
            self._swap(h, info - 1, K - 1)  # full rank no longer: drop the failing pivot, count again
            self.c[h] = K - 1
        self.fresh[h] = True
        return None

    def _inertia(self, h, s, f2, g, m, kU, bU):
        """The number of eigenvalues of G̃ above s (within the allowance m), by a block LDLᵀ of G̃ − s·I
        whose leading block is the previous token's (pivots that fail are dropped; positive Schur-
        complement diagonals, then up to two positive directions found from the new key and write,
        are pivoted in, the latter by a Householder reflection of the basis); None if not settled."""
        K, G = self.K, self.G[h]
        for _ in range(4):
            c = int(self.c[h])
            fro2 = 0.0
            if c:
                A = G[:c, :c] * f2
                A.flat[:: c + 1] -= s
                L1, info = lapack.dpotrf(A.T, lower=1, clean=1, overwrite_a=1)
                if info > 0:  # the leading block lost a direction: drop the failing pivot
                    self._swap(h, info - 1, c - 1)
                    self.c[h] = c - 1
                    continue
                fro2 = float(np.einsum("ij,ij->", L1, L1))
                X = blas.dtrsm(1.0, L1, (G[:c, c:] * f2).T, side=1, lower=1, trans_a=1)
                C = G[c:, c:] * f2 - X @ X.T
                fro2 += float(np.einsum("ij,ij->", X, X))
            else:
                C = G * f2
            C.flat[:: K - c + 1] -= s
            found = 0
            while c < K:
                dC = C.diagonal()
                i = int(np.argmax(dC))
                if dC[i] <= 0:
                    L2, info = lapack.dpotrf((-C).T, lower=1, clean=1, overwrite_a=1)
                    if info == 0:
                        fro2 += float(np.einsum("ij,ij->", L2, L2))
                        break
                    # a positive direction off the coordinates: rotate it into place
                    if not self.rotate or found == 16:
                        self.why = "new directions the basis cannot take"
                        return None
                    x, alpha = _top_direction(C, np.stack([kU[c:], bU[c:]], axis=1))
                    if not alpha > 0:  # not near the new key and write: start from C's largest diagonals
                        top = np.argsort(dC)[-4:]
                        E = np.zeros((C.shape[0], top.size))
                        E[top, np.arange(top.size)] = 1.0
                        x, alpha = _top_direction(C, E, steps=6)
                    if not alpha > 0:
                        self.why = "no positive direction found"
                        return None
                    v = x.copy()
                    v[0] += np.copysign(1.0, x[0])
                    beta = 2.0 / float(v @ v)
                    self._reflect(h, c, v, beta)
                    p = C @ v
                    C -= beta * np.outer(v, p) + beta * np.outer(p, v) - beta * beta * float(v @ p) * np.outer(v, v)
                    kU = kU.copy()
                    bU = bU.copy()
                    kU[c:] -= beta * v * float(v @ kU[c:])
                    bU[c:] -= beta * v * float(v @ bU[c:])
                    found += 1
                    i = 0
                    if not C[0, 0] > 0:
                        self.why = "no positive direction found"
                        return None
                col = C[:, i] / np.sqrt(C[i, i])
                C -= np.outer(col, col)
                fro2 += float(col @ col)
                if i:
                    C[[0, i]] = C[[i, 0]]
                    C[:, [0, i]] = C[:, [i, 0]]
                    self._swap(h, c, c + i)
                C = C[1:, 1:]  # its rows follow G's order from c + 1
                c += 1
            self.c[h] = c
            if 2 * g * fro2 * (1 + 1e-3) > m:  # the factors' backward error exceeds the allowance
                self.why = "rounding of the block LDLᵀ"
                return None
            return c
        self.why = "leading block"
        return None

    def _pivot(self, h: int, s: float) -> None:
        """A fresh leading block: greedy diagonal pivoting (LAPACK dpstrf) of G̃ − s·I."""
        K = self.K
        A = self.G[h] - s * np.eye(K)
        _, piv, rank, _ = lapack.dpstrf(A.T, lower=1, tol=0.0)
        order = piv[:K] - 1
        self.G[h] = self.G[h][np.ix_(order, order)]
        self.U[h] = self.U[h][:, order]
        self.y[h] = self.y[h][order]
        self.c[h] = max(int(rank), 0)
        self.fresh[h] = False

    def _fallback(self, h: int) -> int:
        sig = np.linalg.svd(self.S[h] * self.fS[h], compute_uv=False)
        self.counts["fallback"] += 1
        self.reasons[self.why] = self.reasons.get(self.why, 0) + 1
        self.fresh[h] = True
        return int((sig > self.eps * sig[0]).sum()) if sig.size and sig[0] > 0 else 0


def _top_direction(C: np.ndarray, starts: np.ndarray, steps: int = 3) -> tuple[np.ndarray, float]:
    """A unit x with the largest xᵀCx found on the block Krylov space {X, CX, ..} of C from
    ``starts`` X [m, p] (Rayleigh-Ritz: the most positive eigenvalue, not the largest in magnitude),
    and xᵀCx."""
    if C.shape[0] <= 4 * starts.shape[1] * (steps + 1):  # small: solve it
        w, Y = np.linalg.eigh(C)
        return Y[:, -1], float(w[-1])
    B = [starts / np.sqrt((starts * starts).sum(0) + 1e-300)]
    for _ in range(steps):
        nxt = C @ B[-1]
        B.append(nxt / np.sqrt((nxt * nxt).sum(0) + 1e-300))
    B = np.concatenate(B, axis=1)
    CB = C @ B
    M = B.T @ B
    mu, Vm = np.linalg.eigh(M)
    keep = mu > 1e-9 * mu[-1]  # directions the Gram can still tell apart
    Tm = Vm[:, keep] / np.sqrt(mu[keep])
    P = Tm.T @ (B.T @ CB) @ Tm
    _, Y = np.linalg.eigh(0.5 * (P + P.T))
    x = B @ (Tm @ Y[:, -1])
    x /= np.sqrt(x @ x)
    return x, float(x @ (C @ x))


def stream_ranks(k, v, beta, decay, eps: float = 1e-4, state0=None) -> torch.Tensor:
    """Threshold ranks [T, H] of every state of one delta-rule run (see ``StreamRanks``)."""
    T, H, K = k.shape
    return StreamRanks(eps, H, K, v.shape[-1], state0).feed(k, v, beta, decay)
