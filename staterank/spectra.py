"""Spectra of recurrent states: singular values, threshold rank (paper Eq. 6) and related ranks.

Pure, batched math on states ``S`` of shape [..., K, V] (any leading batch shape, e.g. [L, H, P, K, V]
or [N, K, V]); a leaf module (torch and numpy only). Shapes use B batch, T tokens, L layers,
H heads, P positions, K key dim, V value dim, and N = min(K, V).

How σ are computed (an exact Gram route, CPU workers, accelerators): ``spectra_engine``.
"""

from __future__ import annotations

import numpy as np
import torch

from .spectra_engine import _MIN_GRAM_EPS, METHODS, _check_states, _sigma

__all__ = [
    "STAT_NAMES",
    "EXTRA_STATS",
    "register_stat",
    "stat_names",
    "METHODS",
    "singular_values",
    "threshold_rank",
    "entropy_rank",
    "stable_rank",
    "spectrum_stats",
    "rank_bound",
]

STAT_NAMES = ("threshold_rank", "entropy_rank", "stable_rank", "nuclear_norm", "frobenius_norm", "spectral_norm")
# More statistics of a state's spectrum, by name: fn(sigma [..., N] descending fp64, fro [...], eps) ->
# [...]. A new rank metric is one function registered from any module (``register_stat``); capture,
# analyze (dynamics.npz) and every merge carry it beside the built-in STAT_NAMES.
EXTRA_STATS: dict = {}


def register_stat(name: str):
    """Decorator: ``fn(sigma, fro, eps) -> Tensor`` becomes statistic ``name`` of every capture."""
    def deco(fn):
        if name in STAT_NAMES or name in ("positions", "layers", "bound", "log_decay", "texts"):
            raise ValueError(f"{name!r} is a built-in statistic or a dynamics field")
        EXTRA_STATS[name] = fn
        return fn
    return deco


def stat_names() -> tuple[str, ...]:
    """The built-in statistics, then the registered ones, in registration order."""
    return STAT_NAMES + tuple(EXTRA_STATS)

def rank_bound(t, K: int, V: int):
    """min(t, K, V): a state built from t rank-one writes has rank at most this. ``t`` int or tensor."""
    if isinstance(t, torch.Tensor):
        return t.clamp(max=min(K, V))
    if isinstance(t, np.ndarray):
        return np.minimum(t, min(K, V))
    return min(int(t), K, V)


def singular_values(S: torch.Tensor, *, method: str = "auto", threads: int | None = None) -> torch.Tensor:
    """σ of states S [..., K, V] -> [..., N] fp64, descending, N = min(K, V).

    ``"gram"``/``"auto"``: absolute error ~1e-7·σ_1 at worst (σ below that come out as 0);
    ``"svd"``: fp64 ``svdvals``, error ~1e-16·σ_1, about 1.5-2× slower on CPU.
    """
    return _sigma(S, None, method, threads)


def _count(sigma: torch.Tensor, eps: float) -> torch.Tensor:
    if sigma.shape[-1] == 0:
        return torch.zeros(sigma.shape[:-1], dtype=torch.long, device=sigma.device)
    # σ_1 = 0 gives σ_i > 0 for no i: rank 0 with no special case.
    return (sigma > eps * sigma[..., :1]).sum(-1)


