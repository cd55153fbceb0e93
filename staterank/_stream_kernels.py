"""numba kernels of ``spectra_stream``: certified threshold ranks of a delta-rule state, token by token.

Per value head the carry is the state S [K, V], its Gram G = S Sᵀ [K, K] (updated by rank 2 a token,
re-formed when its drift bound grows), the last top vector x [K] and running error bounds. A token:

1. σ₁² = λ₁(G) is bracketed: θ from a block Krylov space started at x and the key (a lower bound, as
   any Rayleigh quotient), an upper bound by Kato-Temple or by a Cholesky of θ(1 + δ) I − G;
2. ONE Bunch-Kaufman factorization P L D Lᵀ Pᵀ = G − s₊ I + ΔA (LAPACK dsytrf) at the top s₊ of the
   threshold interval [s₋, s₊] ∋ τ = ε² λ₁ gives the count #{λ > s₊} = #{positive eigenvalues of D}
   (Sylvester). It holds over the whole interval and for the exact-arithmetic state: for s in
   [s₋, s₊], G_exact − s I = P L (D + Y) Lᵀ Pᵀ with ‖Y‖ ≤ ‖L⁻¹‖² (‖ΔA‖ + s₊ − s₋ + ‖G − G_exact‖),
   so when that is below min |eig(D)| no eigenvalue of D + Y changes sign (Weyl). ‖ΔA‖ is bounded by
   the backward error of Bunch-Kaufman (Higham, Thm 11.3: |ΔA| ≤ p(n) u (|A| + P|L||D||Lᵀ|Pᵀ)),
   ‖L⁻¹‖ from its computed inverse (dtrtri) with that inverse's own error bound;
3. a state the certificate does not settle (an eigenvalue within the bounds' width of the threshold,
   or ε so small that an fp64 Gram cannot separate it, ε ≲ 1e-6) is answered by fp64 singular values
   of its state (dgesdd).

The polynomial constants of the rounding theorems are taken generously (8(n + 2) u for p(n) u).
Shapes: K key dim, V value dim.
"""

from __future__ import annotations

import llvmlite.binding as _ll
import numpy as np
from numba import njit
from numba import types as _t
from numba.extending import get_cython_function_address as _addr


def _ext(lib: str, name: str, nargs: int):
    """scipy's cython LAPACK/BLAS function as a named external symbol (pointers passed as integers), so
    the kernels that call it can be cached."""
    sym = f"staterank_{lib}_{name}"
    _ll.add_symbol(sym, _addr(f"scipy.linalg.cython_{lib}", name))
    return _t.ExternalFunction(sym, _t.void(*([_t.intp] * nargs)))


_xdpotrf = _ext("lapack", "dpotrf", 5)  # uplo n a lda info
_xdsytrf = _ext("lapack", "dsytrf", 8)  # uplo n a lda ipiv work lwork info
_xdsyconv = _ext("lapack", "dsyconv", 8)  # uplo way n a lda ipiv e info
_xdtrtri = _ext("lapack", "dtrtri", 6)  # uplo diag n a lda info
_xdgesdd = _ext("lapack", "dgesdd", 14)  # jobz m n a lda s u ldu vt ldvt work lwork iwork info

U = float(np.finfo(np.float64).eps) / 2

# counters (index into stats)
N_CERT, N_FALLBACK, N_REFORM, N_CAP, N_RETRY, N_HOPELESS = range(6)
STAT_NAMES = ("certified", "fallback", "gram_reformed", "sigma1_capped", "retried", "eps_too_small")
# bound slots (index into B[h]): drift of the state and of the Gram from the exact recurrence
E_G, THETA = range(2)
N_STATS = 32

import ctypes as _ct
_ll.add_symbol("staterank_clock_gettime", _ct.cast(_ct.CDLL(None).clock_gettime, _ct.c_void_p).value)
_xclock = _t.ExternalFunction("staterank_clock_gettime", _t.int32(_t.int32, _t.intp))


@njit(cache=True)
def now(ts):
    _xclock(1, ts.ctypes.data)
    return ts[0] * 1000000000 + ts[1]


@njit(cache=True)
def _ad(a):
    return np.int64(a.ctypes.data)


