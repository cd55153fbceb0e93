"""How the singular values of recurrent states are computed, for ``spectra`` (leaf: torch, numpy).

Engine. ``method="gram"`` (the default through ``"auto"``) forms the fp64 Gram matrix on the
smaller side (S Sᵀ or Sᵀ S) and calls batched ``eigvalsh``: states arrive in fp32, whose
products are exact in fp64, so the Gram is accurate to ~(K+V)·u64·‖S‖_F² and resolves σ_i/σ_1
down to ~1e-7. That is ample for ε = 1e-4 but not a proof for a σ sitting on the threshold, so
every matrix with an eigenvalue inside that error band around ε²σ_1² is recomputed with fp64
``svdvals`` (``method="svd"``): threshold ranks equal those of fp64 ``svdvals`` exactly.
(An fp32 Gram would lose σ below ~3e-4·σ_1 and miscount at ε = 1e-4.)

Threads. ``threads`` (default ``torch.get_num_threads()``) CPU workers each take a slice of the
batch with torch's intra-op threads set to 1 for the duration of the call (process-wide; restored
after). Cost on one core, 128x128: ~0.5 ms/matrix vs ~0.8 ms for fp64 ``svdvals`` (1.55x;
2.9-3.5x with two workers, since batched ``svdvals`` cannot use a second core).

Accelerators. States on a GPU get their Grams there. torch's CUDA ``eigvalsh`` has been batched
only for N <= 32, looping cuSOLVER one matrix at a time above it (ms each; pytorch issues 174674,
175585), so a Gram (128 KB at N = 128) may be eigensolved faster by ``threads`` CPU workers on the
host. ``EIGH_PLACE = "auto"`` times both once per device, N and worker count and keeps the faster
(not yet run on a GPU here: ``benchmarks/gpu_check.sh`` measures both).

Why not faster on one core: the fp64 Gram product alone costs about a third of ``svdvals``
(``benchmarks/spectra.py`` prints that ceiling), and every certificate we know for an exact count
(eigvalsh, Cholesky/LDLᵀ inertia at a bracket of shifts) needs that product or another O(K³) step
per state. Speed-ups beyond ~1.6x come from parallel hardware: batch-parallel CPU workers or a GPU.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

METHODS = ("auto", "gram", "svd")
_U64 = float(np.finfo(np.float64).eps) / 2
# Below this ε the Gram route's ambiguity band would swallow the threshold: use the SVD.
_MIN_GRAM_EPS = 1e-6
# State elements per CPU chunk: keeps the fp64 copy + Gram cache-resident (64 matrices of
# 128x128 beat 1024 by 25% here) while small states still go in large batches.
_CHUNK_ELEMS = 2**20
_CUDA_CHUNK_ELEMS = 2**26  # on a GPU, fewer larger launches
# Where the Grams of states on an accelerator are eigensolved: "device", "host" (the CPU workers,
# ``_gram_sigma_host``) or "auto": whichever was faster on a sample, timed once per device, N and
# worker count (torch's CUDA eigvalsh loops one matrix at a time above N = 32 in some versions).
EIGH_PLACE = "auto"
_PLACE_CACHE: dict[tuple, bool] = {}
_PLACE_LOCK = threading.Lock()


def _check_states(S: torch.Tensor) -> None:
    if not isinstance(S, torch.Tensor) or S.dim() < 2:
        raise ValueError(f"states must be a tensor [..., K, V], got {type(S).__name__} "
                         f"with shape {tuple(getattr(S, 'shape', ()))}")
    if S.is_complex():
        raise ValueError("states must be real")


def _resolve_method(method: str, eps: float | None) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        return "svd" if eps is not None and eps < _MIN_GRAM_EPS else "gram"
    return method


_NON_FINITE = "states contain inf or nan (a diverged model?): no spectrum of them means anything"


def _svd_sigma(S: torch.Tensor, with_fro: bool = False) -> torch.Tensor:
    Sd = S.to(torch.float64).contiguous()
    try:
        sigma = torch.linalg.svdvals(Sd)
    except torch.linalg.LinAlgError:
        sigma = torch.full(Sd.shape[:-2] + (min(Sd.shape[-2:]),), float("nan"), dtype=torch.float64)
    if not bool(torch.isfinite(sigma).all()):
        raise ValueError(_NON_FINITE)
    if not with_fro:
        return sigma
    # scaled by the largest entry: a plain sum of squares overflows (or underflows) for extreme fp64 states
    amax = Sd.abs().amax(dim=(-2, -1))
    unit = torch.where(amax > 0, amax, torch.ones_like(amax))
    fro = torch.linalg.vector_norm(Sd / unit[..., None, None], dim=(-2, -1)) * unit
    return torch.cat([sigma, fro[:, None]], dim=1)


_TLS = threading.local()


def _buffers(device, M: int, K: int, V: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 work buffers [M, K, V] and [M, n, n]: on CPU per thread and reused chunk after chunk.
    Fresh multi-MB tensors per chunk come from mmap, and their page faults cost up to a fifth of
    the engine here (1.23-1.36x vs 1.54x over svdvals; glibc's mmap threshold moves with what was
    last freed, so timings depended on unrelated allocations). CUDA's caching allocator needs none."""
    if device.type != "cpu":
        return (torch.empty(M, K, V, dtype=torch.float64, device=device),
                torch.empty(M, n, n, dtype=torch.float64, device=device))
    cache = getattr(_TLS, "bufs", None)
    if cache is None or cache[0] != (K, V) or cache[1].shape[0] < M:
        cache = ((K, V), torch.empty(M, K, V, dtype=torch.float64), torch.empty(M, n, n, dtype=torch.float64))
        _TLS.bufs = cache
    return cache[1][:M], cache[2][:M]


