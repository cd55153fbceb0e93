"""Stratification: low-/high-rank head classes, bimodality, consistency across time and contexts,
decay → rank, each beside the same architecture at initialisation.

    stats = head_stats(dyn)                  # HeadStats: r̄_h, final rank, n̄_h, d, log decay, each [L, H]
    cls = classify(stats)                    # Classes: low / high (layer, head) lists, per-head labels
    summary = stratify_stats(dyn, names)     # every statistic of stratify.json for one model

``dyn`` is what ``analyze`` / ``capture`` produce for N contexts: ``threshold_rank`` and
``nuclear_norm`` [N, L, H, P] (NaN where a context has no token at that position), ``positions`` [P]
(1-based token counts), ``layers`` [L] (model layer indices), ``bound`` [P] or [L, P]
(min(t, K, V)) and ``log_decay`` [N, L, H] (mean log decay per token, log of the gate).

Definitions (documented in ``report.md`` as well):

* mean rank r̄_h: time average of the threshold rank, the trapezoid rule over the scheduled
  positions divided by their span, so a stride, log or mixed schedule all approximate the mean
  over every token; then the mean over contexts. final rank: at each context's last position.
* d: the rank bound at the last position, min(T, K, V), per layer; normalised rank = r̄_h / d.
* classes (``two_cluster``, default): the optimal 2-means split of normalised rank (1-D k-means is
  solved exactly: the best contiguous split of the sorted values, equal to Otsu's threshold); low iff
  below the midpoint between the two clusters. ``gap`` is the distance between the clusters' nearest
  members, ``separation`` the between-cluster share of variance (Otsu's η). ``threshold``: low iff
  normalised rank < the given threshold.
* bimodality coefficient: Sarle's, sample-size corrected,
  BC = (g² + 1) / (κ + 3(n−1)² / ((n−2)(n−3))) with g, κ the bias-corrected sample skewness and
  excess kurtosis (scipy.stats, ``bias=False``); BC > 5/9 suggests bimodality.
* Spearman: per context and layer, between the H-vectors of rank at t_early and t_late; per layer
  the mean over contexts.
* cosine: between contexts' per-head mean-rank (resp. mean-nuclear-norm) vectors over all L·H heads.
  Vectors of positive numbers have high cosines whatever their order, so the centred cosine (Pearson)
  and the initialisation baseline are reported beside it, and ``spearman_contexts``: Spearman ρ of
  the per-head mean-rank vectors between contexts (do heads keep their rank order across inputs?).
* label agreement: share of heads with the same label when each context is classified alone, and
  Cohen's κ (agreement beyond chance).
* decay: x = log(−mean log decay) (log forgetting rate per token); R² of normalised rank on x by a
  linear fit and by a monotone (isotonic) fit (in-sample), Spearman ρ, and the in-sample accuracy of
  the best single decay threshold at reproducing the classes, beside the majority-class rate.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats
from scipy.optimize import isotonic_regression

from .errors import UserError

# The paper's numbers (arXiv 2602.02195) beside which ours are reported.
PAPER = {
    "spearman_t_early_t_late": 0.90,  # per layer, rho > 0.90
    "cosine_rank": 0.97,
    "cosine_nuclear": 0.98,
    "bimodality_coefficient": 5 / 9,  # conventional bimodality reference, not a paper measurement
}
RULES = ("two_cluster", "threshold")


# ---- per-head summaries ------------------------------------------------------------------------------

def _time_mean(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """x [..., P] over positions t [P] (NaN = absent) -> [...]: trapezoid time average over the finite
    positions of each series (its value if only one)."""
    out = np.full(x.shape[:-1], np.nan)
    fin = np.isfinite(x)
    for idx in np.ndindex(x.shape[:-1]):
        m = fin[idx]
        if not m.any():
            continue
        xs, ts = x[idx][m], t[m].astype(float)
        out[idx] = xs[0] if len(xs) == 1 else np.trapezoid(xs, ts) / (ts[-1] - ts[0])
    return out


def _last(x: np.ndarray) -> np.ndarray:
    """x [..., P] -> value at the last finite position of each series [...] (NaN if none)."""
    fin = np.isfinite(x)
    idx = np.where(fin.any(-1), x.shape[-1] - 1 - np.argmax(fin[..., ::-1], axis=-1), 0)
    out = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    return np.where(fin.any(-1), out, np.nan)


def _check_dyn(dyn: dict) -> None:
    need = ("threshold_rank", "nuclear_norm", "positions", "layers", "bound", "log_decay")
    missing = [k for k in need if k not in dyn]
    if missing:
        raise UserError(f"dynamics lack {', '.join(missing)}")
    r = np.asarray(dyn["threshold_rank"])
    if r.ndim != 4 or r.shape[-1] != len(dyn["positions"]) or r.shape[1] != len(dyn["layers"]):
        raise UserError(f"threshold_rank must be [N, L, H, P] matching positions/layers, got {r.shape}")
    if r.shape[-1] == 0 or r.shape[0] == 0 or r.shape[2] == 0:
        raise UserError("dynamics are empty (no contexts, heads or positions)")


def _context_arrays(dyn: dict) -> dict[str, np.ndarray]:
    """Per-context summaries, each [N, L, H]: mean_rank, final_rank, mean_nuclear, log_decay; plus
    last_t [N] (last position with data)."""
    _check_dyn(dyn)
    t = np.asarray(dyn["positions"])
    rank = np.asarray(dyn["threshold_rank"], dtype=float)
    nuc = np.asarray(dyn["nuclear_norm"], dtype=float)
    fin = np.isfinite(rank).all(axis=(1, 2))  # [N, P]
    last_t = np.array([t[f][-1] if f.any() else 0 for f in fin])
    return {
        "mean_rank": _time_mean(rank, t),
        "final_rank": _last(rank),
        "mean_nuclear": _time_mean(nuc, t),
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
    def from_dict(cls, d: dict) -> "HeadStats":
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
    """Per-head summaries of N contexts' dynamics (see the module docstring), averaged over contexts."""
    c = _context_arrays(dyn)
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
    def from_dict(cls, d: dict) -> "Classes":
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


