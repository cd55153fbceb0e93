"""numba kernels of ``spectra_stream.StreamRanks``: the same algorithm and certificates as its numpy
path, one compiled call per block of tokens (all heads), LAPACK/BLAS called in place through
scipy's cython_lapack / cython_blas function pointers (no per-head Python, no copies of blocks).

Storage: every K x K array is C-ordered and symmetric where LAPACK sees it; LAPACK (column-major)
sees its transpose, so Fortran 'L' (lower) is the C upper triangle. Offsets into a K x K workspace
with lda = K address the leading block (0), the off-diagonal block (c) and the trailing block
(c*K + c) in place.
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
_xspotrf = _ext("lapack", "spotrf", 5)
_xdpstrf = _ext("lapack", "dpstrf", 9)  # uplo n a lda piv rank tol work info
_xdgesdd = _ext("lapack", "dgesdd", 14)  # jobz m n a lda s u ldu vt ldvt work lwork iwork info
_xdtrsm = _ext("blas", "dtrsm", 11)  # side uplo transa diag m n alpha a lda b ldb
_xdsyrk = _ext("blas", "dsyrk", 10)  # uplo trans n k alpha a lda beta c ldc
_xdger = _ext("blas", "dger", 9)  # m n alpha x incx y incy a lda
_xdgemv = _ext("blas", "dgemv", 11)  # trans m n alpha a lda x incx beta y incy

U64 = float(np.finfo(np.float64).eps) / 2
U32 = float(np.finfo(np.float32).eps) / 2

# fallback reasons (index into the reasons counter)
REASONS = ("", "drift", "sigma_1 bound", "rounding margins", "rounding of the upper check",
           "an eigenvalue near the threshold", "new directions the basis cannot take",
           "no positive direction found", "rounding of the block LDLᵀ", "leading block",
           "the count above the interval failed")


# Wrappers: every array whose address is passed is read after the call, so it lives through it.
@njit(cache=True)
def _ad(a):
    return np.int64(a.ctypes.data)


@njit(cache=True)
def potrf(A, off, n, lda):
    """In-place dpotrf('L') of the n x n block at A.flat[off:] (lda); info (0 = positive definite)."""
    if n == 0:
        return 0
    iv = np.empty(3, np.int32)
    iv[0], iv[1], iv[2] = n, lda, 0
    ch = np.full(1, 76, np.uint8)
    pi = _ad(iv)
    _xdpotrf(_ad(ch), pi, _ad(A) + 8 * off, pi + 4, pi + 8)
    return iv[2] + (ch[0] - 76)


@njit(cache=True)
def spotrf(A, n):
    iv = np.empty(2, np.int32)
    iv[0], iv[1] = n, 0
    ch = np.full(1, 76, np.uint8)
    pi = _ad(iv)
    _xspotrf(_ad(ch), pi, _ad(A), pi, pi + 4)
    return iv[1] + (ch[0] - 76)


@njit(cache=True)
def trsm_rltn(m, n, A, aoff, lda, B, boff, ldb):
    """B := B A⁻ᵀ (A lower triangular), in place; blocks at flat offsets."""
    if m == 0 or n == 0:
        return
    ch = np.empty(4, np.uint8)
    ch[0], ch[1], ch[2], ch[3] = 82, 76, 84, 78
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = m, n, lda, ldb
    fv = np.ones(1)
    pc, pi = _ad(ch), _ad(iv)
    _xdtrsm(pc, pc + 1, pc + 2, pc + 3, pi, pi + 4, _ad(fv), _ad(A) + 8 * aoff, pi + 8, _ad(B) + 8 * boff, pi + 12)
    fv[0] += ch[0] + iv[0]


@njit(cache=True)
def syrk(uplo, trans, n, k, alpha, A, aoff, lda, beta, C, coff, ldc):
    if n == 0:
        return
    ch = np.empty(2, np.uint8)
    ch[0], ch[1] = uplo, trans
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = n, k, lda, ldc
    fv = np.empty(2)
    fv[0], fv[1] = alpha, beta
    pc, pi, pf = _ad(ch), _ad(iv), _ad(fv)
    _xdsyrk(pc, pc + 1, pi, pi + 4, pf, _ad(A) + 8 * aoff, pi + 8, pf + 8, _ad(C) + 8 * coff, pi + 12)
    fv[0] += ch[0] + iv[0]


@njit(cache=True)
def ger(m, n, alpha, x, y, A, aoff, lda):
    """A += alpha x yᵀ (column-major m x n block at A.flat[aoff:])."""
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = m, n, 1, lda
    fv = np.full(1, alpha)
    pi = _ad(iv)
    _xdger(pi, pi + 4, _ad(fv), _ad(x), pi + 8, _ad(y), pi + 8, _ad(A) + 8 * aoff, pi + 12)
    fv[0] += iv[0]


@njit(cache=True)
def gemv(trans, m, n, alpha, A, aoff, lda, x, beta, y):
    """y := alpha op(A) x + beta y (column-major m x n block at A.flat[aoff:])."""
    ch = np.full(1, trans, np.uint8)
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = m, n, lda, 1
    fv = np.empty(2)
    fv[0], fv[1] = alpha, beta
    pi, pf = _ad(iv), _ad(fv)
    _xdgemv(_ad(ch), pi, pi + 4, pf, _ad(A) + 8 * aoff, pi + 8, _ad(x), pi + 12, pf + 8, _ad(y), pi + 12)
    fv[0] += ch[0] + iv[0]


@njit(cache=True)
def pstrf(n, A, piv, work):
    """dpstrf('L', tol 0) in place; the rank."""
    ch = np.full(1, 76, np.uint8)
    iv = np.empty(4, np.int32)
    iv[0], iv[1], iv[2], iv[3] = n, n, 0, 0
    fv = np.zeros(1)
    pi = _ad(iv)
    _xdpstrf(_ad(ch), pi, _ad(A), pi + 4, _ad(piv), pi + 8, _ad(fv), _ad(work), pi + 12)
    return iv[2] + (ch[0] - 76) + int(fv[0])


@njit(cache=True)
def gesdd_n(m, n, A, lda, s, work, iwork):
    """Singular values only (dgesdd 'N'), A destroyed; info."""
    ch = np.full(1, 78, np.uint8)
    iv = np.empty(6, np.int32)
    iv[0], iv[1], iv[2], iv[3], iv[4], iv[5] = m, n, lda, 1, work.size, 0
    pi = _ad(iv)
    _xdgesdd(_ad(ch), pi, pi + 4, _ad(A), pi + 8, _ad(s), _ad(work), pi + 12, _ad(work), pi + 12, _ad(work),
             pi + 16, _ad(iwork), pi + 20)
    return iv[5] + (ch[0] - 78)


@njit(cache=True)
def fro2_lower(W, off, n):
    """Sum of squares of the Fortran-lower (C-upper) triangle of the n x n block of W at (off, off)."""
    s = 0.0
    for i in range(off, off + n):
        for j in range(i, off + n):
            s += W[i, j] * W[i, j]
    return s


# ---- basis bookkeeping ------------------------------------------------------------------------------
@njit(cache=True)
def swap(G, U, y, kU, bU, i, j):
    if i == j:
        return
    K = G.shape[0]
    for q in range(K):
        t = G[i, q]
        G[i, q] = G[j, q]
        G[j, q] = t
    for q in range(K):
        t = G[q, i]
        G[q, i] = G[q, j]
        G[q, j] = t
    for q in range(K):
        t = U[q, i]
        U[q, i] = U[q, j]
        U[q, j] = t
    for a in (y, kU, bU):
        t = a[i]
        a[i] = a[j]
        a[j] = t


@njit(cache=True)
def normalise(h, S, G, fS):
    f = fS[h]
    if f != 1.0:
        S[h] *= f
        G[h] *= f * f
        fS[h] = 1.0


@njit(cache=True)
def trace(A):
    s = 0.0
    for i in range(A.shape[0]):
        s += A[i, i]
    return s


@njit(cache=True)
def reform(h, S, G, U, fS, e, eta):
    normalise(h, S, G, fS)
    K, V = S.shape[1], S.shape[2]
    if eta[h] > 1e-12:
        Q, R = np.linalg.qr(U[h])
        for j in range(K):
            sg = 1.0 if R[j, j] >= 0 else -1.0
            for i in range(K):
                U[h, i, j] = Q[i, j] * sg
        eta[h] = 4 * (K + 2) * U64
    SU = np.dot(U[h].T, S[h])
    Gh = G[h]
    # G = SU SUᵀ: LAPACK sees SU as the V x K matrix A, G = Aᵀ A (dsyrk), then the other triangle copied
    syrk(76, 84, K, V, 1.0, SU, 0, V, 0.0, Gh, 0, K)
    for i in range(K):
        for j in range(i + 1, K):
            Gh[j, i] = Gh[i, j]
    e[h] = 2 * (2 * K + V + 2) * U64 * np.sum(SU * SU)


@njit(cache=True)
def error(h, trG, e, dS, K):
    return e[h] + 2 * np.sqrt(trG + K * e[h]) * dS[h] + dS[h] ** 2


@njit(cache=True)
def update(h, S, G, U, fS, e, dS, eta, k, v, beta, d, channel, kU, bU):
    """One token of the recurrence for head h (decay d: [1] per head or [K] per channel); the Gram by
    rank 2; rounding bounds grow. Fills kU, bU (the key and b = D S w + |w|²/2 k in U coordinates)."""
    K, V = S.shape[1], S.shape[2]
    Sh, Gh, Uh = S[h], G[h], U[h]
    trG0 = trace(Gh) * fS[h] ** 2
    if channel:
        normalise(h, S, G, fS)
        dmax = 0.0
        for i in range(K):
            dmax = max(dmax, d[i])
            for j in range(V):
                Sh[i, j] *= d[i]
        dU = np.zeros(K)
        for j in range(K):
            s = 0.0
            for i in range(K):
                s += abs(Uh[i, j]) * d[i]
            dU[j] = s
        for i in range(K):
            for j in range(K):
                Gh[i, j] *= dU[i] * dU[j]
    else:
        fS[h] *= d[0]
        dmax = d[0]
    if fS[h] < 1e-100:
        normalise(h, S, G, fS)
    f = fS[h]
    kv = np.dot(k, Sh) * f
    w = beta * (v - kv)
    a = np.dot(Sh, w) * f
    cw = np.dot(w, w)
    KA = np.empty((2, K))  # [k, a]ᵀ U in one pass over U
    KA[0] = k
    KA[1] = a
    KAU = np.dot(KA, Uh)
    for i in range(K):
        kU[i] = KAU[0, i]
        bU[i] = KAU[1, i] + 0.5 * cw * KAU[0, i]
    fi = 1.0 / f
    for i in range(K):
        ki = k[i] * fi
        for j in range(V):
            Sh[i, j] += ki * w[j]
    f2i = 1.0 / (f * f)
    for i in range(K):
        bi, ki = bU[i] * f2i, kU[i] * f2i
        for j in range(K):
            Gh[i, j] += bi * kU[j] + ki * bU[j]
    nk = np.sqrt(np.dot(k, k))
    nw, na = np.sqrt(cw), np.sqrt(np.dot(a, a))
    nv = np.sqrt(np.dot(v, v))
    nS = np.sqrt(max(dmax ** 2 * trG0, 0.0) + K * e[h])
    gK = (K + 2) * U64
    contract = max(1.0, abs(1 - beta * nk ** 2))
    dS[h] = contract * dmax * dS[h] + 2 * (U64 * (2 * nS + nk * nw) + nk * gK * beta * (nv + nS * nk))
    nb = na + 0.5 * cw * nk
    growth = U64 * (2 * nS ** 2 + 2 * (nS + nk * nw) ** 2) + gK * (2 * nS * nw * nk + cw * nk ** 2) \
        + 4 * U64 * (dmax ** 2 * trG0 + 2 * nb * nk) + 4 * (gK + eta[h]) * nb * nk
    e[h] = dmax ** 2 * e[h] + 2 * growth


@njit(cache=True)
def ritz(h, G, fS, y, kU):
    """Top Ritz pair of G[h] on span{y, k, G y, G k}: (θ lower bound, second Ritz value, residual,
    tr G), true scale; y[h] := the Ritz vector."""
    K = G.shape[1]
    Gh, yh = G[h], y[h]
    f2 = fS[h] ** 2
    if np.sum(np.abs(yh)) == 0:
        best, idx = -np.inf, 0
        for i in range(K):
            if Gh[i, i] > best:
                best, idx = Gh[i, i], i
        yh[idx] = 1.0
    B = np.empty((K, 4))
    B[:, 0] = yh
    B[:, 1] = kU
    GB = np.empty((K, 4))
    GB[:, :2] = np.dot(Gh, B[:, :2].copy())
    B[:, 2:] = GB[:, :2]
    GB[:, 2:] = np.dot(Gh, B[:, 2:].copy())
    M = np.dot(B.T.copy(), B)
    N = np.dot(B.T.copy(), GB)
    N = 0.5 * (N + N.T)
    mu, Vm = np.linalg.eigh(M)
    Tm = np.zeros((4, 4))
    for j in range(4):
        if mu[j] > 1e-10 * mu[3]:
            Tm[:, j] = Vm[:, j] / np.sqrt(mu[j])
    th, X = np.linalg.eigh(np.dot(Tm.T.copy(), np.dot(N, Tm)))
    coef = np.dot(Tm, X[:, 3].copy())
    z = np.dot(B, coef)
    Gz = np.dot(GB, coef)
    zz = np.dot(z, z)
    if not zz > 0:
        zz = 1.0
    theta = np.dot(z, Gz) / zz
    r = Gz - theta * z
    rho = np.sqrt(np.dot(r, r) / zz)
    yh[:] = z / np.sqrt(zz)
    trG = trace(Gh)
    theta = theta - 4 * (K + 8) * U64 * trG
    return theta * f2, th[2] * f2, rho * f2, trG * f2


@njit(cache=True)
def deflated_upper(Gh, z):
    """λ_1(G̃) ≤ λ_max [[θ, ρ], [ρ, α]] for z ≠ 0, ẑ = z/|z|: θ = ẑᵀG̃ẑ, ρ = ‖(I − ẑẑᵀ)G̃ẑ‖ (≤ ‖G̃ẑ − μẑ‖ for any
    μ), α = ‖(I − ẑẑᵀ)G̃(I − ẑẑᵀ)‖_F ≥ the largest eigenvalue of the rest (α² = ‖G̃‖_F² − θ² − 2ρ²): for a unit
    x = aẑ + bw (w ⊥ ẑ), xᵀG̃x ≤ a²θ + 2|ab|ρ + b²α. Each entry bounded above with its rounding (the dot
    products' γ_{K+4}‖G̃‖_F, doubled); G̃ is the symmetric matrix of the upper triangle; unscaled."""
    K = Gh.shape[0]
    g = np.zeros(K)
    fro = 0.0
    for i in range(K):
        zi = z[i]
        gi = Gh[i, i] * zi
        fro += Gh[i, i] * Gh[i, i]
        for j in range(i + 1, K):
            a = Gh[i, j]
            gi += a * z[j]
            g[j] += a * zi
            fro += 2 * a * a
        g[i] += gi
    nz = 0.0
    zg = 0.0
    for i in range(K):
        nz += z[i] * z[i]
        zg += z[i] * g[i]
    if not nz > 0:
        return -1.0
    th = zg / nz
    r2 = 0.0
    for i in range(K):
        ri = g[i] - th * z[i]
        r2 += ri * ri
    fro_hi = fro * (1 + 1e-10)
    nF = np.sqrt(fro_hi)
    marg = 4 * (K + 4) * U64 * nF
    th_hi = th + marg
    th_lo = max(th - marg, 0.0)
    rho_hi = np.sqrt(r2 / nz) * (1 + 1e-10) + marg
    al = np.sqrt(max(fro_hi - th_lo * th_lo, 0.0)) * (1 + 1e-10) + marg
    t = 0.5 * (th_hi + al) + np.sqrt((0.5 * (th_hi - al)) ** 2 + rho_hi * rho_hi)
    return t * (1 + 1e-12)


@njit(cache=True, fastmath={"reassoc", "contract"})
def abs_llt_bound(A2):
    """≥ ρ(|L||L|ᵀ) less a relative K u (covered by the caller's 1e-3): max of |L| (|L|ᵀ 1)
    (Collatz-Wielandt), L the lower (Fortran) = C upper triangle of the float32 A2. Sums of non-negative
    terms, so any summation order (reassociation, to vectorise) keeps that bound."""
    K = A2.shape[0]
    u = np.zeros(K)
    for j in range(K):
        s = 0.0
        for i in range(j, K):
            s += abs(np.float64(A2[j, i]))
        u[j] = s
    acc = np.zeros(K)
    for j in range(K):
        uj = u[j]
        for i in range(j, K):
            acc[i] += abs(np.float64(A2[j, i])) * uj
    return acc.max()


@njit(cache=True)
def upper(Gh, f2, theta, theta2, rho, trG, A32):
    """θ_hi ≥ λ_1(G̃) proven by a float32 Cholesky of θ_hi I − G̃ (widened by its rounding); -1 if none."""
    K = Gh.shape[0]
    gap = max(theta - theta2, rho, 1e-300)
    step = max(4 * rho * rho / gap, 2e-5 * theta)
    g = (K + 1) * U32 / (1 - (K + 1) * U32)
    A2 = A32.reshape(K, K)
    while step < theta:
        t = theta + step
        t32 = np.float32(t)
        for i in range(K):
            for j in range(i, K):
                A2[i, j] = np.float32(-Gh[i, j] * f2)
            A2[i, i] = A2[i, i] + t32
        info = spotrf(A32, K)
        if info == 0:
            r = abs_llt_bound(A2)
            return t + 2 * (g * r * (1 + 1e-3) + U32 * (np.sqrt(K) * t + trG))
        step *= 16
    return -1.0


# ---- the certificate ------------------------------------------------------------------------------
@njit(cache=True)
def reflect(h, c, v, beta, G, U, y, kU, bU, fS, e, eta):
    """Rotate basis columns c.. of head h by I − β v vᵀ (G̃ ← H G̃ H on those rows and columns)."""
    Gh, Uh, yh = G[h], U[h], y[h]
    K = Gh.shape[0]
    m = K - c
    # LAPACK sees G[c:, :] (rows) as the K x m block at flat offset c*K, G[:, c:] as the m x K block at c
    p = np.zeros(K)  # p = vᵀ G[c:]; rows: G[c:] -= β v pᵀ
    gemv(78, K, m, 1.0, Gh, c * K, K, v, 0.0, p)
    ger(K, m, -beta, p, v, Gh, c * K, K)
    for X in (Gh, Uh):  # columns: X[:, c:] -= β (X[:, c:] v) vᵀ, on the updated G
        q = np.zeros(K)
        gemv(84, m, K, 1.0, X, c, K, v, 0.0, q)
        ger(m, K, -beta, v, q, X, c, K)
    for a in (yh, kU, bU):
        s = 0.0
        for j in range(m):
            s += a[c + j] * v[j]
        for j in range(m):
            a[c + j] -= beta * v[j] * s
    eta[h] += 8 * (m + 2) * U64
    # the reflections' rounding is ≤ γ‖G̃‖_F (Householder backward error, Frobenius); tr G̃ bounded it before
    fro = 0.0
    for i in range(K):
        for j in range(K):
            fro += Gh[i, j] * Gh[i, j]
    e[h] += 16 * (m + 2) * U64 * np.sqrt(fro) * (1 + 1e-10) * fS[h] ** 2


@njit(cache=True)
def top_direction(C, starts, steps):
    """A unit x with the largest xᵀCx found by Rayleigh-Ritz on {X, CX, ..} (X = starts), and xᵀCx."""
    m, p = starts.shape
    if m <= 16 or m <= p * (steps + 1):
        w, Y = np.linalg.eigh(C)
        return Y[:, m - 1].copy(), w[m - 1]
    nb = p * (steps + 1)
    B = np.empty((m, nb))
    for j in range(p):
        s = np.sqrt(np.sum(starts[:, j] ** 2) + 1e-300)
        B[:, j] = starts[:, j] / s
    CB = np.empty((m, nb))  # C B, block by block: each Krylov step's product is the previous block's
    for st in range(steps + 1):
        nxt = np.dot(C, B[:, st * p:(st + 1) * p].copy())
        CB[:, st * p:(st + 1) * p] = nxt
        if st < steps:
            for j in range(p):
                s = np.sqrt(np.sum(nxt[:, j] ** 2) + 1e-300)
                B[:, (st + 1) * p + j] = nxt[:, j] / s
    M = np.dot(B.T.copy(), B)
    mu, Vm = np.linalg.eigh(M)
    keep = mu > 1e-9 * mu[nb - 1]
    nk = np.sum(keep)
    Tm = np.empty((nb, nk))
    q = 0
    for j in range(nb):
        if keep[j]:
            Tm[:, q] = Vm[:, j] / np.sqrt(mu[j])
            q += 1
    P = np.dot(Tm.T.copy(), np.dot(np.dot(B.T.copy(), CB), Tm))
    _, Y = np.linalg.eigh(0.5 * (P + P.T))
    x = np.dot(B, np.dot(Tm, Y[:, nk - 1].copy()))
    x /= np.sqrt(np.dot(x, x))
    return x, np.dot(x, np.dot(C, x))


@njit(cache=True)
def inertia(h, s, f2, g, m_allow, G, U, y, kU, bU, fS, e, eta, cc, fresh, rotate, W, W2, rounds):
    """Eigenvalues of G̃ above s (within the allowance), by a block LDLᵀ of G̃ f² − s I in place in W
    (see StreamRanks._inertia); returns (c, 0) or (-1, reason).

    The allowance m_allow must cover, besides the factors' backward error, what the numpy path leaves out:
    the rounding of each Householder rotation of the Schur complement (≤ 32(m+6)u‖C‖_F, for
    C ← C − β(v pᵀ + p vᵀ) + β²(vᵀp) v vᵀ, p = C v, β|v|² = 2), and the growth of the Gram's drift bound
    by rotations made after the threshold interval was set: the caller widens s for that (the factors
    are, up to congruence by the rotations made here, those of the Gram as this call found it)."""
    K = G.shape[1]
    Gh = G[h]
    Wf = W.reshape(K * K)
    drops = 0
    for _ in range(rounds):
        c = cc[h]
        fro2 = 0.0
        rot_err = 0.0
        for i in range(K):  # W := G f² − s I (full, symmetric)
            for j in range(K):
                W[i, j] = Gh[i, j] * f2
            W[i, i] -= s
        if c:
            info = potrf(Wf, 0, c, K)
            if info > 0:  # the leading block lost a direction: drop the failing pivot
                swap(Gh, U[h], y[h], kU, bU, info - 1, c - 1)
                cc[h] = c - 1
                drops += 1
                if drops == 2:  # many lost: a fresh leading block (greedy pivoting at s)
                    pivot(h, s / f2, G, U, y, kU, bU, cc, fresh, W)
                continue
            fro2 = fro2_lower(W, 0, c)
            if c < K:
                # X (Fortran (K-c) x c at offset c) := A21 L11⁻ᵀ; C := A22 − X Xᵀ (Fortran lower)
                trsm_rltn(K - c, c, W, 0, K, W, c, K)
                for i in range(c):
                    for j in range(c, K):
                        fro2 += W[i, j] * W[i, j]
                syrk(76, 78, K - c, c, -1.0, W, c, K, 1.0, W, c * K + c, K)
                for i in range(c, K):  # symmetrise the trailing block (C upper -> lower)
                    for j in range(i + 1, K):
                        W[j, i] = W[i, j]
        found = 0
        while c < K:
            i, best = c, W[c, c]
            for q in range(c + 1, K):
                if W[q, q] > best:
                    best, i = W[q, q], q
            if best <= 0:
                mm = K - c
                W2f = W2.reshape(K * K)
                for a in range(mm):
                    for b in range(mm):
                        W2f[a * mm + b] = -W[c + a, c + b]
                info2 = potrf(W2f, 0, mm, mm)
                if info2 == 0:
                    s2 = 0.0
                    for a in range(mm):
                        for b in range(a, mm):
                            s2 += W2f[a * mm + b] ** 2
                    fro2 += s2
                    break
                # a positive direction off the coordinates: rotate it into place
                if not rotate or found == 16:
                    return -1, 6
                Cc = W[c:, c:].copy()
                rot_err += 32 * (mm + 6) * U64 * np.sqrt(np.sum(Cc * Cc)) * (1 + 1e-10)
                # a start with xᵀCx ≥ 0 from where the Cholesky of −C stopped (j = info2 − 1): x = [−M⁻¹a; 1],
                # M = L Lᵀ its factored leading minor, a the column above the failing pivot (a heuristic)
                st = np.zeros((mm, 3))
                j = info2 - 1
                z = np.empty(j)
                for a in range(j):
                    sacc = -W[c + a, c + j]
                    for b in range(a):
                        sacc -= W2f[a + b * mm] * z[b]
                    z[a] = sacc / W2f[a + a * mm]
                for a in range(j - 1, -1, -1):
                    sacc = z[a]
                    for b in range(a + 1, j):
                        sacc -= W2f[b + a * mm] * z[b]
                    z[a] = sacc / W2f[a + a * mm]
                for a in range(j):
                    st[a, 0] = -z[a]
                st[j, 0] = 1.0
                st[:, 1] = kU[c:]
                st[:, 2] = bU[c:]
                x, alpha = top_direction(Cc, st, 2)
                if not alpha > 0:
                    order = np.argsort(np.diag(Cc))
                    nt = min(4, mm)
                    E = np.zeros((mm, nt + 1))
                    for q in range(nt):
                        E[order[mm - 1 - q], q] = 1.0
                    E[:, nt] = st[:, 0]
                    x, alpha = top_direction(Cc, E, 6)
                if not alpha > 0:
                    return -1, 7
                v = x.copy()
                v[0] += 1.0 if x[0] >= 0 else -1.0
                beta = 2.0 / np.dot(v, v)
                reflect(h, c, v, beta, G, U, y, kU, bU, fS, e, eta)
                p = np.dot(Cc, v)
                vp = np.dot(v, p)
                for a in range(mm):
                    for b in range(mm):
                        W[c + a, c + b] -= beta * (v[a] * p[b] + p[a] * v[b]) - beta * beta * vp * v[a] * v[b]
                found += 1
                i = c
                if not W[c, c] > 0:
                    return -1, 7
            piv = np.sqrt(W[i, i])
            col = np.empty(K - c)
            for q in range(c, K):
                col[q - c] = W[q, i] / piv
            for a in range(K - c):
                ca = col[a]
                fro2 += ca * ca
                for b in range(K - c):
                    W[c + a, c + b] -= ca * col[b]
            if i != c:
                for q in range(c, K):
                    t = W[c, q]
                    W[c, q] = W[i, q]
                    W[i, q] = t
                for q in range(c, K):
                    t = W[q, c]
                    W[q, c] = W[q, i]
                    W[q, i] = t
                swap(Gh, U[h], y[h], kU, bU, c, i)
            c += 1
        cc[h] = c
        if 2 * g * fro2 * (1 + 1e-3) + rot_err > m_allow:
            return -1, 8
        return c, 0
    return -1, 9


@njit(cache=True)
def pivot(h, s, G, U, y, kU, bU, cc, fresh, W):
    """A fresh leading block: greedy diagonal pivoting (dpstrf) of G̃ − s I."""
    K = G.shape[1]
    Gh = G[h]
    for i in range(K):
        for j in range(K):
            W[i, j] = Gh[i, j]
        W[i, i] -= s
    piv = np.empty(K, np.int32)
    work = np.empty(2 * K)
    rank = pstrf(K, W, piv, work)
    order = piv - 1
    G2 = np.empty((K, K))
    for i in range(K):
        for j in range(K):
            G2[i, j] = Gh[order[i], order[j]]
    Gh[:, :] = G2
    U2 = np.empty((K, K))
    for j in range(K):
        U2[:, j] = U[h][:, order[j]]
    U[h][:, :] = U2
    for a in (y[h], kU, bU):
        t = a.copy()
        for i in range(K):
            a[i] = t[order[i]]
    cc[h] = max(rank, 0)
    fresh[h] = False


@njit(cache=True)
def count(h, s_lo, s_hi, trG, G, U, y, kU, bU, fS, e, dS, eta, cc, fresh, rotate, W, W2, rounds):
    """c with λ_c(G̃) > s_hi and λ_{c+1}(G̃) < s_lo, or (-1, reason) (see StreamRanks._count).

    s_lo and s_hi hold the Gram's drift bound as it was on entry; a rotation (in ``inertia``) grows it,
    and every later check on the rotated Gram moves its shift out by the growth (dee; likewise the
    basis' departure from orthonormality, eta, which scales eigenvalues by 1 ± 2 eta)."""
    K = G.shape[1]
    f2 = fS[h] ** 2
    g = (K + 1) * U64 / (1 - (K + 1) * U64)
    m = 4 * g * (trG + 2 * K * s_hi)
    s_under, s_over = s_lo - m, s_hi + m
    if s_under <= 0 or m > 0.05 * (s_hi - s_lo) + 0.01 * s_lo:
        return -1, 3
    if fresh[h]:
        pivot(h, s_under / f2, G, U, y, kU, bU, cc, fresh, W)
    Gh = G[h]
    Wf = W.reshape(K * K)
    why = 0
    ee0, eta0 = error(h, trG, e, dS, K), eta[h]
    for _ in range(2):
        if cc[h] == K:
            c = K
        else:
            dee = error(h, trG, e, dS, K) - ee0 + 2 * (eta[h] - eta0) * s_over
            c, why = inertia(h, s_under - dee, f2, g, m, G, U, y, kU, bU, fS, e, eta, cc, fresh, rotate, W, W2,
                             rounds)
        if c < 0:
            break
        if c == 0:
            return 0, 0
        dee = error(h, trG, e, dS, K) - ee0 + 2 * (eta[h] - eta0) * s_over
        for i in range(c):
            for j in range(c):
                W[i, j] = Gh[i, j] * f2
            W[i, i] -= s_over + dee
        info = potrf(Wf, 0, c, K)
        if info == 0:
            if 2 * g * fro2_lower(W, 0, c) * (1 + 1e-3) <= m:
                return c, 0
            why = 4
            break
        if c < K:
            c2, w2 = inertia(h, s_over + dee, f2, g, m, G, U, y, kU, bU, fS, e, eta, cc, fresh, rotate, W, W2,
                             rounds)
            if c2 == c:
                return c, 0
            why = 5 if c2 >= 0 else 10
            break
        swap(Gh, U[h], y[h], kU, bU, info - 1, K - 1)
        cc[h] = K - 1
    fresh[h] = True
    return -1, (why if why else 9)


@njit(cache=True)
def fallback(Sh, f, eps, A, s, work, iwork):
    K, V = Sh.shape
    A2 = A.reshape(K, V)
    for i in range(K):
        for j in range(V):
            A2[i, j] = Sh[i, j] * f
    mn = min(K, V)
    info = gesdd_n(V, K, A, V, s, work, iwork)
    if info != 0:
        sv = np.linalg.svd(A2)[1]
        s[:mn] = sv
    if mn == 0 or not s[0] > 0:
        return 0
    n = 0
    for i in range(mn):
        if s[i] > eps * s[0]:
            n += 1
    return n


@njit(cache=True)
def feed(k, v, beta, decay, channel, rotate, eps, S, fS, U, G, e, dS, eta, cc, y, theta, fresh,
         skip, counts, reasons, rounds):
    """All tokens of a block, all heads; returns ranks [T, H]."""
    T, H, K = k.shape
    V = v.shape[2]
    out = np.empty((T, H), np.int64)
    eps2 = eps * eps
    W = np.empty((K, K))
    W2 = np.empty((K, K))
    A32 = np.empty(K * K, np.float32)
    kU = np.empty(K)
    bU = np.empty(K)
    mn = min(K, V)
    A = np.empty(K * V)
    sv = np.empty(mn)
    work = np.empty(8 * mn * mn + 8 * max(K, V) + 64)
    iwork = np.empty(8 * mn, np.int32)
    for t in range(T):
        for h in range(H):
            update(h, S, G, U, fS, e, dS, eta, k[t, h], v[t, h], beta[t, h], decay[t, h], channel, kU, bU)
            trG = trace(G[h]) * fS[h] ** 2
            # a re-formed Gram's own rounding bound: when even that eats the margin (small ε) it is not done
            e_new = 2 * (2 * K + V + 2) * U64 * trG
            if e[h] > 0 and error(h, trG, e, dS, K) > 0.01 * eps2 * theta[h] and e_new < 0.005 * eps2 * theta[h]:
                reform(h, S, G, U, fS, e, eta)
                counts[2] += 1
            for attempt in range(2):
                th, th2, rho, trG = ritz(h, G, fS, y, kU)
                theta[h] = th
                # the certificate
                r, why = -1, 0
                ee = error(h, trG, e, dS, K)
                if trG == 0 and ee == 0:
                    r = 0
                else:
                    lo = th - ee
                    if lo <= 0 or ee > 0.02 * eps2 * lo:
                        why = 1
                    else:
                        # σ_1² without a factorization when the top direction dominates, else the Cholesky
                        # (tried again 8 tokens after it last failed for this head)
                        hi = -1.0
                        if skip[h] > 0:
                            skip[h] -= 1
                        else:
                            hi = deflated_upper(G[h], y[h]) * fS[h] ** 2 * (1 + 1e-12)
                            gap = max(th - th2, rho, 1e-300)
                            if not (hi > 0 and hi - th <= max(4 * rho * rho / gap, 2e-5 * th)):
                                hi = -1.0
                                skip[h] = 8
                        if hi < 0:
                            hi = upper(G[h], fS[h] ** 2, th, th2, rho, trG, A32)
                        if hi < 0:
                            why = 2
                        else:
                            w = 2 * eta[h]
                            r, why = count(h, eps2 * lo * (1 - w) - ee, eps2 * (hi + ee) * (1 + w) + ee, trG,
                                           G, U, y, kU, bU, fS, e, dS, eta, cc, fresh, rotate, W, W2, rounds)
                # the drift widened the threshold interval: re-form the Gram (cheaper than svdvals), retry
                if r >= 0 or attempt or not (why == 1 or why == 5) or not ee > 1e-5 * eps2 * max(lo, 0.0) \
                        or not 2 * (2 * K + V + 2) * U64 * trG < 0.005 * eps2 * max(lo, 0.0):
                    break
                reform(h, S, G, U, fS, e, eta)
                counts[2] += 1
            if r >= 0:
                counts[0] += 1
            else:
                counts[1] += 1
                reasons[why] += 1
                fresh[h] = True
                r = fallback(S[h], fS[h], eps, A, sv, work, iwork)
            out[t, h] = r
    return out
