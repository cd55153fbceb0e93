"""Per-position dynamics arrays, pure numpy: several texts measured at different positions merged onto
one position axis, and each series' time mean and last value.

    stats, pos = merge_on_positions(parts, STAT_NAMES)  # parts: {stat: [n_i, L, H, P_i], positions: [P_i]}
    dyn = merge_dynamics([a.arrays(), b.arrays()])       # two analyze runs -> one over all their texts
    final = last_finite(stats["threshold_rank"])         # [N, L, H]

Shapes: N texts, L layers, H heads, P positions (sorted 1-based token counts). A text that has no
measurement at a position (shorter, or not scheduled there) holds NaN at that entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import UserError


def merge_on_positions(parts: Sequence[Mapping[str, np.ndarray]],
                       names: Iterable[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """parts, each {name: [n_i, L, H, P_i], "positions": [P_i]} -> ({name: [N, L, H, P]}, positions [P]):
    the parts' texts stacked in order (N = Σ n_i) on P, the sorted union of their positions; float64,
    NaN where a text has no value."""
    pos = np.unique(np.concatenate([np.asarray(p["positions"]) for p in parts]))
    out = {}
    for name in names:
        shape = np.shape(parts[0][name])[1:-1]  # [L, H]
        a = np.full((sum(len(p[name]) for p in parts),) + shape + (len(pos),), np.nan)
        i = 0
        for p in parts:
            a[i : i + len(p[name])][..., np.searchsorted(pos, p["positions"])] = p[name]
            i += len(p[name])
        out[name] = a
    return out, pos


def merge_dynamics(runs: list[dict]) -> dict:
    """Several analyze ``Dynamics.arrays()`` dicts -> one over all their texts (union of positions,
    NaN where a text has none). Layers must agree; bound [P] or [L, P] is taken on the union."""
    if len(runs) == 1:
        return runs[0]
    from .spectra import stat_names  # lazily: spectra imports torch

    layers = runs[0]["layers"]
    if any(not np.array_equal(r["layers"], layers) for r in runs):
        raise UserError("--from-runs folders measured different layers (different models?)")
    out, pos = merge_on_positions(runs, [n for n in stat_names() if all(n in r for r in runs)])
    b = np.zeros((len(layers), len(pos)))
    for r in runs:
        b[:, np.searchsorted(pos, r["positions"])] = np.broadcast_to(r["bound"], (len(layers), len(r["positions"])))
    out.update(positions=pos, layers=layers, bound=b[0] if (b == b[0]).all() else b,
               log_decay=np.concatenate([r["log_decay"] for r in runs]),
               texts=np.concatenate([r["texts"] for r in runs]))
    return out


def last_finite(x: np.ndarray) -> np.ndarray:
    """x [..., P] -> value at the last finite position of each series [...] (NaN if none)."""
    fin = np.isfinite(x)
    idx = np.where(fin.any(-1), x.shape[-1] - 1 - np.argmax(fin[..., ::-1], axis=-1), 0)
    out = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    return np.where(fin.any(-1), out, np.nan)


def time_mean(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """x [..., P] over positions t [P] (NaN = absent) -> [...]: trapezoid time average over the finite
    positions of each series (its value if only one), so a stride, log or mixed schedule all
    approximate the mean over every token."""
    out = np.full(x.shape[:-1], np.nan)
    fin = np.isfinite(x)
    for idx in np.ndindex(x.shape[:-1]):
        m = fin[idx]
        if not m.any():
            continue
        xs, ts = x[idx][m], t[m].astype(float)
        out[idx] = xs[0] if len(xs) == 1 else np.trapezoid(xs, ts) / (ts[-1] - ts[0])
    return out
