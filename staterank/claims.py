"""The paper's claims, each with the paper's number, ours, the controls and a verdict.

Reads only the stage files of a run folder (``stratify/stratify.json``, ``probe/probe.json``,
``prune/prune.json``) and writes ``claims.json``. Verdicts:

* ``holds``   — ours passes the paper's criterion with its 95 % CI on the right side, AND the same
  statistic of the same architecture at initialisation does not pass (or, for ablations, the effect
  beats the layer-matched random control);
* ``artefact`` — ours passes, but so does the untrained model: the gates alone produce it;
* ``fails``   — the CI lies on the wrong side of the criterion (or the effect has the wrong sign);
* ``inconclusive`` — the CI straddles the criterion, a needed number is missing, or the unmodified
  model's accuracy CI does not clear chance, so there is no skill to lose (the reason says which);
* ``informational`` — not a claim of the paper: measured beside the claims, with no criterion.

CIs: bimodality by a bootstrap over heads; Spearman, cosines by a t interval over the per-layer
(resp. per-context-pair) values — pairs share contexts, so that interval is optimistic, said in
the row; accuracies by Wilson intervals; ablation effects by exact McNemar tests on paired items;
random controls by a t interval over their seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from . import runio
from .errors import UserError
from .stratify import HeadStats, bimodality_coefficient

VERDICTS = ("holds", "artefact", "fails", "inconclusive", "informational")
BC_REF = 5 / 9


def _chance(task: str) -> float:
    """Chance accuracy of a builtin task (0 for open-ended ones such as GSM8K)."""
    from .tasks import TASKS

    return float(TASKS[task].chance) if task in TASKS else 0.0


def _no_skill(task: str, acc: float | None, ci_low: float | None) -> str | None:
    """An ablation or pruning effect needs accuracy to lose: when the unmodified model's Wilson CI
    does not clear chance, the verdict is "inconclusive" whatever the differences."""
    ch = _chance(task)
    if acc is None or ci_low is None or ci_low <= ch:
        return f"the unmodified model scores {_f(acc)} (CI low {_f(ci_low)} <= chance {ch:.3g}): no skill to lose"
    return None


def _t_ci(x, bounds: tuple[float, float] = (-1.0, 1.0)) -> tuple[float | None, float | None, float | None]:
    """Mean and t interval, clipped to ``bounds`` (correlations and cosines live in [-1, 1])."""
    x = np.asarray([v for v in np.ravel(np.asarray(x, dtype=float)) if np.isfinite(v)])
    if len(x) == 0:
        return None, None, None
    m = float(x.mean())
    if len(x) < 2 or x.std(ddof=1) == 0:
        return m, m, m
    h = float(scipy.stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, max(m - h, bounds[0]), min(m + h, bounds[1])


def _bc(x: np.ndarray) -> float:
    v = bimodality_coefficient(x)["value"]  # the statistic stratify.json reports
    return np.nan if v is None else v


def _bc_ci(norm_rank, seed: int = 0, n_boot: int = 2000) -> tuple[float | None, float | None, float | None]:
    x = np.asarray(norm_rank, dtype=float).ravel()
    x = x[np.isfinite(x)]
    v = _bc(x)
    if not np.isfinite(v):
        return None, None, None
    rng = np.random.default_rng(seed)
    boots = np.array([_bc(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        return v, None, None
    return v, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def _threshold_verdict(val, lo, hi, ref, init_val, init_lo=None) -> tuple[str, str]:
    """Verdict for 'statistic > ref', against the initialisation baseline."""
    if val is None:
        return "inconclusive", "not measured"
    if hi is not None and hi <= ref:
        return "fails", f"upper CI end {hi:.3f} <= {ref:.3f}"
    if lo is None or lo <= ref:
        return "inconclusive", f"CI [{_f(lo)}, {_f(hi)}] straddles {ref:.3f}"
    if init_val is None:
        return "inconclusive", f"passes ({lo:.3f} > {ref:.3f}) but no initialisation baseline was measured"
    if init_val > ref:
        return "artefact", f"passes, but the model at initialisation does too ({init_val:.3f} > {ref:.3f})"
    return "holds", f"CI low {lo:.3f} > {ref:.3f}; at initialisation {init_val:.3f}"


def _f(x, nd=3) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def _row(claim: str, paper: str, ours: dict, verdict: str, why: str, source: str, **extra) -> dict:
    assert verdict in VERDICTS
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": why, "source": source, **extra}


# ---- stratification claims -----------------------------------------------------------------------

def stratify_claims(s: dict) -> list[dict]:
    init = s.get("init_baseline")
    rows = []
    src = "stratify/stratify.json"

    v, lo, hi = _bc_ci(HeadStats.from_dict(s["head_stats"]).norm_rank)
    iv = init["bimodality_coefficient"]["value"] if init else None
    verdict, why = _threshold_verdict(v, lo, hi, BC_REF, iv)
    rows.append(_row("State rank stratification (bimodal split of r̄_h/d)",
                     "heads split into rank ≈ 0 and rank → bound (Fig. 1); BC reference 5/9",
                     {"value": v, "ci": [lo, hi], "init": iv, "criterion": f"> {BC_REF:.3f}",
                      "n_low": s["classes"].get("n_low"), "n_high": s["classes"].get("n_high"),
                      "gap": s["classes"].get("gap")},
                     verdict, why, src + " (head_stats, bootstrap over heads)"))

    sp = s["spearman_t_early_t_late"]
    per_layer = sp.get("per_layer") or []
    m, lo, hi = _t_ci(per_layer)
    isp = (init or {}).get("spearman_t_early_t_late", {}).get("mean") if init else None
    verdict, why = _threshold_verdict(m, lo, hi, 0.90, isp)
    t_used = sorted({x for x in (sp.get("t_late_used") or {}).values() if x is not None})
    t_late = (t_used[0] if len(t_used) == 1 else f"{t_used[0]}–{t_used[-1]}") if t_used else sp.get("t_late_requested")
    rows.append(_row(f"Rank order stable over time: Spearman ρ(t={sp.get('t_early')}, t={t_late})",
                     "ρ > 0.90 per layer (t=128 vs t=2048)",
                     {"value": m, "ci": [lo, hi], "init": isp, "min_layer": sp.get("min"), "criterion": "> 0.90",
                      "per_layer": per_layer, "note": sp.get("note")},
                     verdict, why, src + " spearman_t_early_t_late (t interval over layers)"))

    for key, ref, label in (("cosine_rank", 0.97, "rank vectors"), ("cosine_nuclear", 0.98, "nuclear-norm vectors")):
        mat = np.asarray(s[key]["matrix"], dtype=float)
        vals = mat[np.triu_indices(len(mat), 1)] if mat.ndim == 2 else np.array([])
        m, lo, hi = _t_ci(vals)
        im = (init or {}).get(key, {}).get("mean_offdiag") if init else None
        verdict, why = _threshold_verdict(m, lo, hi, ref, im)
        pear = s.get(key.replace("cosine", "pearson"), {}).get("mean_offdiag")
        rows.append(_row(f"Consistent across contexts: cosine of {label}", f"cosine > {ref}",
                         {"value": m, "ci": [lo, hi], "init": im, "criterion": f"> {ref}", "pairs": int(len(vals)),
                          "centred_pearson": pear, "contexts": s.get("contexts")},
                         verdict, why + " (pairs share contexts: CI optimistic)", src + f" {key}"))

    d = s.get("decay_rank_r2") or {}
    rows.append(_row("Gates alone predict rank (reproduction: R² ≈ 0.90)", "not claimed by the paper",
                     {"isotonic_r2": d.get("isotonic_r2"), "linear_r2": d.get("linear_r2"),
                      "spearman": d.get("spearman")},
                     "informational",
                     "how much of r̄_h/d the per-head decay alone explains (monotone fit over heads)",
                     src + " decay_rank_r2", informational=True))
    return rows


# ---- ablation claims -------------------------------------------------------------------------------

def probe_claims(p: dict) -> list[dict]:
    rows = []
    acc = {(r["task"], r["condition"]): r for r in p.get("rows", [])}
    for task, v in (p.get("verdicts") or {}).items():
        base = acc.get((task, "base"), {})
        low = acc.get((task, "low"), {})
        high = acc.get((task, "high"), {})
        ours = {"base": base.get("accuracy"), "low": low.get("accuracy"), "high": high.get("accuracy"),
                "low_ci": [low.get("ci_low"), low.get("ci_high")], "high_ci": [high.get("ci_low"), high.get("ci_high")],
                "n": base.get("n"),
                "vs_high": _cmp(v.get("vs_other")), "vs_layer_random": _cmp(v.get("vs_control"))}
        wo, wc = v.get("worse_than_other"), v.get("worse_than_control")
        vo, vc = v.get("vs_other"), v.get("vs_control")
        if _no_skill(task, base.get("accuracy"), base.get("ci_low")):
            verdict, why = "inconclusive", _no_skill(task, base.get("accuracy"), base.get("ci_low"))
        elif wo is None or wc is None:
            verdict, why = "inconclusive", "a comparison is missing (see probe.json comparisons)"
        elif wo and wc:
            verdict, why = "holds", "low-rank removal is significantly worse than high-rank AND than layer-matched random removal"
        elif vo["diff"] > 0 and vo["p_items"] < 0.05:
            verdict, why = "fails", "removing low-rank heads hurts significantly LESS than removing high-rank heads"
        elif vo["diff"] >= 0 and vc["diff"] >= 0:
            verdict, why = "fails", "removing low-rank heads hurts no more than removing high-rank or layer-matched random heads"
        else:
            verdict, why = "inconclusive", (f"vs high-rank: {'worse' if wo else 'not significantly worse'}; "
                                            f"vs layer-matched random: {'worse' if wc else 'not significantly worse'}")
        rows.append(_row(f"Low-rank heads are indispensable ({task})",
                         "NIAH 93.8 → 46.9 without low-rank heads, → 90.6 without high-rank (Table 1)",
                         ours, verdict, why, "probe/probe.json verdicts"))
    for task, sh in (p.get("single_head") or {}).items():
        rows.append(_row(f"Single-head ablation cost vs rank ({task})", "not measured by the paper",
                         {"rho_cost_rank": (sh.get("spearman_rank") or {}).get("rho"),
                          "p_rank": (sh.get("spearman_rank") or {}).get("p_value"),
                          "rho_cost_nuclear": (sh.get("spearman_nuclear") or {}).get("rho"),
                          "p_nuclear": (sh.get("spearman_nuclear") or {}).get("p_value"),
                          "heads": sh.get("n_heads"), "mean_cost": sh.get("mean_cost"), "max_cost": sh.get("max_cost")},
                         "informational", "does a head's rank (or nuclear norm) predict what removing it alone costs? Spearman over heads",
                         "probe/probe.json single_head", informational=True))
    return rows


def _cmp(c: dict | None) -> dict | None:
    if not c:
        return None
    return {k: c.get(k) for k in ("diff", "diff_ci_low", "diff_ci_high", "p_items", "seeds")}


# ---- pruning claims ----------------------------------------------------------------------------------

def _seed_interval(summary: dict | None, level: float = 0.95) -> tuple[float, float] | None:
    """t interval of a control's mean accuracy over its random seeds; None with fewer than 2."""
    if not summary or (summary.get("n_seeds") or 0) < 2:
        return None
    n, m, sd = summary["n_seeds"], summary["mean"], summary["std"]
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return max(0.0, m - half), min(1.0, m + half)  # accuracies