# Fortran views: a C-ordered n x n array is its own transpose for a symmetric matrix.
@njit(cache=True)
def potrf(A, n):
    """dpotrf('L') of the n x n Fortran matrix at A (lda n); info (0: positive definite)."""
    if n == 0:
        return 0
    iv = np.empty(3, np.int32)
    iv[0], iv[1], iv[2] = n, n, 0
    ch = np.full(1, 76, np.uint8)
    pi = _ad(iv)
    _xdpotrf(_ad(ch), pi, _ad(A), pi + 4, pi + 8)
    return iv[2] + (ch[0] - 76)


@njit(cache=True)
def sytrf(A, n, ipiv, work):
    """dsytrf('L') then dsyconv('L', 'C') of the n x n Fortran matrix at A: afterwards A's strict lower
    triangle is L (unit lower triangular), its diagonal and ``e`` (returned; e[i] = D[i + 1, i]) are D,
    and P L D Lᵀ Pᵀ = A. Returns (info, e)."""
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = n, n, work.shape[0], 0
    ch = np.empty(2, np.uint8)
    ch[0], ch[1] = 76, 67
    pi = _ad(iv)
    _xdsytrf(_ad(ch), pi, _ad(A), pi + 4, _ad(ipiv), _ad(work), pi + 8, pi + 12)
    info = iv[3]
    e = np.zeros(n)
    if info != 0:
        return info, e
    _xdsyconv(_ad(ch), _ad(ch) + 1, pi, _ad(A), pi + 4, _ad(ipiv), _ad(e), pi + 12)
    return iv[3] + (ch[0] - 76) + (ch[1] - 67), e


@njit(cache=True)
def trtri_unit_lower(A, n):
    """dtrtri('L', 'U') of the n x n Fortran matrix at A, in place; info."""
    iv = np.empty(3, np.int32)
    iv[0], iv[1], iv[2] = n, n, 0
    ch = np.empty(2, np.uint8)
    ch[0], ch[1] = 76, 85
    pi = _ad(iv)
    _xdtrtri(_ad(ch), _ad(ch) + 1, pi, _ad(A), pi + 4, pi + 8)
    return iv[2] + (ch[0] - 76) + (ch[1] - 85)


@njit(cache=True)
def singular_values(S):
    """All singular values of S [K, V] (dgesdd 'N' on a copy), descending."""
    K, V = S.shape
    A = S.copy()  # C [K, V] = Fortran V x K: same singular values
    s = np.empty(min(K, V))
    mn, mx = min(K, V), max(K, V)
    lwork = 3 * mn + max(mx, 7 * mn) + 64
    work = np.empty(lwork)
    iwork = np.empty(8 * mn, np.int32)
    ch = np.full(1, 78, np.uint8)
    iv = np.empty(6, np.int32)
    iv[0], iv[1], iv[2], iv[3], iv[4], iv[5] = V, K, V, 1, lwork, 0
    pi = _ad(iv)
    _xdgesdd(_ad(ch), pi, pi + 4, _ad(A), pi + 8, _ad(s), _ad(work), pi + 12, _ad(work), pi + 12, _ad(work),
             pi + 16, _ad(iwork), pi + 20)
    if iv[5] + (ch[0] - 78) != 0:
        s[:] = np.nan
    return s


@njit(cache=True)
def _n_above(w, s):
    n = 0
    for i in range(w.shape[0]):
        if w[i] > s:
            n += 1
    return n


@njit(cache=True)
def fallback(Sh, eps, stats):
    sv = singular_values(Sh)
    stats[N_FALLBACK] += 1
    return _n_above(sv, eps * sv[0])


# ---- the recurrence -------------------------------------------------------------------------------
@njit(cache=True)
def fro2(A):
    s = 0.0
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            s += A[i, j] * A[i, j]
    return s