def _labels(x: np.ndarray, rule: str, threshold: float | None) -> tuple[np.ndarray, dict, str | None]:
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
    """Split heads into low-/high-rank classes by normalised mean rank r̄_h / d (module docstring)."""
    labels, info, reason = _labels(stats.norm_rank, rule, threshold)
    pairs = lambda lab: [(int(stats.layers[i]), int(h)) for i, h in zip(*np.nonzero(labels == lab))]
    return Classes(rule=rule, labels=labels, layers=np.asarray(stats.layers), low=pairs("low"), high=pairs("high"),
                   threshold=info.get("threshold"), gap=info.get("gap"), separation=info.get("separation"),
                   centroids=info.get("centroids"), reason=reason)


def load_stratify(run_dir) -> tuple[HeadStats, Classes]:
    """(HeadStats, Classes) of the model from a finished stratify run folder."""
    from pathlib import Path

    from .runio import read_json

    path = Path(run_dir) / "stratify.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished stratify run (no stratify.json)")
    s = read_json(path)
    return HeadStats.from_dict(s["head_stats"]), Classes.from_dict(s["classes"])


# ---- statistics --------------------------------------------------------------------------------------

def _value(v: float | None, reason: str | None = None) -> dict:
    v = None if v is None or not np.isfinite(v) else float(v)
    return {"value": v, "reason": reason if v is None else None}


def bimodality_coefficient(x: np.ndarray) -> dict:
    """Sarle's sample-size-corrected bimodality coefficient of x [n] -> {"value", "reason"}."""
    x = np.asarray(x, dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 4:
        return _value(None, f"needs at least 4 values, got {n}")
    if np.ptp(x) == 0:
        return _value(None, "all values equal: skewness and kurtosis undefined")
    g = scipy.stats.skew(x, bias=False)
    k = scipy.stats.kurtosis(x, fisher=True, bias=False)
    return _value((g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))), "skewness or kurtosis undefined")


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, str | None]:
    m = np.isfinite(a) & np.isfinite(b)
    a, b = a[m], b[m]
    if len(a) < 2:
        return np.nan, "fewer than 2 heads"
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan, "constant rank vector"
    return float(scipy.stats.spearmanr(a, b).statistic), None