def _gram(S: torch.Tensor):
    """S [M, K, V] -> (G [M, N, N] fp64 Gram on the smaller side, ‖S‖_F² [M, 1], scale [M] or None),
    on S's device. fp64 states are scaled by a power of two (exact) so the Gram cannot overflow."""
    K, V = S.shape[-2:]
    M, n = S.shape[0], min(K, V)
    buf_s, buf_g = _buffers(S.device, M, K, V, n)
    Sd = buf_s.copy_(S)
    scale = None
    if S.dtype == torch.float64:
        # fp32/16 squares cannot leave fp64's range, fp64 ones can: scale each state by a power of
        # two (exact) so its largest entry is ~1, and undo it on σ
        scale = torch.exp2(-torch.frexp(Sd.abs().amax(dim=(-2, -1)))[1].to(torch.float64))  # [M]
        Sd.mul_(scale[:, None, None])
    G = torch.matmul(Sd, Sd.mT, out=buf_g) if K <= V else torch.matmul(Sd.mT, Sd, out=buf_g)
    fro2 = G.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)  # ‖S‖_F²
    if not bool(torch.isfinite(fro2).all()):  # finite states cannot overflow it (scaled above): free check
        raise ValueError(_NON_FINITE)
    return G, fro2, scale


def _eig_sigma(G: torch.Tensor, fro2: torch.Tensor, scale: torch.Tensor | None, S: torch.Tensor,
               eps: float | None, with_fro: bool) -> torch.Tensor:
    """σ [M, N] (+ ‖S‖_F column) from ``_gram``'s output, on G's device (S may live elsewhere: the
    matrices ambiguous at ε are fetched from it and redone by SVD where G is)."""
    K, V = S.shape[-2:]
    n = min(K, V)
    lam = torch.linalg.eigvalsh(G).flip(-1)  # descending
    lam1 = lam[:, :1].clamp(min=0)
    # Eigenvalues under eigvalsh's own backward error are noise around 0; zero them so exactly
    # low-rank states get exactly low-rank spectra (entropy rank 1 for rank 1, not 1.00002).
    sigma = torch.where(lam > n * _U64 * lam1, lam, 0).sqrt()

    if eps is not None:
        # Gram rounding (≤ (K+V)·u·‖S‖_F², fp32 products being exact) + eigvalsh backward error.
        band = 4 * (K + V) * _U64 * fro2 + 4 * n * _U64 * lam1
        amb = ((lam - eps * eps * lam1).abs() <= band).any(-1) & (lam1[:, 0] > 0)
        if bool(amb.any()):
            idx = amb.nonzero().squeeze(-1)
            redo = _svd_sigma(S[idx.to(S.device)].to(G.device))
            sigma[idx] = redo * (scale[idx, None] if scale is not None else 1)
    if not with_fro and scale is None:
        return sigma
    fro = fro2.clamp(min=0).sqrt()
    if scale is not None:
        sigma, fro = sigma / scale[:, None], fro / scale[:, None]
    return torch.cat([sigma, fro], dim=1) if with_fro else sigma