@njit(cache=True, fastmath={"contract"})
def update(Sh, Gh, Bh, k, v, beta, g):
    """One token for one head: S ← g S + k wᵀ with w = β (v − g Sᵀk), and the Gram by rank 2:
    G ← g² G + a kᵀ + k aᵀ + |w|² k kᵀ with a = g S_old w. Grows the drift bounds; returns ‖S_old‖_F."""
    K, V = Sh.shape
    y = np.zeros(V)
    for i in range(K):
        ki = k[i]
        for j in range(V):
            y[j] += ki * Sh[i, j]
    w = np.empty(V)
    for j in range(V):
        w[j] = beta * (v[j] - g * y[j])
    ww = np.dot(w, w)
    a = np.empty(K)
    nS2 = 0.0
    for i in range(K):
        acc = 0.0
        s2 = 0.0
        ki = k[i]
        for j in range(V):
            x = Sh[i, j]
            acc += x * w[j]
            s2 += x * x
            Sh[i, j] = g * x + ki * w[j]
        a[i] = g * acc
        nS2 += s2
    g2 = g * g
    p = np.sqrt(ww) * k
    for i in range(K):
        ai, ki, pi = a[i], k[i], p[i]
        for j in range(K):
            Gh[i, j] = g2 * Gh[i, j] + (ai * k[j] + ki * a[j]) + pi * p[j]
    nS = np.sqrt(nS2)
    k0 = np.sqrt(np.dot(k, k))
    na = np.sqrt(np.dot(a, a))
    sw = np.sqrt(ww)
    gV = (V + 4) * U
    # G vs S Sᵀ of the carried (computed) S: the update's entries round by ≤ 4u of their terms (p pᵀ vs
    # |w|² k kᵀ 8u), a = g S w by γ_V; S's own rounding is added by the caller once ‖S_new‖ is known
    Bh[E_G] = g2 * Bh[E_G] + 4 * U * (g2 * nS * nS + 2 * na * k0) + (8 * U + 2 * gV) * ww * k0 * k0 \
        + 2 * gV * g * nS * sw * k0
    return a, ww


@njit(cache=True)
def reform(Sh, Gh, Bh):
    """Re-form G = S Sᵀ from the state; resets the Gram's drift to the product's rounding."""
    K, V = Sh.shape
    Gh[:, :] = np.dot(Sh, Sh.T)
    for i in range(K):
        for j in range(i + 1, K):
            x = 0.5 * (Gh[i, j] + Gh[j, i])
            Gh[i, j] = x
            Gh[j, i] = x
    Bh[E_G] = 2 * (V + 4) * U * fro2(Sh)


# ---- σ₁ ---------------------------------------------------------------------------------------------
@njit(cache=True)
def sigma1(Gh, xh, kh, steps):
    """λ₁(G) ≥ θ: the top Ritz value of the block Krylov space of G from [x, k] with ``steps`` blocks
    beyond the first. Returns (θ, |r|, gap estimate, ‖G‖_F); x := its Ritz vector."""
    K = Gh.shape[0]
    nb = 2 * (steps + 1)
    Bm = np.zeros((K, nb))
    if np.dot(xh, xh) > 0:
        Bm[:, 0] = xh
    else:
        best, idx = -1.0, 0
        for i in range(K):
            if Gh[i, i] > best:
                best, idx = Gh[i, i], i
        Bm[idx, 0] = 1.0
    Bm[:, 1] = kh
    q = 0
    for st in range(steps + 1):
        if st > 0:
            nxt = np.dot(Gh, Bm[:, q - 2:q].copy()) if q >= 2 else np.dot(Gh, Bm[:, :1].copy())
            for j in range(nxt.shape[1]):
                Bm[:, q + j] = nxt[:, j]
        top = q + 2 if q + 2 <= nb else nb
        newq = q
        for j in range(q, top):
            col = Bm[:, j].copy()
            n0 = np.sqrt(np.dot(col, col))
            for _ in range(2):
                for i in range(newq):
                    col -= np.dot(Bm[:, i], col) * Bm[:, i]
            n1 = np.sqrt(np.dot(col, col))
            if n1 > 1e-10 * n0 and n1 > 0:
                Bm[:, newq] = col / n1
                newq += 1
        for j in range(newq, top):
            Bm[:, j] = 0.0
        q = newq
        if q < 2:
            break
    Bq = Bm[:, :q].copy()
    GB = np.dot(Gh, Bq)
    N = np.dot(Bq.T.copy(), GB)
    N = 0.5 * (N + N.T)
    th, Y = np.linalg.eigh(N)
    coef = Y[:, q - 1].copy()
    z = np.dot(Bq, coef)
    Gz = np.dot(GB, coef)
    zz = np.dot(z, z)
    theta = np.dot(z, Gz) / zz
    r2 = 0.0
    for i in range(K):
        ri = Gz[i] - theta * z[i]
        r2 += ri * ri
    xh[:] = z / np.sqrt(zz)
    return theta, np.sqrt(r2 / zz)


