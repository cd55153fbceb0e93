"""probe.json from the item log: per-condition rows with Wilson / ratio intervals and paired tests
against the base, across-seed aggregates of the random controls, paired comparisons (low vs high,
each vs its random controls), single-head costs, and the verdict numbers.

Statistics (``staterank.stats``): Wilson 95 % intervals; exact McNemar (two-sided sign test on
discordant items) against the base on the same items; across random seeds a t interval of the
seeds' accuracies. Perplexity: exp(token-mean NLL), interval from the per-window spread, Wilcoxon
signed-rank test on per-window mean NLL against the base.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sst

from ..stats import Z95, mcnemar, one_sample_t_p, paired_bootstrap_ci, ratio_mean_se, t_interval, wilcoxon_p
from ..stats import holm as _holm
from ..stats import sign_flip_p as _sign_flip_p
from ..stats import wilson_interval as wilson
from . import groups as G
from .itemlog import ItemLog
from .measure import BASE, SINGLE
from .scores import HeadScores


def _paired(task_rows: dict[str, dict], base_rows: dict[str, dict]) -> list[str]:
    return sorted(set(task_rows) & set(base_rows))


def accuracy_row(task: str, cond: str, rows: dict[str, dict], base: dict[str, dict]) -> dict:
    ids = sorted(rows)
    k = sum(bool(rows[i]["correct"]) for i in ids)
    n = len(ids)
    lo, hi = wilson(k, n)
    row = {"task": task, "condition": cond, "group": G.family(cond), "metric": "accuracy", "n": n,
           "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
           "delta_vs_base": None, "p_value": None}
    if any("truncated" in rows[i] for i in ids):  # generative tasks: share of outputs cut at the token budget
        row["truncated_share"] = sum(bool(rows[i].get("truncated")) for i in ids) / n
    pair = _paired(rows, base)
    if cond != BASE and pair:
        mc = mcnemar([base[i]["correct"] for i in pair], [rows[i]["correct"] for i in pair])
        acc_b = np.mean([bool(base[i]["correct"]) for i in pair])
        acc_c = np.mean([bool(rows[i]["correct"]) for i in pair])
        row.update(delta_vs_base=float(acc_c - acc_b), p_value=mc["p_value"], n_paired=len(pair),
                   base_only=mc["a_only"], cond_only=mc["b_only"])
    row["value"] = row["accuracy"]
    return row


def perplexity_row(task: str, cond: str, rows: dict[str, dict], base: dict[str, dict]) -> dict:
    ids = sorted(rows)
    nll = np.array([rows[i]["nll"] for i in ids])
    tok = np.array([rows[i]["tokens"] for i in ids])
    # standard error of the token-weighted mean (a ratio estimator), not of the per-window means
    mean, se = ratio_mean_se(nll, tok)
    row = {"task": task, "condition": cond, "group": G.family(cond), "metric": "perplexity", "n": len(ids),
           "accuracy": None, "value": float(math.exp(mean)), "ci_low": float(math.exp(mean - Z95 * se)),
           "ci_high": float(math.exp(mean + Z95 * se)), "delta_vs_base": None, "p_value": None}
    pair = _paired(rows, base)
    if cond != BASE and pair:
        pb = np.array([base[i]["nll"] / base[i]["tokens"] for i in pair])
        pc = np.array([rows[i]["nll"] / rows[i]["tokens"] for i in pair])
        tb = sum(base[i]["tokens"] for i in pair)
        row["delta_vs_base"] = float(math.exp(sum(rows[i]["nll"] for i in pair) / tb)
                                     - math.exp(sum(base[i]["nll"] for i in pair) / tb))
        row["p_value"] = wilcoxon_p(pc, pb)
        row["n_paired"] = len(pair)
    return row


def seed_aggregate(rows: list[dict]) -> list[dict]:
    """Across seeds of each random control family: mean, t interval of the seeds' values, mean
    delta, and a one-sample t test of the seeds' deltas (p_value; None under 2 seeds)."""
    out = []
    fams: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if "/s" in r["condition"]:
            fams.setdefault((r["task"], r["group"]), []).append(r)
    for (task, fam), rs in sorted(fams.items()):
        vals = [r["value"] for r in rs]
        m, lo, hi = t_interval(vals)
        # keep the interval inside the metric's range (accuracy in [0, 1], perplexity > 0)
        lo = max(lo, 0.0) if np.isfinite(lo) else lo
        hi = min(hi, 1.0) if np.isfinite(hi) and rs[0]["metric"] == "accuracy" else hi
        deltas = [r["delta_vs_base"] for r in rs if r["delta_vs_base"] is not None]
        p = one_sample_t_p(deltas)  # None under 2 seeds or for identical non-zero deltas (undefined)
        out.append({"task": task, "condition": fam, "group": fam, "metric": rs[0]["metric"], "seeds": len(rs),
                    "n": int(sum(r["n"] for r in rs)), "value": m,
                    "accuracy": m if rs[0]["metric"] == "accuracy" else None,
                    "ci_low": lo, "ci_high": hi, "seed_values": vals,
                    "delta_vs_base": float(np.mean(deltas)) if deltas else None, "p_value": p,
                    "test": "one-sample t test of per-seed deltas"})
    return out