def prune_claims(q: dict) -> list[dict]:
    rows = []
    saved = (q.get("fraction_saved") or {}).get("linear_state")
    acc = q.get("accuracy") or {}
    before, after = acc.get("before") or {}, acc.get("after") or {}
    ctrl = (acc.get("controls") or {})
    for task in before:
        b, a = before[task], after.get(task, {})
        cs = {k: (v.get("summary") or {}).get(task) for k, v in ctrl.items()}
        lm = cs.get("layer_matched") or cs.get("count_matched")
        iv = _seed_interval(lm)
        ours = {"state_saved": saved, "heads_removed": q.get("head_fraction_removed"), "before": b.get("acc"),
                "after": a.get("acc"), "after_ci": [a.get("lo"), a.get("hi")], "n": a.get("n"),
                "random_controls": {k: (v or {}).get("mean") for k, v in cs.items()},
                "layer_matched_seed_ci": list(iv) if iv else None}
        # The control is a mean over random plans whose accuracies spread widely (one plan may keep
        # everything, the next nothing): its t interval over seeds, not its mean, must clear JRNP's CI.
        if _no_skill(task, b.get("acc"), b.get("lo")):
            verdict, why = "inconclusive", _no_skill(task, b.get("acc"), b.get("lo"))
        elif a.get("acc") is None or lm is None:
            verdict, why = "inconclusive", "accuracy after pruning or the random control is missing"
        elif iv is None:
            verdict, why = "inconclusive", "one random seed: the control's spread is unknown (use more random seeds)"
        elif iv[1] < a["lo"]:
            verdict, why = "holds", (f"JRNP keeps more accuracy than matched random removal ({a['acc']:.3f} vs "
                                     f"{lm['mean']:.3f}; the seeds' interval [{iv[0]:.3f}, {iv[1]:.3f}] lies below JRNP's CI)")
        elif iv[0] > a["hi"]:
            verdict, why = "fails", (f"matched random removal keeps MORE accuracy ({lm['mean']:.3f} vs {a['acc']:.3f}; "
                                     f"the seeds' interval [{iv[0]:.3f}, {iv[1]:.3f}] lies above JRNP's CI)")
        else:
            verdict, why = "inconclusive", (f"JRNP {a['acc']:.3f} [{_f(a.get('lo'))}, {_f(a.get('hi'))}] vs matched "
                                            f"random {lm['mean']:.3f}, seeds' interval [{iv[0]:.3f}, {iv[1]:.3f}]")
        rows.append(_row(f"Joint Rank-Norm Pruning at {q.get('head_fraction_removed', 0):.1%} of heads ({task})",
                         "38.9 % less recurrent state, accuracy largely kept",
                         ours, verdict, why, "prune/prune.json"))
    return rows


def claims(folder: str | Path) -> dict:
    """All claim rows of a run folder (stages that did not run are listed as missing)."""
    folder = Path(folder)
    rows: list[dict] = []
    missing = []
    for stage, fn in (("stratify", stratify_claims), ("probe", probe_claims), ("prune", prune_claims)):
        path = folder / stage / f"{stage}.json"
        if path.is_file():
            rows += fn(runio.read_json(path))
        else:
            missing.append(stage)
    if not rows and missing:
        raise UserError(f"{folder} holds no finished stage (no stratify/, probe/ or prune/ results)")
    return {"rows": rows, "missing_stages": missing, "verdict_rules": __doc__.split("Verdicts:")[1].split("CIs:")[0].strip()}


def write_claims(folder: str | Path) -> dict:
    c = claims(folder)
    runio.write_json(Path(folder) / "claims.json", c)
    return c