@njit(cache=True)
def sigma1_hi(Gh, theta, r, nG, work, stats):
    """An upper bound on λ₁(G) from θ and its residual r: Kato-Temple with λ₂ ≤ b from the Frobenius
    norm, else the Cholesky of s I − G for s = θ(1 + δ), δ = 1e-9 .. 1e-1, which proves λ₁ ≤ s plus
    its backward error γ_{K+1} tr(s I − G) (L Lᵀ = s I − G + ΔG is positive semi-definite); else ‖G‖_F."""
    K = Gh.shape[0]
    rnd = 4 * (K + 4) * U * nG
    hi = nG * (1 + 1e-12) + rnd
    # b ≥ λ₂: ‖G‖_F² ≥ λ₁² + λ₂² and λ₁ ≥ θ
    b2 = nG * nG * (1 + 1e-9) - theta * theta
    b = np.sqrt(max(b2, 0.0)) * (1 + 1e-9) + rnd
    lo = theta - rnd
    if b < lo:
        kt = theta + rnd + (r + rnd) ** 2 / (lo - b)
        if kt < hi:
            hi = kt
    if hi <= theta * (1 + 1e-7):
        return hi
    trG = 0.0
    for i in range(K):
        trG += Gh[i, i]
    M = work[:K * K].reshape((K, K))
    # δ from the residual: θ is within r²/gap of λ₁, and usually well within r
    d = max(1e-9, min(1e-1, 4 * r * r / max(theta * theta, 1e-300)))
    for _ in range(3):
        s = theta * (1 + d)
        bound = s + 2 * (K + 2) * U * max(K * s - trG, 0.0)
        if bound >= hi:
            break
        for i in range(K):
            for j in range(K):
                M[i, j] = -Gh[i, j]
            M[i, i] += s
        stats[N_CAP] += 1
        if potrf(M, K) == 0:
            return bound
        d = min(d * 100, 1e-1)
    return hi


# ---- the certificate: one Bunch-Kaufman factorization, then rank-2 corrections ---------------------
# FB[h] slots
F_VALID, F_GAMMA, F_SF, F_ETA, F_ZB, F_CZ, F_NPOS, F_M = range(8)