def _gram_sigma(S: torch.Tensor, eps: float | None, with_fro: bool = False) -> torch.Tensor:
    """S [M, K, V] -> σ [M, N] fp64 descending, all on S's device; matrices ambiguous at ε redone by
    SVD. ``with_fro``: ‖S‖_F appended as column N, from the Gram's trace (the fp64 sum of squares of
    S; ``vector_norm(..., dtype=float64)`` costs ~60 µs per 128x128 state, 12 % of the engine)."""
    return _eig_sigma(*_gram(S), S, eps, with_fro)


@contextmanager
def _intraop_threads(n: int):
    """Set torch's intra-op threads to n for the block (process-wide), then restore."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _map_cpu(fn, items: list, threads: int) -> list:
    """fn over items in ``threads`` Python workers, each running single-threaded torch kernels.

    On CPU, parallelism is over the batch: batched LAPACK is serial over the batch and small
    matrices gain nothing from intra-op threads, while OpenMP teams on a busy machine spin:
    measured here on 2 loaded cores, 128x128 ranks took 38 ms/matrix with torch's 2 threads vs
    2 ms with 1. torch releases the GIL, so Python threads run chunks in parallel.
    """
    with _intraop_threads(1):
        if threads > 1 and len(items) > 1:
            with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
                return list(pool.map(fn, items))
        return [fn(c) for c in items]


def _host_pieces(M: int, per: int, threads: int) -> list[slice]:
    size = max(1, min(_CHUNK_ELEMS // per, -(-M // threads)))
    return [slice(i, i + size) for i in range(0, M, size)]


def _run_chunked(fn, S: torch.Tensor, threads: int, width: int) -> torch.Tensor:
    """Apply fn to [M, K, V] chunks of the flattened batch: on CPU in ``threads`` workers, on a GPU
    in a few large launches."""
    batch = S.shape[:-2]
    flat = S.reshape(-1, *S.shape[-2:])
    M = flat.shape[0]
    if M == 0:
        return torch.zeros(*batch, width, dtype=torch.float64, device=S.device)
    per = max(1, S.shape[-2] * S.shape[-1])
    if S.device.type != "cpu":
        return torch.cat([fn(c) for c in flat.split(max(1, _CUDA_CHUNK_ELEMS // per))]).reshape(*batch, -1)
    outs = _map_cpu(fn, [flat[sl] for sl in _host_pieces(M, per, threads)], threads)
    return torch.cat(outs).reshape(*batch, -1)


def _gram_sigma_host(S: torch.Tensor, eps: float | None, with_fro: bool, threads: int) -> torch.Tensor:
    """The Gram route for states on an accelerator: Grams there, eigensolves on the host's CPU
    workers. S [..., K, V] -> [..., N (+1)] on S's device.

    Where torch's CUDA ``eigvalsh`` is batched only for N <= 32 (``linalg_eigh_cusolver`` has
    looped cuSOLVER's syevd one matrix at a time above that: reported at 0.3 s for 64 fp64
    128x128 matrices, several times one CPU core here), this is the faster place; ``_eig_on_host``
    decides by timing. A Gram is N² fp64 numbers (128 KB at N = 128): cheap to ship.
    """
    batch = S.shape[:-2]
    flat = S.reshape(-1, *S.shape[-2:])
    n = min(S.shape[-2:])
    outs = []
    for c in flat.split(max(1, _CUDA_CHUNK_ELEMS // (S.shape[-2] * S.shape[-1]))):
        G, fro2, scale = _gram(c)
        G, fro2 = G.cpu(), fro2.cpu()
        scale = None if scale is None else scale.cpu()

        def part(sl, G=G, fro2=fro2, scale=scale, c=c):
            return _eig_sigma(G[sl], fro2[sl], None if scale is None else scale[sl], c[sl], eps, with_fro)

        outs += _map_cpu(part, _host_pieces(c.shape[0], n * n, threads), threads)
    return torch.cat(outs).to(S.device).reshape(*batch, -1)


def _eig_on_host(S: torch.Tensor, threads: int) -> bool:
    """Whether the Gram route solves S's Grams on the host (``_gram_sigma_host``): per ``EIGH_PLACE``;
    "auto" times both places once per device, N and worker count and keeps the faster."""
    if S.device.type == "cpu" or EIGH_PLACE == "device":
        return False
    if EIGH_PLACE == "host":
        return True
    key = (str(S.device), min(S.shape[-2:]), threads)
    with _PLACE_LOCK:  # one timing at a time: concurrent ones would disturb each other
        if key not in _PLACE_CACHE:
            _PLACE_CACHE[key] = _host_is_faster(S, threads)
        return _PLACE_CACHE[key]


_PLACE_SAMPLE = 256


def _host_is_faster(S: torch.Tensor, threads: int) -> bool:
    """Time eigvalsh of 256 of S's Grams on S's device and on the host's workers; best of two
    timings each, after a warm-up (solver handles and workspaces are created on first use).
    The sample is spread over the whole batch (early tokens are low rank, which flatters
    iterative solvers) and a small batch is repeated up to 256: the decision is cached for the
    process, and batched device solvers get faster per matrix as batches grow."""
    flat = S.reshape(-1, *S.shape[-2:])
    idx = torch.linspace(0, flat.shape[0] - 1, _PLACE_SAMPLE, device=S.device).round().long()
    G = _gram(flat[idx])[0].clone()
    n = G.shape[-1]

    def sync():
        if G.device.type == "cuda":
            torch.cuda.synchronize(G.device)
        elif G.device.type not in ("cpu", "meta"):
            torch.accelerator.synchronize(G.device)

    def device():
        torch.linalg.eigvalsh(G)
        sync()

    def host():
        Gc = G.cpu()
        _map_cpu(torch.linalg.eigvalsh, [Gc[sl] for sl in _host_pieces(Gc.shape[0], n * n, threads)], threads)

    took = {device: float("inf"), host: float("inf")}
    sync()
    for f in (device, host, device, host, device, host):
        t0 = time.perf_counter()
        f()
        took[f] = min(took[f], time.perf_counter() - t0)  # the warm-up run counts too: min ignores it
    return took[host] < took[device]


def _sigma(S: torch.Tensor, eps: float | None, method: str, threads: int | None,
           with_fro: bool = False) -> torch.Tensor:
    _check_states(S)
    method = _resolve_method(method, eps)
    if min(S.shape[-2:]) == 0:
        return torch.zeros(*S.shape[:-2], int(with_fro), dtype=torch.float64, device=S.device)
    threads = torch.get_num_threads() if threads is None else max(1, int(threads))  # CPU workers
    if method == "svd":
        fn = lambda c: _svd_sigma(c, with_fro)  # noqa: E731
    elif S.numel() and _eig_on_host(S, threads):
        return _gram_sigma_host(S, eps, with_fro, threads)
    else:
        fn = lambda c: _gram_sigma(c, eps, with_fro)  # noqa: E731
    return _run_chunked(fn, S, threads, width=min(S.shape[-2:]) + int(with_fro))
