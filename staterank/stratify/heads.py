"""Per-head summaries of captured dynamics and the low-/high-rank classes (definitions: the package
docstring). Pure functions of the arrays; no file I/O.

    stats = head_stats(dyn)   # HeadStats: r̄_h, final rank, n̄_h, d, log decay, each [L, H]
    cls = classify(stats)     # Classes: low / high (layer, head) lists, per-head labels [L, H]
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ..dynamics import last_finite, time_mean
from ..errors import UserError

RULES = ("two_cluster", "threshold")


# ---- per-head summaries ------------------------------------------------------------------------------

def check_dyn(dyn: dict) -> None:
    need = ("threshold_rank", "nuclear_norm", "positions", "layers", "bound", "log_decay")
    missing = [k for k in need if k not in dyn]
    if missing:
        raise UserError(f"dynamics lack {', '.join(missing)}")
    r = np.asarray(dyn["threshold_rank"])
    if r.ndim != 4 or r.shape[-1] != len(dyn["positions"]) or r.shape[1] != len(dyn["layers"]):
        raise UserError(f"threshold_rank must be [N, L, H, P] matching positions/layers, got {r.shape}")
    if r.shape[-1] == 0 or r.shape[0] == 0 or r.shape[2] == 0:
        raise UserError("dynamics are empty (no contexts, heads or positions)")


def context_arrays(dyn: dict) -> dict[str, np.ndarray]:
    """Per-context summaries, each [N, L, H]: mean_rank, final_rank, mean_nuclear, log_decay; plus
    last_t [N] (last position with data)."""
    check_dyn(dyn)
    t = np.asarray(dyn["positions"])
    rank = np.asarray(dyn["threshold_rank"], dtype=float)
    nuc = np.asarray(dyn["nuclear_norm"], dtype=float)
    fin = np.isfinite(rank).all(axis=(1, 2))  # [N, P]
    last_t = np.array([t[f][-1] if f.any() else 0 for f in fin])
    return {
        "mean_rank": time_mean(rank, t),
        "final_rank": last_finite(rank),
        "mean_nuclear": time_mean(nuc, t),
        "log_decay": np.asarray(dyn["log_decay"], dtype=float),
        "last_t": last_t,
    }


@dataclass
class HeadStats:
    """Per-head summaries averaged over contexts; every array is [L, H] except ``layers`` and ``bound``
    [L]. Layers are model layer indices. This is what pruning scores read: r̄_h = mean_rank,
    n̄_h = mean_nuclear, d = bound."""

    layers: np.ndarray
    mean_rank: np.ndarray
    final_rank: np.ndarray
    mean_nuclear: np.ndarray
    bound: np.ndarray  # d = min(T_last, K, V) per layer
    log_decay: np.ndarray
    n_contexts: int

    @property
    def norm_rank(self) -> np.ndarray:
        """r̄_h / d, [L, H], in [0, 1]."""
        return self.mean_rank / self.bound[:, None]

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> HeadStats:
        """Back from the ``head_stats`` block of stratify.json (null -> NaN)."""
        arr = lambda x: np.array(x, dtype=float)
        return cls(layers=np.array(d["layers"], dtype=np.int64), mean_rank=arr(d["mean_rank"]),
                   final_rank=arr(d["final_rank"]), mean_nuclear=arr(d["mean_nuclear"]), bound=arr(d["bound"]),
                   log_decay=arr(d["log_decay"]), n_contexts=int(d["n_contexts"]))


def _bound_last(dyn: dict, last_t: int) -> np.ndarray:
    """d per layer [L]: the bound at the latest position any context reached."""
    t = np.asarray(dyn["positions"])
    b = np.asarray(dyn["bound"], dtype=float)
    i = int(np.searchsorted(t, last_t, side="right") - 1)
    L = len(dyn["layers"])
    return np.full(L, b[i]) if b.ndim == 1 else b[:, i]


def head_stats(dyn: dict) -> HeadStats:
    """Per-head summaries of N contexts' dynamics (see the package docstring), averaged over contexts."""
    c = context_arrays(dyn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads stay NaN
        return HeadStats(
            layers=np.asarray(dyn["layers"]),
            mean_rank=np.nanmean(c["mean_rank"], axis=0),
            final_rank=np.nanmean(c["final_rank"], axis=0),
            mean_nuclear=np.nanmean(c["mean_nuclear"], axis=0),
            bound=_bound_last(dyn, int(c["last_t"].max())),
            log_decay=np.nanmean(c["log_decay"], axis=0),
            n_contexts=int(c["mean_rank"].shape[0]),
        )


# ---- classes -----------------------------------------------------------------------------------------

@dataclass
class Classes:
    """Low-/high-rank classes. ``labels`` [L, H]: "low", "high", or "none" (no split possible or a
    non-finite value; then ``reason`` says why). ``low``/``high``: (model layer index, head) pairs."""

    rule: str
    labels: np.ndarray
    layers: np.ndarray
    low: list[tuple[int, int]]
    high: list[tuple[int, int]]
    threshold: float | None  # on normalised rank: low iff value < threshold
    gap: float | None = None
    separation: float | None = None
    centroids: tuple[float, float] | None = None
    reason: str | None = None

    def heads(self, label: str) -> dict[int, list[int]]:
        """{model layer index: [heads]} of one class, the form ``probes.ablate`` takes."""
        out: dict[int, list[int]] = {}
        for l, h in (self.low if label == "low" else self.high if label == "high" else []):
            out.setdefault(l, []).append(h)
        return out

    def share_per_layer(self) -> dict[str, dict[str, float]]:
        return {str(int(self.layers[i])): {lab: float(np.mean(self.labels[i] == lab)) for lab in ("low", "high")}
                for i in range(len(self.layers))}

    def to_dict(self) -> dict:
        return {
            "rule": self.rule, "threshold": self.threshold, "gap": self.gap, "separation": self.separation,
            "centroids": list(self.centroids) if self.centroids else None, "reason": self.reason,
            "n_low": len(self.low), "n_high": len(self.high), "share_per_layer": self.share_per_layer(),
            "low": [list(x) for x in self.low], "high": [list(x) for x in self.high],
            "labels": {str(int(l)): list(self.labels[i]) for i, l in enumerate(self.layers)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Classes:
        """Back from the ``classes`` block of stratify.json."""
        layers = np.array([int(k) for k in d["labels"]])
        labels = np.array([d["labels"][str(l)] for l in layers], dtype=object)
        return cls(rule=d["rule"], labels=labels, layers=layers, low=[tuple(x) for x in d["low"]],
                   high=[tuple(x) for x in d["high"]], threshold=d["threshold"], gap=d["gap"],
                   separation=d["separation"], centroids=tuple(d["centroids"]) if d["centroids"] else None,
                   reason=d["reason"])


def two_means(x: np.ndarray) -> dict | None:
    """Exact 1-D 2-means of x [n]: the split of the sorted values minimising the within-cluster sum of
    squares (ties broken by the first minimum; equal values are never separated). None when fewer
    than two distinct values."""
    xs = np.sort(np.asarray(x, dtype=float))
    n = len(xs)
    cand = np.nonzero(np.diff(xs) > 0)[0] + 1  # k: left cluster xs[:k]
    if n < 2 or len(cand) == 0:
        return None
    c1, c2 = np.cumsum(xs), np.cumsum(xs**2)
    k = cand.astype(float)
    sse_l = c2[cand - 1] - c1[cand - 1] ** 2 / k
    rs, rs2, m = c1[-1] - c1[cand - 1], c2[-1] - c2[cand - 1], n - k
    sse = sse_l + (rs2 - rs**2 / m)
    best = int(cand[np.argmin(sse)])
    sst = float(((xs - xs.mean()) ** 2).sum())
    return {
        "k": best,
        "threshold": float((xs[best - 1] + xs[best]) / 2),
        "gap": float(xs[best] - xs[best - 1]),
        "separation": float(1 - sse.min() / sst) if sst > 0 else None,
        "centroids": (float(xs[:best].mean()), float(xs[best:].mean())),
        "sse": float(sse.min()),
    }


def split_labels(x: np.ndarray, rule: str, threshold: float | None) -> tuple[np.ndarray, dict, str | None]:
    """x [L, H] normalised ranks -> (labels [L, H], split info, reason)."""
    fin = np.isfinite(x)
    labels = np.full(x.shape, "none", dtype=object)
    if rule == "threshold":
        if threshold is None or not 0 < threshold <= 1:
            raise UserError(f"the threshold rule needs --threshold, a normalised rank in (0, 1]; got {threshold}")
        info = {"threshold": float(threshold)}
    elif rule == "two_cluster":
        info = two_means(x[fin])
        if info is None:
            return labels, {}, "fewer than two distinct finite values: no split"
    else:
        raise UserError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    labels[fin] = np.where(x[fin] < info["threshold"], "low", "high")
    reason = None if fin.all() else f"{int((~fin).sum())} heads with non-finite rank are labelled 'none'"
    return labels, info, reason


def classify(stats: HeadStats, rule: str = "two_cluster", threshold: float | None = None) -> Classes:
    """Split heads into low-/high-rank classes by normalised mean rank r̄_h / d (package docstring)."""
    labels, info, reason = split_labels(stats.norm_rank, rule, threshold)
    pairs = lambda lab: [(int(stats.layers[i]), int(h)) for i, h in zip(*np.nonzero(labels == lab))]
    return Classes(rule=rule, labels=labels, layers=np.asarray(stats.layers), low=pairs("low"), high=pairs("high"),
                   threshold=info.get("threshold"), gap=info.get("gap"), separation=info.get("separation"),
                   centroids=info.get("centroids"), reason=reason)