@njit(cache=True)
def refactor(Gh, s_f, FXh, FDh, FTh, FPh, FBh, ipiv, work):
    """Factor A₀ = G − s_f I = P L D Lᵀ P ᵀ (+ ΔA₀) and keep X = L⁻¹ (FXh, Fortran lower), D⁻¹'s
    blocks (FDh [K, 3]: 1/d or the 2 x 2 inverse (p, q, r); FTh: 1 = 1 x 1, 2 = 2 x 2 start, 0 = its
    second row), the permutation (FPh), npos(D), ‖ΔA₀‖ ≤ η₀ and zb ≥ ‖|X|ᵀ|D⁻¹||X|‖ ≥ ‖XᵀD⁻¹X‖.
    False when a step fails."""
    K = Gh.shape[0]
    FBh[F_VALID] = 0.0
    M = FXh
    for i in range(K):
        for j in range(K):
            M[i, j] = Gh[i, j]
        M[i, i] -= s_f
    nA = np.sqrt(fro2(M))
    info, e = sytrf(M, K, ipiv, work)
    if info != 0:
        return False
    # the permutation: interchanges in forward order (P = I[:, perm])
    for i in range(K):
        FPh[i] = i
    j = 0
    while j < K:
        if ipiv[j] > 0:
            q = ipiv[j] - 1
            FPh[j], FPh[q] = FPh[q], FPh[j]
            j += 1
        else:
            q = -ipiv[j + 1] - 1
            FPh[j + 1], FPh[q] = FPh[q], FPh[j + 1]
            j += 2
    lnorm2 = np.empty(K)
    nL2 = 0.0
    for j in range(K):
        s2 = 1.0
        for i in range(j + 1, K):
            s2 += M[j, i] * M[j, i]
        lnorm2[j] = s2
        nL2 += s2
    npos = 0
    ldl = 0.0
    dn = np.empty(K)  # ‖|D_b⁻¹|‖ of the block each row belongs to
    j = 0
    while j < K:
        if j + 1 < K and e[j] != 0.0:
            a, c, bb = M[j, j], M[j + 1, j + 1], e[j]
            h = 0.5 * (a + c)
            rt = np.sqrt(0.25 * (a - c) * (a - c) + bb * bb)
            l1, l2 = h + rt, h - rt
            det = a * c - bb * bb
            big = l1 if abs(l1) >= abs(l2) else l2
            if det == 0 or big == 0:
                return False
            small = det / big
            npos += (1 if big > 0 else 0) + (1 if small > 0 else 0)
            FDh[j, 0], FDh[j, 1], FDh[j, 2] = c / det, -bb / det, a / det
            FTh[j], FTh[j + 1] = 2, 0
            # |D_b⁻¹| = |[[c, -b], [-b, a]]| / |det|: its 2-norm ≤ its max row sum
            nrm = (max(abs(a), abs(c)) + abs(bb)) / abs(det) * (1 + 8 * U)
            dn[j], dn[j + 1] = nrm, nrm
            ldl += (max(abs(a), abs(c)) + abs(bb)) * (lnorm2[j] + lnorm2[j + 1])
            j += 2
        else:
            dj = M[j, j]
            if dj == 0:
                return False
            npos += 1 if dj > 0 else 0
            FDh[j, 0] = 1.0 / dj
            FTh[j] = 1
            dn[j] = 1.0 / abs(dj) * (1 + 2 * U)
            ldl += abs(dj) * lnorm2[j]
            j += 1
    for i in range(K):
        M[i, i] = 1.0
    if trtri_unit_lower(M, K) != 0:
        return False
    rn = np.zeros(K)
    for j in range(K):  # X[i, j] = M[j, i] for i ≥ j
        for i in range(j, K):
            x = M[j, i]
            rn[i] += x * x
    zb = 0.0
    for i in range(K):
        zb += rn[i] * dn[i]
    # X L = I + F, ‖F‖ ≤ f (triangular inversion, column-wise backward stable): L⁻¹ = (I + F)⁻¹ X
    f = 4 * (K + 2) * U * np.sqrt(rn.sum()) * np.sqrt(nL2) * (1 + 1e-6)
    if not f < 0.1:
        return False
    phi = f / (1 - f)
    FBh[F_ZB] = zb * (1 + 4 * K * U) * (1 + phi) ** 2
    # z = A₀⁻¹ b computed through X: error ≤ cz · zb · ‖b‖
    FBh[F_CZ] = 2 * phi + phi * phi + 12 * (K + 2) * U
    FBh[F_ETA] = 8 * (K + 2) * U * (nA + ldl)
    FBh[F_NPOS] = npos
    FBh[F_SF] = s_f
    FBh[F_GAMMA] = 1.0
    FBh[F_M] = 0
    FBh[F_VALID] = 1.0
    return True


@njit(cache=True, fastmath={"contract"})
def apply_inv(FXh, FDh, FTh, FPh, b, z):
    """z := A₀⁻¹ b = P Xᵀ D⁻¹ X Pᵀ b."""
    K = b.shape[0]
    y = np.empty(K)
    for i in range(K):
        y[i] = b[FPh[i]]
    u = np.zeros(K)
    for j in range(K):  # u = X y, X[i, j] = FXh[j, i] (i ≥ j)
        yj = y[j]
        for i in range(j, K):
            u[i] += FXh[j, i] * yj
    i = 0
    while i < K:
        if FTh[i] == 2:
            p, q, r = FDh[i, 0], FDh[i, 1], FDh[i, 2]
            u0, u1 = u[i], u[i + 1]
            u[i], u[i + 1] = p * u0 + q * u1, q * u0 + r * u1
            i += 2
        else:
            u[i] *= FDh[i, 0]
            i += 1
    for j in range(K):  # y = Xᵀ u
        acc = 0.0
        for i in range(j, K):
            acc += FXh[j, i] * u[i]
        y[j] = acc
    for i in range(K):
        z[FPh[i]] = y[i]