def spearman_early_late(dyn: dict, names: list[str], t_early: int = 128, t_late: int = 2048) -> dict:
    """Per layer: Spearman ρ between the H-vectors of threshold rank at t_early and t_late, per context
    and averaged over contexts. A context shorter than t_late uses its last position (said in ``note``);
    a t_early that is not scheduled uses the largest scheduled position below it."""
    _check_dyn(dyn)
    t = np.asarray(dyn["positions"])
    rank = np.asarray(dyn["threshold_rank"], dtype=float)
    N, L = rank.shape[:2]
    per = np.full((N, L), np.nan)
    reasons: dict[str, str] = {}
    used_early, used_late, notes = [], [], []
    for n in range(N):
        tf = t[np.isfinite(rank[n]).all(axis=(0, 1))]  # positions this context reached
        ie = np.nonzero(t == tf[tf <= t_early].max())[0][0] if (tf <= t_early).any() else None
        il = np.nonzero(t == tf[tf <= t_late].max())[0][0] if (tf <= t_late).any() else None
        te = int(t[ie]) if ie is not None else None
        tl = int(t[il]) if il is not None else None
        used_early.append(te)
        used_late.append(tl)
        if te is None or tl is None or tl <= te:
            reasons[names[n]] = f"context has no scheduled position pair t_early < t_late (early {te}, late {tl})"
            continue
        for l in range(L):
            per[n, l], why = _spearman(rank[n, l, :, ie], rank[n, l, :, il])
            if why:
                reasons[f"{names[n]}/layer {int(dyn['layers'][l])}"] = why
    if any(x is not None and x < t_late for x in used_late):
        notes.append(f"contexts shorter than t_late={t_late}: used the longest available, per context {dict(zip(names, used_late))}")
    if any(x is not None and x != t_early for x in used_early):
        notes.append(f"t_early={t_early} not scheduled for every context: used {dict(zip(names, used_early))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer_mean = np.nanmean(per, axis=0)
    vals = layer_mean[np.isfinite(layer_mean)]
    return {
        "t_early": t_early, "t_late_requested": t_late,
        "t_early_used": dict(zip(names, used_early)), "t_late_used": dict(zip(names, used_late)),
        "layers": [int(x) for x in dyn["layers"]],
        "per_layer": layer_mean, "per_context": {names[n]: per[n] for n in range(N)},
        "mean": float(vals.mean()) if len(vals) else None,
        "min": float(vals.min()) if len(vals) else None,
        "share_layers_above_paper": float(np.mean(vals > PAPER["spearman_t_early_t_late"])) if len(vals) else None,
        "paper": PAPER["spearman_t_early_t_late"], "note": " ".join(notes) or None, "reasons": reasons or None,
    }


def cosine_matrix(vectors: np.ndarray, names: list[str], centred: bool = False) -> dict:
    """vectors [N, D] -> N×N cosine (or, centred, Pearson) matrix; pairs with a zero (or constant)
    vector are null with a reason. Summaries are over the off-diagonal pairs."""
    v = np.asarray(vectors, dtype=float).reshape(len(vectors), -1)
    if centred:
        v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1)
    finite = np.isfinite(v).all(axis=1)
    reasons = {names[i]: ("has undefined entries" if not finite[i] else "constant vector" if centred else "zero vector")
               for i in np.nonzero(~(norm > 0))[0]}
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (v @ v.T) / np.outer(norm, norm)
    m[~(np.outer(norm, norm) > 0)] = np.nan
    m = np.clip(m, -1, 1)
    off = m[~np.eye(len(m), dtype=bool)]
    off = off[np.isfinite(off)]
    return {"names": list(names), "matrix": m, "mean_offdiag": float(off.mean()) if len(off) else None,
            "min_offdiag": float(off.min()) if len(off) else None, "reasons": reasons or None}


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two label vectors (NaN when chance agreement is 1)."""
    po = float(np.mean(a == b))
    pe = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in ("low", "high"))
    return (po - pe) / (1 - pe) if pe < 1 else np.nan


def label_agreement(labels: np.ndarray, names: list[str]) -> dict:
    """labels [N, L, H] (per-context classes) -> N×N share of heads with equal labels and Cohen's κ;
    contexts without a split are null."""
    N = len(labels)
    flat = labels.reshape(N, -1)
    agree, kappa = np.full((N, N), np.nan), np.full((N, N), np.nan)
    ok = [bool(np.isin(f, ("low", "high")).all()) for f in flat]
    for i in range(N):
        for j in range(N):
            if ok[i] and ok[j]:
                agree[i, j] = np.mean(flat[i] == flat[j])
                kappa[i, j] = _kappa(flat[i], flat[j])
    off = ~np.eye(N, dtype=bool)
    f = lambda m: float(np.nanmean(m[off])) if np.isfinite(m[off]).any() else None
    return {"names": list(names), "matrix": agree, "kappa": kappa, "mean_offdiag": f(agree), "mean_kappa": f(kappa),
            "reasons": {names[i]: "no split for this context" for i in range(N) if not ok[i]} or None}


def _r2(y: np.ndarray, yhat: np.ndarray) -> float | None:
    sst = float(((y - y.mean()) ** 2).sum())
    return None if sst == 0 else float(1 - ((y - yhat) ** 2).sum() / sst)


def decay_vs_rank(log_decay: np.ndarray, norm_rank: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """How much of normalised rank [L, H] the gates alone explain: x = log(−log_decay) per head."""
    ld = np.asarray(log_decay, dtype=float).ravel()
    y = np.asarray(norm_rank, dtype=float).ravel()
    ok = np.isfinite(ld) & np.isfinite(y) & (ld < 0)
    out: dict[str, Any] = {"n_heads": int(ok.sum()), "x": "log(-mean log decay per token)",
                           "linear_r2": None, "isotonic_r2": None, "spearman": None, "slope": None,
                           "stump_accuracy": None, "majority_rate": None, "reason": None}
    if ok.sum() < 3:
        out["reason"] = f"needs >= 3 heads with finite negative log decay, got {int(ok.sum())}"
        return out
    x, y = np.log(-ld[ok]), y[ok]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "decay or rank constant over heads"
        return out
    fit = scipy.stats.linregress(x, y)
    out["linear_r2"], out["slope"] = float(fit.rvalue**2), float(fit.slope)
    rho = float(scipy.stats.spearmanr(x, y).statistic)
    out["spearman"] = rho
    order = np.argsort(x, kind="stable")
    yhat = np.empty_like(y)
    yhat[order] = isotonic_regression(y[order], increasing=rho >= 0).x
    out["isotonic_r2"] = _r2(y, yhat)
    if labels is not None:
        lab = np.asarray(labels).ravel()[ok]
        if np.isin(lab, ("low", "high")).all() and len(set(lab)) == 2:
            low = lab == "low"
            xs = np.sort(np.unique(x))
            cuts = np.concatenate([[xs[0] - 1], (xs[:-1] + xs[1:]) / 2, [xs[-1] + 1]])
            # best single cut, either direction (low = fast forgetting or low = slow forgetting)
            acc = max(max(np.mean((x > c) == low), np.mean((x <= c) == low)) for c in cuts)
            out["stump_accuracy"], out["majority_rate"] = float(acc), float(max(low.mean(), 1 - low.mean()))
    return out


def stratify_stats(dyn: dict, names: list[str], *, rule: str = "two_cluster", threshold: float | None = None,
                   t_early: int = 128, t_late: int = 2048) -> tuple[dict, Classes, HeadStats, dict]:
    """Every statistic of stratify.json for one model over N contexts.

    Returns (summary dict, pooled Classes, HeadStats, per-context arrays {name: [N, L, H]} incl. labels)."""
    if len(names) != np.asarray(dyn["threshold_rank"]).shape[0]:
        raise UserError(f"{len(names)} context names for {np.asarray(dyn['threshold_rank']).shape[0]} contexts")
    stats = head_stats(dyn)
    cls = classify(stats, rule, threshold)
    ctx = _context_arrays(dyn)
    norm = ctx["mean_rank"] / stats.bound[None, :, None]
    # each context alone, with the same rule (its own split for two_cluster)
    ctx_labels = np.stack([_labels(norm[n], rule, threshold)[0] for n in range(len(names))])
    N = len(names)
    summary = {
        "contexts": list(names),
        "layers": [int(x) for x in stats.layers],
        "bound": stats.bound,
        "spearman_t_early_t_late": spearman_early_late(dyn, names, t_early, t_late),
        "cosine_rank": {**cosine_matrix(ctx["mean_rank"].reshape(N, -1), names), "paper": PAPER["cosine_rank"]},
        "cosine_nuclear": {**cosine_matrix(ctx["mean_nuclear"].reshape(N, -1), names), "paper": PAPER["cosine_nuclear"]},
        "pearson_rank": cosine_matrix(ctx["mean_rank"].reshape(N, -1), names, centred=True),
        "pearson_nuclear": cosine_matrix(ctx["mean_nuclear"].reshape(N, -1), names, centred=True),
        # rank-order agreement of heads across contexts (Pearson of ranks = Spearman)
        "spearman_contexts": cosine_matrix(scipy.stats.rankdata(ctx["mean_rank"].reshape(N, -1), axis=1), names, centred=True),
        "label_agreement": label_agreement(ctx_labels, names),
        "bimodality_coefficient": {**bimodality_coefficient(stats.norm_rank), "paper": PAPER["bimodality_coefficient"],
                                   "of": "normalised mean rank r̄_h / d over all heads"},
        "classes": cls.to_dict(),
        "decay_rank_r2": decay_vs_rank(stats.log_decay, stats.norm_rank, cls.labels),
    }
    per_ctx = {"mean_rank": ctx["mean_rank"], "final_rank": ctx["final_rank"], "mean_nuclear": ctx["mean_nuclear"],
               "log_decay": ctx["log_decay"], "labels": ctx_labels}
    return summary, cls, stats, per_ctx


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def delta(raw: dict, init: dict) -> dict:
    """Headline differences raw − init (None where either side is undefined)."""
    def d(a, b):
        return None if _num(a) is None or _num(b) is None else float(a) - float(b)

    def dv(a, b):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return (a - b) if a.shape == b.shape else None

    out = {
        "spearman_t_early_t_late": {"per_layer": dv(raw["spearman_t_early_t_late"]["per_layer"], init["spearman_t_early_t_late"]["per_layer"]),
                                    "mean": d(raw["spearman_t_early_t_late"]["mean"], init["spearman_t_early_t_late"]["mean"])},
        "bimodality_coefficient": d(raw["bimodality_coefficient"]["value"], init["bimodality_coefficient"]["value"]),
    }
    for k in ("cosine_rank", "cosine_nuclear", "pearson_rank", "pearson_nuclear", "spearman_contexts", "label_agreement"):
        out[k] = {"mean_offdiag": d(raw[k]["mean_offdiag"], init[k]["mean_offdiag"]),
                  "matrix": dv(raw[k]["matrix"], init[k]["matrix"])}
    out["classes"] = {k: d(raw["classes"][k], init["classes"][k]) for k in ("gap", "separation", "n_low")}
    out["decay_rank_r2"] = {k: d(raw["decay_rank_r2"][k], init["decay_rank_r2"][k])
                            for k in ("linear_r2", "isotonic_r2", "spearman", "stump_accuracy")}
    return out


# ---- running models ----------------------------------------------------------------------------------

INIT_GATES = ("auto", "model", "fla")


def default_positions(max_tokens: int, stride: int = 4, t_early: int = 128, t_late: int = 2048) -> tuple[int, ...]:
    """Every ``stride``-th token up to ``max_tokens``, plus 1, t_early, t_late and max_tokens (when in range)."""
    if max_tokens < 1 or stride < 1:
        raise UserError(f"max_tokens and stride must be >= 1, got {max_tokens}, {stride}")
    pos = set(range(stride, max_tokens + 1, stride)) | {1, max_tokens}
    pos |= {t for t in (t_early, t_late) if 1 <= t <= max_tokens}
    return tuple(sorted(pos))


def init_copy(model, seed: int = 0, gates: str = "model"):
    """The same architecture at initialisation: a fresh ``type(model)(config)`` built under
    ``torch.manual_seed(seed)``, so transformers runs the model's own ``_init_weights`` (bit-identical to
    ``from_config`` with that seed), moved to the model's device and dtype, eval mode. A model spread
    over several devices (``--device auto``) gets its copy built in its dtype and spread the same way.

    gates="fla" then re-draws every Gated DeltaNet forget gate FLA/Mamba-style (A ~ U(1, 16),
    dt ~ logU(1e-3, 1e-1), dt_bias = softplus⁻¹(dt)), the initialisation the builtin model was trained
    from; transformers' own gate init makes most heads forget everything each token."""
    import torch

    if gates not in ("model", "fla"):
        raise UserError(f"unknown init gates {gates!r}; choose model or fla")
    p = next(model.parameters())
    dm = getattr(model, "hf_device_map", None)
    spread = bool(dm) and len({str(d) for d in dm.values()}) > 1
    # a spread model is too big for one device: its copy is built on CPU in the model's own dtype
    # (not fp32: half the memory), then placed module by module as the model is placed
    old = torch.get_default_dtype()
    torch.set_default_dtype(p.dtype if spread else old)
    try:
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    finally:
        torch.set_default_dtype(old)
    if gates == "fla":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in fresh.modules():
                if hasattr(mod, "A_log") and hasattr(mod, "dt_bias"):
                    mod.A_log.copy_(torch.empty(mod.A_log.shape).uniform_(1.0, 16.0, generator=g).log())
                    dt = torch.exp(torch.empty(mod.dt_bias.shape).uniform_(np.log(1e-3), np.log(1e-1), generator=g))
                    mod.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    if spread:
        from accelerate import dispatch_model

        return dispatch_model(fresh.eval().requires_grad_(False), device_map=dm)
    return fresh.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)


