"""Consistency statistics of one model's heads over N contexts: bimodality, Spearman t_early/t_late,
cosines and label agreement between contexts, decay → rank (definitions: the package docstring).
Pure functions of the captured dynamics; no file I/O.

    summary, cls, stats, per_ctx = stratify_stats(dyn, names)   # every statistic of stratify.json
    d = delta(summary, summary_at_init)                         # headline differences model − init
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.stats
from scipy.optimize import isotonic_regression

from ..errors import UserError
from .heads import Classes, HeadStats, check_dyn, classify, context_arrays, head_stats, split_labels

# The paper's numbers (arXiv 2602.02195) beside which ours are reported.
PAPER = {
    "spearman_t_early_t_late": 0.90,  # per layer, rho > 0.90
    "cosine_rank": 0.97,
    "cosine_nuclear": 0.98,
    "bimodality_coefficient": 5 / 9,  # conventional bimodality reference, not a paper measurement
}


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
    check_dyn(dyn)
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
    ctx = context_arrays(dyn)
    norm = ctx["mean_rank"] / stats.bound[None, :, None]
    # each context alone, with the same rule (its own split for two_cluster)
    ctx_labels = np.stack([split_labels(norm[n], rule, threshold)[0] for n in range(len(names))])
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