@njit(cache=True)
def add_token(FXh, FDh, FTh, FPh, FBh, BVh, ZVh, CPh, k, a, ww, g):
    """Carry A' = γ (A₀ + Σ_j E_j / γ_j) forward by one token, E = a kᵀ + k aᵀ + |w|² k kᵀ
    = [k a] C [k a]ᵀ with C = [[|w|², 1], [1, 0]]: the Woodbury capacitance
    Cap = blockdiag(γ_j C_j⁻¹) + Bᵀ A₀⁻¹ B gains two rows. False when full."""
    FBh[F_GAMMA] *= g * g
    m = int(FBh[F_M])
    if 2 * m + 2 > BVh.shape[0]:
        return False
    gm = FBh[F_GAMMA]
    p = 2 * m
    BVh[p, :] = k
    BVh[p + 1, :] = a
    apply_inv(FXh, FDh, FTh, FPh, BVh[p], ZVh[p])
    apply_inv(FXh, FDh, FTh, FPh, BVh[p + 1], ZVh[p + 1])
    for q in range(p + 2):
        for r in range(p, p + 2):
            if q < r or q >= p:
                x = 0.5 * (np.dot(BVh[q], ZVh[r]) + np.dot(BVh[r], ZVh[q]))
                CPh[q, r] = x
                CPh[r, q] = x
    # γ_j C_j⁻¹ = γ_j [[0, 1], [1, −|w|²]]
    CPh[p, p + 1] += gm
    CPh[p + 1, p] += gm
    CPh[p + 1, p + 1] -= gm * ww
    FBh[F_M] = m + 1
    return True


@njit(cache=True)
def certify_inc(FBh, BVh, ZVh, CPh, s_lo, s_hi, err):
    """The count #{λ(S Sᵀ) > s}, s in [s_lo, s_hi], from the carried factorization, or -1.

    S Sᵀ − s I = A' + Δ with ‖Δ‖ ≤ 2 err + γ η₀ + max |s − γ s_f|; inertia(A') = npos(D) +
    nneg(Cap) − m (Haynsworth on [[A₀, B], [Bᵀ, −C̃⁻¹]]; each C_j⁻¹ has one eigenvalue of each sign), and it is S Sᵀ − s I's
    when ‖Δ‖ ‖A'⁻¹‖ < 1 (Weyl along the segment), ‖A'⁻¹‖ ≤ (‖A₀⁻¹‖ + ‖Cap⁻¹‖ ‖Bᵀ A₀⁻¹‖²) / γ."""
    gm = FBh[F_GAMMA]
    sf = gm * FBh[F_SF]
    delta = 2 * err + gm * FBh[F_ETA] + max(abs(s_lo - sf), abs(s_hi - sf))
    zb = FBh[F_ZB]
    cz = FBh[F_CZ] * zb
    m = int(FBh[F_M])
    if m == 0:
        if delta * zb / gm < 1:
            return int(FBh[F_NPOS])
        return -1
    n = 2 * m
    K = BVh.shape[1]
    nb = np.empty(n)
    nz = np.empty(n)
    for p in range(n):
        nb[p] = np.sqrt(np.dot(BVh[p], BVh[p]))
        nz[p] = np.sqrt(np.dot(ZVh[p], ZVh[p]))
    # equilibrate (a congruence: same inertia) and bound the computed Cap's distance to the exact one
    t = np.empty(n)
    for p in range(n):
        mx = 0.0
        for q in range(n):
            mx = max(mx, abs(CPh[p, q]))
        t[p] = 1.0 / np.sqrt(mx) if mx > 0 else 1.0
    C = np.empty((n, n))
    dc2 = 0.0
    gK = (K + 2) * U
    for p in range(n):
        for q in range(n):
            C[p, q] = t[p] * CPh[p, q] * t[q]
            d = (nb[p] * cz * nb[q] + gK * max(nb[p] * nz[q], nb[q] * nz[p]) + 4 * U * abs(CPh[p, q])) * t[p] * t[q]
            dc2 += d * d
    w = np.linalg.eigvalsh(C)
    ew = 4 * (n + 2) * U * np.sqrt(fro2(C))
    mn = np.inf
    npc = 0
    for i in range(n):
        mn = min(mn, abs(w[i]))
        if w[i] < 0:
            npc += 1
    mn -= np.sqrt(dc2) + ew
    if not mn > 0:
        FBh[9] += 1
        return -1
    wz = 0.0
    for p in range(n):
        x = t[p] * (nz[p] + cz * nb[p])
        wz += x * x
    inv = (zb + wz / mn) / gm
    if delta * inv * (1 + 1e-9) < 1:
        return int(FBh[F_NPOS]) + npc - m
    FBh[10] += 1
    if max(abs(s_lo - sf), abs(s_hi - sf)) > 0.5 * delta:
        FBh[11] += 1
    if wz / mn > zb:
        FBh[12] += 1
    return -1


