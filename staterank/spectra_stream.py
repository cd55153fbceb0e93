"""Threshold ranks at every token from the delta rule's inputs, each one certified exact.

A gated-delta-rule layer's state follows, per value head and token (``recurrence``),
    S_t = g_t S_{t-1} + k_t w_tᵀ,   w_t = β_t (v_t − g_t S_{t-1}ᵀ k_t),
so its Gram G_t = S_t S_tᵀ [K, K] moves by a rank-2 update a token: O(K·V + K²) instead of the
O(K²·V) product. ``StreamRanks`` keeps each head's state and Gram in a tracked orthonormal basis whose
leading c vectors span the directions above the threshold, and proves #{i : σ_i > ε σ_1} (paper Eq. 6)
with one block LDLᵀ factorization per state (``_stream_kernels`` has the argument): σ_1² is bracketed
by a Rayleigh quotient and a Kato-Temple bound, and the count holds for every threshold in the bracket
with rounding bounds on every step. When the leading block loses a direction or the rest gains one, a
Rayleigh-Ritz step on that block re-aims the basis; a state no certificate settles (a σ within the
bounds' width of the threshold, or ε so small that an fp64 Gram cannot separate it, ε ≲ 1e-6) is
answered by fp64 singular values of the state. ``counts`` says how often each happened.

So the counts are those of the exact-arithmetic states of the given inputs; fp64 ``svdvals`` of an
fp64 replay reproduces them unless a σ sits within its own rounding of the threshold.

Needs numba (the ``stream`` extra). Without it, or with a per-channel decay (Kimi Linear's KDA: D G D
is not a rank-2 move in a rotated basis), the same answers come from fp64 replayed states and
``spectra.threshold_rank``, at that engine's speed.

Shapes: T tokens, H value heads, K key dim, V value dim.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from . import _stream_kernels as _nb
except ImportError:  # numba missing: the states path below answers
    _nb = None


def available() -> bool:
    """Whether the compiled stream engine can run here (numba imports)."""
    return _nb is not None


def _np(x, shape=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    return a if shape is None else a.reshape(shape)


class StreamRanks:
    """Exact threshold ranks of one layer's delta-rule states, fed blocks of tokens in order.

    ``feed(k [T, H, K], v [T, H, V], beta [T, H], decay [T, H])`` -> ranks [T, H] int64, with k as
    the rule uses it (normalised if the layer normalises) and decay = exp(g) per head (a [T, H, K]
    per-channel decay takes the states path). The state starts at ``state0`` [H, K, V] (zeros by
    default) and carries over between calls; ``state()`` returns it [H, K, V] (fp64).
    """

    def __init__(self, eps: float, H: int, K: int, V: int, state0=None, *, compiled: bool | None = None,
                 krylov_steps: int = 1, refresh: int = 16):
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if min(H, K, V) < 1:
            raise ValueError(f"H, K and V must be >= 1, got {H}, {K}, {V}")
        if compiled and _nb is None:
            raise ImportError("the compiled stream engine needs numba: pip install 'staterank[stream]'")
        self.eps, self.H, self.K, self.V = float(eps), H, K, V
        self.compiled = _nb is not None if compiled is None else bool(compiled)
        self.steps = int(krylov_steps)
        S0 = np.zeros((H, K, V)) if state0 is None else _np(state0, (H, K, V)).copy()
        self.stats = np.zeros(_nb.N_STATS if _nb else 2, np.int64)
        self._channel_state = None
        if self.compiled:
            self.S = S0
            self.G = np.zeros((H, K, K))
            self.X = np.zeros((H, K))
            self.B = np.zeros((H, 2))
            self.FX = np.zeros((H, K, K))
            self.FD = np.zeros((H, K, 3))
            self.FT = np.zeros((H, K), np.int8)
            self.FP = np.zeros((H, K), np.int64)
            self.FB = np.zeros((H, 16))
            self.BV = np.zeros((H, 2 * refresh, K))
            self.ZV = np.zeros((H, 2 * refresh, K))
            self.CP = np.zeros((H, 2 * refresh, 2 * refresh))
            _nb.start(self.S, self.G, self.X, self.B, self.FB)
        else:
            self._channel_state = S0

    @property
    def counts(self) -> dict[str, int]:
        names = _nb.STAT_NAMES if _nb else ("certified", "fallback")
        return {n: int(x) for n, x in zip(names, self.stats)}

    def state(self) -> np.ndarray:
        """The current states [H, K, V] (fp64) in the original coordinates."""
        if self._channel_state is not None:
            return self._channel_state.copy()
        return self.S.copy()

    def _to_states_path(self):
        if self._channel_state is None:
            self._channel_state = self.state()

    def feed(self, k, v, beta, decay) -> torch.Tensor:
        T = int(k.shape[0])
        H, K, V = self.H, self.K, self.V
        k, v, beta = _np(k, (T, H, K)), _np(v, (T, H, V)), _np(beta, (T, H))
        decay = _np(decay)
        if decay.shape == (T, H, 1):
            decay = decay[..., 0]
        if decay.shape not in ((T, H), (T, H, K)):
            raise ValueError(f"decay must be [T, H] or [T, H, K] = [{T}, {H}] or [{T}, {H}, {K}], got {list(decay.shape)}")
        if decay.ndim == 2 and self.compiled and self._channel_state is None:
            out = np.empty((T, H), np.int64)
            _nb.feed(k, v, beta, np.ascontiguousarray(decay), self.eps, self.S, self.G, self.X, self.B, self.FX,
                     self.FD, self.FT, self.FP, self.FB, self.BV, self.ZV, self.CP, out, self.stats, self.steps)
            return torch.from_numpy(out)
        self._to_states_path()
        return self._feed_states(k, v, beta, decay)

    def _feed_states(self, k, v, beta, decay) -> torch.Tensor:
        """fp64 replay and per-state ranks by ``spectra.threshold_rank`` (per-channel decay, no numba)."""
        from .spectra import threshold_rank

        S = torch.from_numpy(self._channel_state)
        kt, vt, bt, dt = (torch.from_numpy(a) for a in (k, v, beta, decay))
        states = []
        for t in range(kt.shape[0]):
            d = dt[t][:, :, None] if dt.ndim == 3 else dt[t][:, None, None]
            S = S * d
            w = bt[t][:, None] * (vt[t] - torch.einsum("hkv,hk->hv", S, kt[t]))
            S = S + kt[t][:, :, None] * w[:, None, :]
            states.append(S)
        self._channel_state = S.numpy().copy()
        out = threshold_rank(torch.stack(states), self.eps)
        self.stats[0] += out.numel()
        return out.to(torch.int64)


def replay(k, v, beta, decay, state0=None) -> torch.Tensor:
    """fp64 states of the delta rule [T, H, K, V] (the reference the stream engine is checked against)."""
    k, v, beta, decay = (torch.as_tensor(x).to(torch.float64) for x in (k, v, beta, decay))
    T, H, K = k.shape
    S = torch.zeros(H, K, v.shape[-1], dtype=torch.float64) if state0 is None else torch.as_tensor(state0).double()
    out = []
    for t in range(T):
        d = decay[t][:, :, None] if decay.ndim == 3 else decay[t][:, None, None]
        S = S * d
        w = beta[t][:, None] * (v[t] - torch.einsum("hkv,hk->hv", S, k[t]))
        S = S + k[t][:, :, None] * w[:, None, :]
        out.append(S)
    return torch.stack(out)