def compare(log: ItemLog, task: str, a: str, b_conds: list[str], n_boot: int = 2000) -> dict | None:
    """Accuracy of condition ``a`` minus condition(s) ``b_conds`` (one condition, or the seeds of
    a random control) on the items every one of them answered.

    Items are the unit of inference: d_i = a_i − mean_s b_{s,i}. ``p_items``: paired sign-flip
    test of mean d (with one condition, the exact McNemar test; never the items counted once per
    seed). ``diff_ci_*``: percentile bootstrap over items AND seeds, so both which items were
    drawn and which random heads were drawn widen it. ``seed_diffs``: each seed's difference;
    ``p_seed_rank``: share of seeds at or below ``a``, (1+k)/(S+1)."""
    ra = log.results(task, a)
    rbs = [log.results(task, c) for c in b_conds]
    rbs = [rb for rb in rbs if rb]
    if not ra or not rbs:
        return None
    ids = sorted(set(ra).intersection(*rbs))
    if not ids:
        return None
    A = np.array([bool(ra[i]["correct"]) for i in ids], dtype=float)  # [n]
    B = np.array([[bool(rb[i]["correct"]) for i in ids] for rb in rbs], dtype=float)  # [S, n]
    S, n = B.shape
    d = A - B.mean(0)
    lo, hi = paired_bootstrap_ci(A, B, n_boot, seed=0)
    acc_a, acc_b = float(A.mean()), B.mean(1)
    out = {"task": task, "a": a, "b": G.family(b_conds[0]), "seeds": S, "n_items": n,
           "acc_a": acc_a, "acc_b": float(acc_b.mean()), "diff": float(d.mean()),
           "diff_ci_low": lo, "diff_ci_high": hi,
           "p_items": _sign_flip_p(d), "seed_diffs": [float(acc_a - x) for x in acc_b],
           "p_seed_rank": (1 + int((acc_b <= acc_a).sum())) / (S + 1) if S > 1 else None,
           "test": "paired sign-flip test over items; bootstrap over items and seeds"}
    if S == 1:
        mc = mcnemar(A.astype(bool), B[0].astype(bool))
        out.update(a_only=mc["a_only"], b_only=mc["b_only"])
    return out


def verdicts(probe_json: dict, tasks: list[str], tested: str = "low", other: str = "high",
             control: str | None = None, alpha: float = 0.05) -> dict[str, dict]:
    """Numbers for the paper's claim on each task: ablating ``tested`` (low-rank) heads hurts more
    than ``other`` (high-rank) AND more than the layer-matched random control.

    One claim tested on several tasks: each comparison's p is Holm-adjusted across the tasks.
    worse_than_other: diff < 0 and adjusted p < alpha. worse_than_control: diff < 0, adjusted p
    < alpha, and the bootstrap interval's upper end < 0. ``holds`` needs both; None when a piece
    is missing."""
    control = control or f"layer_random.{tested}"
    comps = {(c["task"], c["a"], c["b"]): c for c in probe_json.get("comparisons", [])}
    vs_o = {t: comps.get((t, tested, other)) for t in tasks}
    vs_c = {t: comps.get((t, tested, control)) for t in tasks}
    adj_o = _holm({t: c and c["p_items"] for t, c in vs_o.items()})
    adj_c = _holm({t: c and c["p_items"] for t, c in vs_c.items()})
    out = {}
    for t in tasks:
        o, c = vs_o[t], vs_c[t]
        v: dict[str, Any] = {"task": t, "tested": tested, "other": other, "control": control, "alpha": alpha,
                             "vs_other": o, "vs_control": c, "p_other_holm": adj_o[t], "p_control_holm": adj_c[t],
                             "holm_family": len(tasks)}
        v["worse_than_other"] = None if o is None else bool(o["diff"] < 0 and adj_o[t] < alpha)
        v["worse_than_control"] = None if c is None else bool(
            c["diff"] < 0 and adj_c[t] < alpha and c["diff_ci_high"] is not None and c["diff_ci_high"] < 0)
        parts = (v["worse_than_other"], v["worse_than_control"])
        v["holds"] = None if None in parts else all(parts)
        out[t] = v
    return out