# ---- one head, one token -------------------------------------------------------------------------
@njit(cache=True)
def count_head(Sh, Gh, Bh, xh, kh, ah, ww, g, eps, stats, steps, work, ipiv, FXh, FDh, FTh, FPh, FBh, BVh,
               ZVh, CPh):
    """The certified threshold rank of one head's state after its update (see the module doc)."""
    K, V = Sh.shape
    eps2 = eps * eps
    nS2 = fro2(Sh)
    Bh[E_G] += 2 * (1 + 1e-9) * U * nS2  # the state's own rounding this token, seen through the Gram
    if FBh[F_VALID] > 0:
        if not add_token(FXh, FDh, FTh, FPh, FBh, BVh, ZVh, CPh, kh, ah, ww, g):
            FBh[F_VALID] = 0.0
    if nS2 == 0:
        stats[N_CERT] += 1
        return 0
    # an fp64 Gram's rounding floor (≥ u tr G) against the threshold (≤ ε² tr G): hopeless below
    if 1e5 * (K + 4) * U > eps2:
        stats[N_HOPELESS] += 1
        return fallback(Sh, eps, stats)
    ts = np.empty(2, np.int64)
    t0 = now(ts)
    floor = 2 * (V + 4) * U * nS2
    if Bh[E_G] > 3e-5 * eps2 * max(Bh[THETA], nS2 / K) and Bh[E_G] > 4 * floor:
        reform(Sh, Gh, Bh)
        FBh[F_VALID] = 0.0
        stats[N_REFORM] += 1
    err = Bh[E_G]
    t1 = now(ts)
    stats[16] += t1 - t0
    theta, r = sigma1(Gh, xh, kh, steps)
    nG = np.sqrt(fro2(Gh))
    t2 = now(ts)
    stats[17] += t2 - t1
    hi = sigma1_hi(Gh, theta, r, nG, work, stats)
    t3 = now(ts)
    stats[18] += t3 - t2
    Bh[THETA] = theta
    lo = theta - 4 * (K + 4) * U * nG
    s_lo = eps2 * max(lo - err, 0.0)
    s_hi = eps2 * (hi + err)
    if s_lo > 0:
        if FBh[F_VALID] > 0:
            n = certify_inc(FBh, BVh, ZVh, CPh, s_lo, s_hi, err)
            if n >= 0:
                stats[N_CERT] += 1
                stats[19] += now(ts) - t3
                return n
        t4 = now(ts)
        stats[19] += t4 - t3
        stats[N_RETRY] += 1
        if refactor(Gh, 0.5 * (s_lo + s_hi), FXh, FDh, FTh, FPh, FBh, ipiv, work):
            n = certify_inc(FBh, BVh, ZVh, CPh, s_lo, s_hi, err)
            stats[22] += now(ts) - t4
            if n >= 0:
                stats[N_CERT] += 1
                return n
    ta = now(ts)
    n = fallback(Sh, eps, stats)
    stats[20] += now(ts) - ta
    return n


@njit(cache=True)
def feed(k, v, beta, g, eps, S, G, X, B, FX, FD, FT, FP, FB, BV, ZV, CP, out, stats, steps):
    """Tokens t of all heads h: k [T, H, K], v [T, H, V], beta [T, H], g [T, H] (decay factor) ->
    out [T, H] threshold ranks; the per-head carry is updated in place."""
    T, H = k.shape[0], k.shape[1]
    K = S.shape[1]
    work = np.empty(K * K + 64 * K + 64)
    ipiv = np.empty(K, np.int32)
    ts = np.empty(2, np.int64)
    for h in range(H):  # head-major: one head's carry stays in cache across the block of tokens
        Sh, Gh, Bh, xh = S[h], G[h], B[h], X[h]
        for t in range(T):
            ta = now(ts)
            kk = k[t, h].copy()
            gg = g[t, h]
            a, ww = update(Sh, Gh, Bh, kk, v[t, h], beta[t, h], gg)
            Bh[THETA] *= gg * gg
            stats[21] += now(ts) - ta
            out[t, h] = count_head(Sh, Gh, Bh, xh, kk, a, ww, gg, eps, stats, steps, work, ipiv, FX[h], FD[h],
                                   FT[h], FP[h], FB[h], BV[h], ZV[h], CP[h])


@njit(cache=True)
def start(S, G, X, B, FB):
    """Carry for the initial states S [H, K, V]."""
    H = S.shape[0]
    for h in range(H):
        B[h, :] = 0.0
        reform(S[h], G[h], B[h])
        X[h, :] = 0.0
        FB[h, :] = 0.0