# ---- the stage: run folder ---------------------------------------------------------------------------

@dataclass
class StratifyConfig:
    rule: str = "two_cluster"
    threshold: float | None = None
    t_early: int = 128
    t_late: int = 2048
    max_tokens: int = 2048
    stride: int = 4
    init: bool = True  # also measure the same architecture at initialisation
    init_gates: str = "auto"  # auto = the model's own gate init unless memoryless, then fla (auto_init_gates)
    init_seed: int = 0
    eps: float = 1e-4

    def validate(self) -> None:
        if self.rule not in RULES:
            raise UserError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.rule == "threshold" and (self.threshold is None or not 0 < self.threshold <= 1):
            raise UserError("--rule threshold needs --threshold in (0, 1] (a normalised rank r̄_h / d)")
        if self.rule != "threshold" and self.threshold is not None:
            raise UserError(f"--threshold applies only with --rule threshold (the rule is {self.rule})")
        if self.max_tokens < 2:  # one token: every state has rank <= 1, nothing to stratify
            raise UserError(f"max_tokens must be >= 2, got {self.max_tokens}")
        if self.init_gates not in INIT_GATES:
            raise UserError(f"unknown --init-gates {self.init_gates!r}; choose one of {', '.join(INIT_GATES)}")
        if not 1 <= self.t_early < self.t_late:
            raise UserError(f"need 1 <= t_early < t_late, got {self.t_early}, {self.t_late}")