def summarize(log: ItemLog, task_objects, conds: dict, hs: HeadScores | None,
              space: G.HeadSpace, n: int) -> tuple[dict, list[dict]]:
    """probe.json from the item log (only finished items count), and the single_head.csv rows
    (per-head costs beside mean rank and mean nuclear norm; empty without single heads)."""
    rows: list[dict] = []
    comparisons: list[dict] = []
    single: dict[str, Any] = {}
    csv_rows: list[dict] = []
    for task in task_objects:
        base = log.results(task.name, BASE)
        mk = accuracy_row if task.metric == "accuracy" else perplexity_row
        task_rows = {}
        for cond in conds:
            r = log.results(task.name, cond)
            if r and not cond.startswith(SINGLE):
                task_rows[cond] = mk(task.name, cond, r, base)
        rows += task_rows.values()
        if task.metric == "accuracy":
            names = set(task_rows)
            pairs = [("low", ["high"])]
            for t in ("low", "high"):
                for fam in ("random", f"layer_random.{t}", f"byte_random.{t}"):
                    pairs.append((t, sorted(c for c in names if G.family(c) == fam)))
            for a, bs in pairs:
                if a in names and bs and all(b in names for b in bs):
                    c = compare(log, task.name, a, bs)
                    if c:
                        comparisons.append(c)
        if hs is not None:
            heads = [c for c in conds if c.startswith(SINGLE) and log.results(task.name, c)]
            if heads and base:
                single[task.name] = _single_head(task, log, heads, conds, base, hs, space, csv_rows)
    rows_agg = seed_aggregate(rows)
    summary = {"rows": rows, "aggregates": rows_agg, "comparisons": comparisons, "single_head": single,
               "group_size": n,
               "total_heads": space.total, "tasks": [t.name for t in task_objects],
               "metrics": {t.name: t.metric for t in task_objects}}
    summary["verdicts"] = verdicts(summary, [t.name for t in task_objects if t.metric == "accuracy"])
    return summary, csv_rows


def _single_head(task, log, heads, conds, base, hs: HeadScores, space, csv_rows) -> dict:
    """Cost of each head alone (accuracy: base − ablated on the same items; perplexity: ablated −
    base log-perplexity) and its Spearman ρ with mean rank and mean nuclear norm."""
    li_pos = {li: i for i, li in enumerate(space.layers)}
    costs, ranks, nucs = [], [], []
    for c in heads:
        (li, hl), = conds[c].items()
        h = hl[0]
        r = log.results(task.name, c)
        ids = sorted(set(r) & set(base))
        if task.metric == "accuracy":
            cost = float(np.mean([bool(base[i]["correct"]) for i in ids]) - np.mean([bool(r[i]["correct"]) for i in ids]))
            value = float(np.mean([bool(r[i]["correct"]) for i in ids]))
        else:
            tb = sum(base[i]["tokens"] for i in ids)
            cost = (sum(r[i]["nll"] for i in ids) - sum(base[i]["nll"] for i in ids)) / tb
            value = math.exp(sum(r[i]["nll"] for i in ids) / tb)
        mr, nn_ = float(hs.mean_rank[li_pos[li], h]), float(hs.mean_nuclear[li_pos[li], h])
        costs.append(cost)
        ranks.append(mr)
        nucs.append(nn_)
        csv_rows.append({"task": task.name, "layer": li, "head": h, "n": len(ids), "value": value, "cost": cost,
                         "mean_rank": mr, "norm_rank": float(hs.norm_rank[li_pos[li], h]), "mean_nuclear": nn_})

    def rho(x, y):
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return {"rho": None, "p_value": None}
        res = sst.spearmanr(x, y)
        return {"rho": float(res.statistic), "p_value": float(res.pvalue)}

    return {"n_heads": len(costs), "cost": "base - ablated accuracy" if task.metric == "accuracy"
            else "ablated - base mean NLL per token", "mean_cost": float(np.mean(costs)),
            "max_cost": float(np.max(costs)), "spearman_rank": rho(costs, ranks), "spearman_nuclear": rho(costs, nucs)}