def threshold_rank(S: torch.Tensor | None = None, eps: float = 1e-4, *, sigma: torch.Tensor | None = None,
                   method: str = "auto", tokens=None, threads: int | None = None) -> torch.Tensor:
    """#{i : σ_i > ε·σ_1} (paper Eq. 6) -> LongTensor [...]; 0 when σ_1 = 0.

    From states S [..., K, V], exact (equal to fp64 ``svdvals`` counts; see module doc), or from
    precomputed descending ``sigma`` [..., N]. ``tokens``: rank-one writes since a ZERO state per
    state (int or tensor broadcastable to [...]); states whose bound min(t, K, V) is 0 or 1 are
    settled without an eigensolve (t = 1: rank 1 unless S = 0). The bound is exact arithmetic's:
    below ε = 1e-6 fp32 rounding of a rank-one state shows as more rank, so the shortcut is off there.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if sigma is not None:
        if S is not None:
            raise ValueError("give states S or sigma, not both")
        return _count(sigma, eps)
    if S is None:
        raise ValueError("give states S or sigma")
    _check_states(S)
    if tokens is None:
        return _count(_sigma(S, eps, method, threads), eps)
    batch = S.shape[:-2]
    K, V = S.shape[-2:]
    t = torch.as_tensor(tokens, device=S.device).broadcast_to(batch)
    bound = rank_bound(t, K, V).clamp(min=0)
    small = bound <= 1 if eps >= _MIN_GRAM_EPS else torch.zeros_like(bound, dtype=torch.bool)
    n_small = int(small.sum())
    if 2 * n_small <= small.numel():
        # mostly unsettled: solve all in place (gathering S[todo] would copy every state)
        rank = _count(_sigma(S, eps, method, threads), eps)
    else:
        rank = torch.zeros(batch, dtype=torch.long, device=S.device)
        todo = (~small).nonzero(as_tuple=True)
        if todo[0].numel():
            rank[todo] = _count(_sigma(S[todo], eps, method, threads), eps)
    if n_small:
        idx = small.nonzero(as_tuple=True)
        nonzero = (S[idx] != 0).flatten(-2).any(-1)
        rank[idx] = (bound[idx] * nonzero).long()
    return rank


def entropy_rank(sigma: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli effective rank exp(-Σ p_i log p_i), p_i = σ_i / Σσ: [..., N] -> [...]; 0 for S = 0."""
    total = sigma.sum(-1, keepdim=True)
    p = sigma / torch.where(total > 0, total, 1)
    h = -torch.where(p > 0, p * p.log(), 0).sum(-1)  # 0·log 0 = 0
    return torch.where(total[..., 0] > 0, h.exp(), 0)


def stable_rank(sigma: torch.Tensor) -> torch.Tensor:
    """‖S‖_F² / ‖S‖_2² = Σσ_i² / σ_1²: [..., N] -> [...]; 0 for S = 0."""
    if sigma.shape[-1] == 0:
        return sigma.sum(-1)
    s1 = sigma[..., 0]
    r = sigma / torch.where(s1 > 0, s1, 1)[..., None]  # ratios first: σ² may leave fp64's range
    return torch.where(s1 > 0, (r * r).sum(-1), 0)


def spectrum_stats(S: torch.Tensor, eps: float = 1e-4, *, method: str = "auto",
                   threads: int | None = None) -> dict[str, torch.Tensor]:
    """All of ``STAT_NAMES`` for states S [..., K, V] -> {name: Tensor [...]}.

    threshold_rank is a LongTensor, exact as in ``threshold_rank``; the rest fp64. The Frobenius
    norm is the fp64 sum of squares of S's entries (the Gram's trace, to ~K·u64); the σ-sums
    (nuclear norm, entropy rank) carry the engine's ~1e-7·σ_1 per-value error, i.e. ≲1e-5 relative
    (``method="svd"`` for ~1e-15).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    both = _sigma(S, eps, method, threads, with_fro=True)
    sigma, fro = both[..., :-1], both[..., -1]
    s1 = sigma[..., 0] if sigma.shape[-1] else fro * 0
    return {
        "threshold_rank": _count(sigma, eps),
        "entropy_rank": entropy_rank(sigma),
        "stable_rank": torch.where(s1 > 0, (fro / torch.where(s1 > 0, s1, 1)) ** 2, 0),
        "nuclear_norm": sigma.sum(-1),
        "frobenius_norm": fro,
        "spectral_norm": s1,
        **{name: fn(sigma, fro, eps) for name, fn in EXTRA_STATS.items()},
    }