def jsonable(o: Any) -> Any:
    """numpy arrays/scalars -> lists/floats (NaN stays float, written as null by runio.write_json)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    return o


def _heads_csv(cls: Classes, stats: HeadStats, per_ctx: dict, init: tuple | None) -> str:
    """One row per head: class, stability (share of contexts whose own label equals the pooled one)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["layer", "head", "class", "stability", "mean_rank", "norm_rank", "final_rank", "mean_nuclear",
            "log_decay", "rank_sd_across_contexts"]
    if init:
        cols += ["init_class", "init_mean_rank", "init_norm_rank", "init_mean_nuclear", "init_log_decay"]
    w.writerow(cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(per_ctx["mean_rank"], axis=0)
    stab = (per_ctx["labels"] == cls.labels[None]).mean(axis=0)
    f = lambda x: "" if not np.isfinite(x) else f"{x:.6g}"
    for i, layer in enumerate(stats.layers):
        for h in range(stats.mean_rank.shape[1]):
            row = [int(layer), h, cls.labels[i, h], f(stab[i, h]), f(stats.mean_rank[i, h]), f(stats.norm_rank[i, h]),
                   f(stats.final_rank[i, h]), f(stats.mean_nuclear[i, h]), f(stats.log_decay[i, h]), f(sd[i, h])]
            if init:
                icls, ist = init
                row += [icls.labels[i, h], f(ist.mean_rank[i, h]), f(ist.norm_rank[i, h]), f(ist.mean_nuclear[i, h]),
                        f(ist.log_decay[i, h])]
            w.writerow(row)
    return buf.getvalue()


def merge_dynamics(runs: list[dict]) -> dict:
    """Several analyze ``Dynamics.arrays()`` dicts -> one over all their texts (union of positions,
    NaN where a text has none). Layers and bounds must agree."""
    if len(runs) == 1:
        return runs[0]
    from .spectra import STAT_NAMES

    layers = runs[0]["layers"]
    if any(not np.array_equal(r["layers"], layers) for r in runs):
        raise UserError("--from-runs folders measured different layers (different models?)")
    pos = np.unique(np.concatenate([r["positions"] for r in runs]))
    out = {}
    for name in STAT_NAMES:
        parts = []
        for r in runs:
            a = np.full(r[name].shape[:3] + (len(pos),), np.nan)
            a[..., np.searchsorted(pos, r["positions"])] = r[name]
            parts.append(a)
        out[name] = np.concatenate(parts)
    bounds = [np.broadcast_to(r["bound"], (len(layers), len(r["positions"]))) for r in runs]
    b = np.zeros((len(layers), len(pos)))
    for r, br in zip(runs, bounds):
        b[:, np.searchsorted(pos, r["positions"])] = br
    out.update(positions=pos, layers=layers, bound=b[0] if (b == b[0]).all() else b,
               log_decay=np.concatenate([r["log_decay"] for r in runs]),
               texts=np.concatenate([r["texts"] for r in runs]))
    return out


def _from_analyze(folders: list) -> dict:
    """Merged dynamics of analyze run folders, which must come from one model (same weights, or
    the same model spec and source for folders without a fingerprint) and one ε."""
    from pathlib import Path

    from .analyze import load_dynamics
    from .runio import read_json

    ids = []
    for f in folders:
        c = read_json(Path(f) / "config.json")
        m = c["config"].get("model") or {}
        ids.append((c.get("weights_fingerprint") or (m.get("spec"), m.get("source")), c["config"].get("eps")))
    if len({i[0] for i in ids}) > 1:
        raise UserError("the analyze runs come from different models (or weights); merge runs of one model only")
    if len({i[1] for i in ids}) > 1:
        raise UserError(f"the analyze runs used different eps ({sorted({str(i[1]) for i in ids})})")
    return merge_dynamics([load_dynamics(f).arrays() for f in folders])


def summarise(run, dyn: dict, dyn_init: dict | None, cfg: StratifyConfig, meta: dict) -> dict:
    """Compute and write stratify.json and heads.csv into run folder ``run`` from the dynamics of the
    model (and of its initialisation, if measured)."""
    from pathlib import Path

    from .runio import atomic_write_text, write_json

    run = Path(run)
    names = [str(x) for x in dyn["texts"]]
    kw = dict(rule=cfg.rule, threshold=cfg.threshold, t_early=cfg.t_early, t_late=cfg.t_late)
    raw, cls, stats, per_ctx = stratify_stats(dyn, names, **kw)
    result = {**meta, **raw, "paper": PAPER, "head_stats": stats.to_dict(), "init_baseline": None, "delta": None}
    init = None
    if dyn_init is not None:
        if [str(x) for x in dyn_init["texts"]] != names:
            raise UserError("the initialisation runs measured other texts than the model runs")
        iraw, icls, istats, _ = stratify_stats(dyn_init, names, **kw)
        init = (icls, istats)
        both = np.isin(cls.labels, ("low", "high")) & np.isin(icls.labels, ("low", "high"))
        result["init_baseline"] = {**iraw, "head_stats": istats.to_dict(), "gates": meta.get("init_gates"),
                                   "gates_reason": meta.get("init_gates_reason"), "seed": cfg.init_seed}
        result["delta"] = {**delta(raw, iraw),
                           "label_match_trained_vs_init": float(np.mean(cls.labels[both] == icls.labels[both])) if both.any() else None}
    else:
        result["init_baseline_reason"] = meta.get("init_reason", "not measured")
    write_json(run / "stratify.json", jsonable(result))
    atomic_write_text(run / "heads.csv", _heads_csv(cls, stats, per_ctx, init))
    return result


MEMORYLESS_DECAY = 0.5  # median per-token decay below this: the init forgets more than half each token


def own_init_decay(model, adapter, seed: int = 0, draws: int = 16) -> float:
    """Median per-token decay exp(−A·softplus(dt_bias)) (gate input 0) over heads (channels, for
    per-channel decay) of the model's OWN gate initialisation: one linear-attention layer built fresh
    on CPU, its gates initialised ``draws`` times by the model's ``_init_weights`` (a model with few
    heads gives too few samples from one draw). transformers' Qwen3-Next / Qwen3.5 init (A ~ U(0.01,
    16), dt_bias = 1) gives ~e^-10: heads forget everything each token; OLMo-hybrid's and Kimi's ~0.95."""
    import torch
    import torch.nn.functional as F

    layer = adapter.linear_layers(model)[0]
    cfg = model.config if hasattr(model.config, "hidden_size") else model.config.get_text_config()
    decays = []
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        with torch.device("cpu"):
            fresh = type(layer.module)(copy.deepcopy(cfg), layer.index)
        gates = [m for m in fresh.modules() if hasattr(m, "A_log") and hasattr(m, "dt_bias")]
        if not gates:
            raise UserError(f"{type(layer.module).__name__} has no A_log/dt_bias gate to initialise")
        for i in range(draws):
            torch.manual_seed(seed + i)
            for m in dict.fromkeys([fresh, *gates]):  # the layer's init sets its gates (Kimi's: the gate module's)
                model._init_weights(m)
            for m in gates:
                A, dt = m.A_log.detach().float().exp().flatten(), F.softplus(m.dt_bias.detach().float()).flatten()
                if dt.numel() != A.numel():  # per-channel decay: one A per head, one dt per channel
                    A = A.repeat_interleave(dt.numel() // A.numel())
                decays.append(torch.exp(-A * dt))
    return float(torch.cat(decays).median())


def auto_init_gates(loaded, seed: int = 0) -> tuple[str, str]:
    """-> (gates, why) for ``--init-gates auto``: the model's own init unless it is memoryless, then
    FLA/Mamba-style gates (what GDN models are trained from in fla, and the builtin model was). A
    memoryless baseline has no rank structure at all, so any stratification would beat it: too weak
    a control."""
    d = own_init_decay(loaded.model, loaded.adapter, seed)
    if d < MEMORYLESS_DECAY:
        return "fla", (f"the model's own gate init has median per-token decay {d:.2g} (memoryless), "
                       f"so FLA/Mamba-style gates")
    return "model", f"the model's own gate init (median per-token decay {d:.2f})"


def run_stratify(loaded, contexts: list, out, cfg: StratifyConfig | None = None, log=print, progress: bool = False):
    """Analyze ``contexts`` (list of ``contexts.Context``) on ``loaded`` (``models.Loaded``) and, unless
    ``cfg.init`` is off, on the same architecture at initialisation (``init_copy``); write the run folder
    ``out``: config.json, contexts.json, analyze/ and analyze_init/ (complete analyze run folders),
    stratify.json, heads.csv. Rerunning the same command resumes (finished texts are not redone)."""
    import time
    from pathlib import Path

    from .analyze import analyze
    from .capture import Schedule
    from .contexts import suite_hash
    from .models import Loaded
    from .runio import new_run_dir, write_json

    cfg = cfg or StratifyConfig()
    cfg.validate()
    if not contexts:
        raise UserError("no contexts to measure")
    names = [c.name for c in contexts]
    if len(set(names)) != len(names):
        raise UserError(f"context names must be unique, got {names}")
    gates, why = (cfg.init_gates, f"--init-gates {cfg.init_gates}") if cfg.init else (None, None)
    if gates == "auto":
        gates, why = auto_init_gates(loaded, cfg.init_seed)
    positions = default_positions(cfg.max_tokens, cfg.stride, cfg.t_early, cfg.t_late)
    config = {"stage": "stratify", "model": loaded.spec, "source": loaded.source, "model_config": loaded.config,
              "contexts": names, "contexts_hash": suite_hash(contexts), **asdict(cfg), "init_gates_used": gates}
    run = new_run_dir(out, config)
    write_json(run / "contexts.json", [c.to_dict() for c in contexts])
    texts = {c.name: c.text for c in contexts}
    kw = dict(max_tokens=cfg.max_tokens, schedule=Schedule(positions=positions), eps=cfg.eps, progress=progress)
    t0 = time.time()
    dyn = analyze(loaded, texts, out=run / "analyze", **kw).arrays()
    log(f"model: {len(texts)} contexts analysed in {time.time() - t0:.0f}s")
    dyn_init = None
    if cfg.init:
        t0 = time.time()
        model0 = init_copy(loaded.model, cfg.init_seed, gates)
        loaded0 = Loaded(model=model0, tokenizer=loaded.tokenizer, adapter=loaded.adapter,
                         spec=f"{loaded.spec}@init(gates={gates},seed={cfg.init_seed})", source=loaded.source,
                         config=loaded.config)
        dyn_init = analyze(loaded0, texts, out=run / "analyze_init", **kw).arrays()
        del loaded0, model0
        log(f"initialisation ({gates} gates): {len(texts)} contexts analysed in {time.time() - t0:.0f}s")
    meta = {"model": loaded.spec, "suite_hash": config["contexts_hash"], "max_tokens": cfg.max_tokens,
            "rule": cfg.rule, "init_gates": gates, "init_gates_reason": why}
    if not cfg.init:
        meta["init_reason"] = "--no-init"
    summarise(run, dyn, dyn_init, cfg, meta)
    return Path(run)


def stratify_from_runs(folders: list, out, cfg: StratifyConfig | None = None, init_folders: list | None = None):
    """stratify.json + heads.csv from existing analyze run folders (their texts are the contexts);
    ``init_folders``: analyze runs of the same texts on the model at initialisation, if any."""
    from pathlib import Path

    from .runio import new_run_dir

    cfg = cfg or StratifyConfig()
    cfg.validate()
    folders = [Path(f) for f in folders]
    for label, fs in (("--from-runs", folders), ("--init-runs", [Path(f) for f in init_folders or []])):
        if len({f.resolve() for f in fs}) != len(fs):  # a context twice would pair with itself
            raise UserError(f"{label}: a folder is given twice")
    config = {"stage": "stratify", "from_runs": [str(f.resolve()) for f in folders],
              "init_runs": [str(Path(f).resolve()) for f in init_folders or []], **asdict(cfg)}
    dyn = _from_analyze(folders)
    names = [str(x) for x in dyn["texts"]]
    if len(set(names)) != len(names):
        raise UserError(f"--from-runs: the folders hold the same text twice ({names})")
    dyn_init = _from_analyze(init_folders) if init_folders else None
    if dyn_init is not None and [str(x) for x in dyn_init["texts"]] != names:
        raise UserError("the initialisation runs measured other texts than the model runs")
    run = new_run_dir(out, config)
    meta = {"model": None, "from_runs": config["from_runs"], "rule": cfg.rule,
            "init_gates": "from --init-runs" if init_folders else None,
            "init_reason": "--from-runs without --init-runs: no initialisation baseline"}
    summarise(run, dyn, dyn_init, cfg, meta)
    return Path(run)
