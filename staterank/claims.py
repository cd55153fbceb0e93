"""The paper's claims, each with the paper's number, ours, the controls and a verdict.

Reads only the stage files of a run folder (``stratify/stratify.json``, ``probe/probe.json``,
``prune/prune.json``) and writes ``claims.json``. Verdicts:

* ``holds``   — ours passes the paper's criterion with its 95 % CI on the right side, AND the same
  statistic of the same architecture at initialisation (its point estimate) does not pass; for
  ablations: removing low-rank heads is significantly worse than removing high-rank heads AND than
  layer-matched random heads (for the random control, both the sign-flip p over items and the
  bootstrap interval over items and seeds must agree); for pruning: the accuracy CI after pruning at or
  above 0.9 × before AND the layer-matched random control's seed interval below it;
* ``artefact`` — ours passes, but so does the untrained model: the gates alone produce it;
* ``fails``   — the CI lies on the wrong side of the criterion (for ablations: low-rank removal
  significantly less harmful than high-rank removal, or an interval vs layer-matched random removal
  that excludes any extra harm; for pruning: the accuracy CI ends below 0.9 × before, or every random
  plan keeps more);
* ``inconclusive`` — the CI straddles the criterion, a needed number is missing, one value (or only
  equal ones) gives no interval, a layer's Spearman ρ is undefined in some context, the unmodified model's accuracy CI does not clear chance (the best guess without
  the skill), so there is no skill to lose, or more than 10 % of the unmodified model's outputs
  on a generative task hit the token budget (the reason says which);
* ``informational`` — not a claim of the paper: measured beside the claims, with no criterion.

CIs: bimodality by a bootstrap over heads; Spearman per layer by a t interval over contexts,
Bonferroni-corrected over layers (the paper's criterion holds per layer, so the weakest layer
decides); cosines by a jackknife over contexts (pairs share contexts, so pairs are not the
sample); an interval needs at least two different values, else the verdict is inconclusive;
accuracies by Wilson intervals; ablation effects by paired tests over items (exact McNemar, or a
sign-flip test against a random control's seed mean), Holm-adjusted across the tasks of one
claim, with a bootstrap over items and seeds; pruning's random controls by a t interval over
their seeds.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from . import runio
from .errors import UserError
from .stats import bootstrap_ci, fmt_num, t_halfwidth
from .stats import jackknife_pairs_ci as _jackknife_pairs
from .stats import t_ci as _t_ci
from .stratify import HeadStats, bimodality_coefficient

VERDICTS = ("holds", "artefact", "fails", "inconclusive", "informational")
BC_REF = 5 / 9
TRUNCATED_MAX = 0.1  # share of the unmodified model's outputs cut at the generation budget above which no verdict


_PAPER_ABLATION = "NIAH 93.8 → 46.9 without low-rank heads, → 90.6 without high-rank (Table 1)"

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


def _t_used(sp: dict, which: str) -> str:
    """The positions a Spearman actually compared (a context shorter than asked uses its last)."""
    used = sorted({x for x in (sp.get(f"t_{which}_used") or {}).values() if x is not None})
    if not used:
        return str(sp.get("t_early" if which == "early" else "t_late_requested"))
    return str(used[0]) if len(used) == 1 else f"{used[0]}–{used[-1]}"


def _rho_matrix(sp: dict) -> np.ndarray:
    """[contexts, layers] Spearman ρ of a spearman_t_early_t_late block, NaN where undefined."""
    return np.array([[np.nan if v is None else v for v in row] for row in (sp.get("per_context") or {}).values()],
                    dtype=float)


def _weakest_layer(sp: dict) -> tuple[float | None, float | None, float | None, list]:
    """The paper's criterion is per layer: each layer's Spearman values over contexts get a t
    interval, Bonferroni-corrected over layers; the claim stands or falls with the weakest layer.
    Returns (lowest layer mean, lowest CI low — None if a layer has no interval, e.g. one value,
    equal values, or ρ undefined in any context (its order lost, e.g. every head at the bound) —, lowest CI high, per-layer [mean, lo, hi]
    in the order of ``sp["layers"]``, None where undefined)."""
    P = _rho_matrix(sp)
    if P.ndim != 2 or P.size == 0:
        return None, None, None, []
    layers = [list(_t_ci(x, level=1 - 0.05 / P.shape[1])) for x in P.T]
    for row, x in zip(layers, P.T):
        if np.isnan(x).any():  # a context whose head order was lost cannot count for the layer, only against it
            row[1] = None
    means = [m for m, _, _ in layers if m is not None]
    if not means:
        return None, None, None, layers
    his = [h for _, _, h in layers if h is not None]
    lo = None if any(lo is None for _, lo, _ in layers) else min(lo for _, lo, _ in layers)
    return min(means), lo, (min(his) if his else None), layers


def _bc(x: np.ndarray) -> float:
    v = bimodality_coefficient(x)["value"]  # the statistic stratify.json reports
    return np.nan if v is None else v


def _bc_ci(norm_rank, seed: int = 0, n_boot: int = 2000) -> tuple[float | None, float | None, float | None]:
    """Bimodality coefficient of the finite normalised ranks and its bootstrap interval over heads."""
    x = np.asarray(norm_rank, dtype=float).ravel()
    return bootstrap_ci(x[np.isfinite(x)], _bc, seed=seed, n_boot=n_boot)


def _threshold_verdict(val, lo, hi, ref, init_val, init_measured: bool | None = None) -> tuple[str, str]:
    """Verdict for 'statistic > ref', against the initialisation baseline. ``init_measured``: the
    baseline ran, though its statistic may be undefined (e.g. constant rank vectors at init)."""
    if val is None:
        return "inconclusive", "not measured"
    if hi is not None and hi <= ref:
        return "fails", f"upper CI end {hi:.3f} <= {ref:.3f}"
    if lo is None:
        return "inconclusive", f"{val:.3f}, but one value gives no interval"
    if lo <= ref:
        return "inconclusive", f"CI [{_f(lo)}, {_f(hi)}] straddles {ref:.3f}"
    if init_val is None and init_measured:
        return "holds", f"CI low {lo:.3f} > {ref:.3f}; at initialisation the statistic is undefined (constant vectors)"
    if init_val is None:
        return "inconclusive", f"passes ({lo:.3f} > {ref:.3f}) but no initialisation baseline was measured"
    if init_val > ref:
        return "artefact", f"passes, but the model at initialisation does too ({init_val:.3f} > {ref:.3f})"
    return "holds", f"CI low {lo:.3f} > {ref:.3f}; at initialisation {init_val:.3f}"


_f = partial(fmt_num, dash_nonfinite=True)  # NaN prints "—" in verdict reasons


def _row(claim: str, paper: str, ours: dict, verdict: str, why: str, source: str, **extra) -> dict:
    assert verdict in VERDICTS
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": why, "source": source, **extra}


# ---- stratification claims -----------------------------------------------------------------------

def stratify_claims(s: dict) -> list[dict]:
    init = s.get("init_baseline")
    gates = (init or {}).get("gates")  # which initialisation the "at init" numbers come from
    rows = []
    src = "stratify/stratify.json"

    v, lo, hi = _bc_ci(HeadStats.from_dict(s["head_stats"]).norm_rank)
    iv = init["bimodality_coefficient"]["value"] if init else None
    verdict, why = _threshold_verdict(v, lo, hi, BC_REF, iv, init_measured=bool(init))
    rows.append(_row("State rank stratification (bimodal split of r̄_h/d)",
                     "heads split into rank ≈ 0 and rank → bound (Fig. 1); BC reference 5/9",
                     {"value": v, "ci": [lo, hi], "init": iv, "init_gates": gates, "criterion": f"> {BC_REF:.3f}",
                      "n_low": s["classes"].get("n_low"), "n_high": s["classes"].get("n_high"),
                      "gap": s["classes"].get("gap")},
                     verdict, why, src + " (head_stats, bootstrap over heads)"))

    sp = s["spearman_t_early_t_late"]
    m, lo, hi, layers = _weakest_layer(sp)
    isp = _weakest_layer(init["spearman_t_early_t_late"])[0] if init else None
    verdict, why = _threshold_verdict(m, lo, hi, 0.90, isp, init_measured=bool(init))
    # the decision takes every layer (lowest CI low, lowest CI high); the row shows the weakest
    # layer with its own interval, and the reason names the layers that decide
    names = [int(x) for x in sp.get("layers") or range(len(layers))]
    defined = [i for i, l in enumerate(layers) if l[0] is not None]
    weak = min(defined, key=lambda i: layers[i][0]) if defined else None
    shown = layers[weak][1:] if weak is not None else [None, None]
    failing = [f"layer {names[i]} [{_f(l[1])}, {_f(l[2])}]" for i, l in enumerate(layers) if l[2] is not None and l[2] <= 0.90]
    # contexts whose ρ is undefined per layer (the head order lost at a position): named, never silently dropped
    P = _rho_matrix(sp) if layers else np.zeros((0, 0))
    lost = [int(np.isnan(P[:, i]).sum()) for i in range(len(layers))]

    def _open(i, l):
        if l[0] is None:
            return f"layer {names[i]} (ρ undefined)"
        undefined = f"; ρ undefined in {lost[i]} of {len(P)} contexts" if lost[i] else ""
        return f"layer {names[i]} [{_f(l[1])}, {_f(l[2])}]{undefined}"
    open_ = [_open(i, l) for i, l in enumerate(layers)
             if l[1] is None or l[1] <= 0.90 < (l[2] if l[2] is not None else 1.0)]
    if verdict == "fails":
        why = "upper CI end <= 0.900 in " + ", ".join(failing)
    elif verdict == "inconclusive" and open_ and m is not None:
        why = "CI straddles 0.900 (or no interval) in " + ", ".join(open_)
    rows.append(_row(f"Rank order stable over time in every layer: Spearman ρ(t={_t_used(sp, 'early')}, "
                     f"t={_t_used(sp, 'late')}), weakest layer",
                     "ρ > 0.90 per layer (t=128 vs t=2048)",
                     {"value": m, "ci": shown, "init": isp, "init_gates": gates, "mean_over_layers": sp.get("mean"),
                      "criterion": "> 0.90 in every layer", "per_layer": layers,
                      "contexts_rho_undefined": lost, "note": sp.get("note")},
                     verdict, why, src + " spearman_t_early_t_late (per layer: t interval over contexts, "
                     "Bonferroni over layers)"))

    for key, ref, label in (("cosine_rank", 0.97, "rank vectors"), ("cosine_nuclear", 0.98, "nuclear-norm vectors")):
        mat = np.asarray(s[key]["matrix"], dtype=float)
        m, lo, hi = _jackknife_pairs(mat)
        im = (init or {}).get(key, {}).get("mean_offdiag") if init else None
        verdict, why = _threshold_verdict(m, lo, hi, ref, im, init_measured=bool(init))
        pear = s.get(key.replace("cosine", "pearson"), {}).get("mean_offdiag")
        rows.append(_row(f"Consistent across contexts: cosine of {label}", f"cosine > {ref}",
                         {"value": m, "ci": [lo, hi], "init": im, "init_gates": gates, "criterion": f"> {ref}",
                          "contexts_n": len(mat) if mat.ndim == 2 else 0,
                          "centred_pearson": pear, "contexts": s.get("contexts")},
                         verdict, why, src + f" {key} (mean over context pairs; jackknife over contexts)"))

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
                "vs_high": _cmp(v.get("vs_other"), v.get("p_other_holm")),
                "vs_layer_random": _cmp(v.get("vs_control"), v.get("p_control_holm"))}
        wo, wc = v.get("worse_than_other"), v.get("worse_than_control")
        vo, vc = v.get("vs_other"), v.get("vs_control")
        # the budget is adequate when the UNMODIFIED model ends its outputs; an ablated model that runs
        # on to the budget (looping) is an effect of the ablation, not of the budget
        cut = base.get("truncated_share") or 0.0
        if cut > TRUNCATED_MAX:
            verdict, why = "inconclusive", (f"{cut:.0%} of the unmodified model's outputs hit the token budget "
                                            "(--max-new-tokens) before ending: its accuracy measures the budget "
                                            "as much as the skill")
        elif _no_skill(task, base.get("accuracy"), base.get("ci_low")):
            verdict, why = "inconclusive", _no_skill(task, base.get("accuracy"), base.get("ci_low"))
        elif wo is None or wc is None:
            verdict, why = "inconclusive", "a comparison is missing (see probe.json comparisons)"
        elif wo and wc:
            verdict, why = "holds", "low-rank removal is significantly worse than high-rank AND than layer-matched random removal"
        elif vo["diff"] > 0 and v.get("p_other_holm", vo["p_items"]) < v.get("alpha", 0.05):
            verdict, why = "fails", "removing low-rank heads hurts significantly LESS than removing high-rank heads"
        elif vc.get("diff_ci_low") is not None and vc["diff_ci_low"] >= 0:
            # the interval over items and seeds rules out any extra harm: a point estimate alone never fails a claim
            verdict, why = "fails", (f"removing low-rank heads hurts no more than removing layer-matched random heads: "
                                     f"difference {vc['diff']:+.3f}, interval [{vc['diff_ci_low']:+.3f}, "
                                     f"{_f(vc.get('diff_ci_high'))}] excludes any extra harm")
        else:
            verdict, why = "inconclusive", (f"vs high-rank: {'worse' if wo else 'not significantly worse'}; "
                                            f"vs layer-matched random: {'worse' if wc else 'not significantly worse'}")
        rows.append(_row(f"Low-rank heads are indispensable ({task})", _PAPER_ABLATION if task == "niah" else
                         f"not measured for {task} (the paper's retrieval number is NIAH's: {_PAPER_ABLATION})",
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


def _cmp(c: dict | None, p_holm: float | None = None) -> dict | None:
    if not c:
        return None
    return {**{k: c.get(k) for k in ("diff", "diff_ci_low", "diff_ci_high", "p_items", "seeds", "n_items")},
            "p_holm": p_holm if p_holm is not None else c.get("p_items")}


# ---- pruning claims ----------------------------------------------------------------------------------

def _seed_interval(summary: dict | None, level: float = 0.95) -> tuple[float, float] | None:
    """t interval of a control's mean accuracy over its random seeds; None with fewer than 2 or
    only equal ones."""
    if not summary or (summary.get("n_seeds") or 0) < 2:
        return None
    n, m, sd = summary["n_seeds"], summary["mean"], summary["std"]
    seeds = summary.get("per_seed") or []
    if not sd > 1e-12 or (seeds and np.ptp(seeds) == 0):  # equal seeds give no interval (as stats.t_ci): spread unknown, not zero
        return None
    half = t_halfwidth(sd, n, level)
    return max(0.0, m - half), min(1.0, m + half)  # accuracies


KEPT = 0.9  # "accuracy largely kept": the paper gives no tolerance; we ask for 90 % of the unpruned accuracy


def prune_claims(q: dict) -> list[dict]:
    """JRNP's claim has two parts, both needed for ``holds``: accuracy largely kept (after's CI at or
    above KEPT × before; ``fails`` when its upper end is below that, ``inconclusive`` when it straddles), and better than matched random
    removal (the layer-matched control's seed interval below JRNP's CI). A plan from another
    method is measured beside the claims, as ``informational``."""
    rows = []
    saved = (q.get("fraction_saved") or {}).get("linear_state")
    acc = q.get("accuracy") or {}
    before, after = acc.get("before") or {}, acc.get("after") or {}
    ctrl = (acc.get("controls") or {})
    method = q.get("method", "jrnp")
    name = "Joint Rank-Norm Pruning" if method == "jrnp" else f"Pruning by {method} scores (not the paper's method)"
    for task in before:
        b, a = before[task], after.get(task, {})
        cs = {k: (v.get("summary") or {}).get(task) for k, v in ctrl.items()}
        # the closest match first: a key_groups plan's group-matched control has its layout exactly
        matched = next((k for k in ("group_matched", "layer_matched", "count_matched") if cs.get(k)), None)
        lm = cs.get(matched) if matched else None
        iv = _seed_interval(lm)
        need = KEPT * b["acc"] if b.get("acc") is not None else None
        ours = {"method": method, "state_saved": saved, "paper_state_saved": 0.389,
                "heads_removed": q.get("head_fraction_removed"), "before": b.get("acc"),
                "after": a.get("acc"), "after_ci": [a.get("lo"), a.get("hi")], "n": a.get("n"),
                "kept_criterion": f"after >= {KEPT:g} x before = {_f(need)}",
                "random_controls": {k: (v or {}).get("mean") for k, v in cs.items()},
                "layer_matched_seed_ci": list(iv) if iv else None, "matched_control": matched}
        # The control is a mean over random plans whose accuracies spread widely (one plan may keep
        # everything, the next nothing): its t interval over seeds, not its mean, must clear JRNP's CI.
        if _no_skill(task, b.get("acc"), b.get("lo")):
            verdict, why = "inconclusive", _no_skill(task, b.get("acc"), b.get("lo"))
        elif a.get("acc") is None or lm is None:
            verdict, why = "inconclusive", "accuracy after pruning or the random control is missing"
        elif a["hi"] < need:
            verdict, why = "fails", (f"accuracy not kept: {b['acc']:.3f} → {a['acc']:.3f}, CI upper end "
                                     f"{a['hi']:.3f} < {KEPT:g} × before = {need:.3f}")
        elif iv is None:
            verdict, why = "inconclusive", ("the random control's seeds give no interval (one seed, or all equal): its "
                                            "spread is unknown (use more random seeds)")
        elif iv[0] > a["hi"]:
            verdict, why = "fails", (f"matched random removal keeps MORE accuracy ({lm['mean']:.3f} vs {a['acc']:.3f}; "
                                     f"the seeds' interval [{iv[0]:.3f}, {iv[1]:.3f}] lies above the pruned model's CI)")
        elif iv[1] < a["lo"] and a["lo"] >= need:
            verdict, why = "holds", (f"accuracy kept ({b['acc']:.3f} → {a['acc']:.3f}, CI low {a['lo']:.3f} ≥ {need:.3f}) "
                                     f"and more than matched "
                                     f"random removal keeps ({lm['mean']:.3f}; the seeds' interval [{iv[0]:.3f}, "
                                     f"{iv[1]:.3f}] lies below the pruned model's CI)")
        else:
            verdict, why = "inconclusive", (f"{b['acc']:.3f} → {a['acc']:.3f} [{_f(a.get('lo'))}, {_f(a.get('hi'))}] "
                                            f"(kept needs ≥ {need:.3f}) vs matched random {lm['mean']:.3f}, "
                                            f"seeds' interval [{iv[0]:.3f}, {iv[1]:.3f}]")
        extra = {}
        if method != "jrnp":
            verdict, why, extra = "informational", f"{why} — judged as if it were the claim", {"informational": True}
        rows.append(_row(f"{name} at {q.get('head_fraction_removed', 0):.1%} of heads ({task})",
                         "38.9 % less recurrent state, accuracy largely kept",
                         ours, verdict, why, "prune/prune.json", **extra))
    return rows


def claims(folder: str | Path) -> dict:
    """All claim rows of a run folder (stages that did not run are listed as missing)."""
    folder = Path(folder)
    rows: list[dict] = []
    missing = []
    for stage, fn in (("stratify", stratify_claims), ("probe", probe_claims), ("prune", prune_claims)):
        path = folder / stage / f"{stage}.json"
        if path.is_file():
            data = runio.read_json(path)
            try:
                rows += fn(data)
            except (KeyError, AttributeError, TypeError, IndexError) as e:  # valid JSON of another shape
                raise UserError(f"{path}: not a staterank {stage} result ({type(e).__name__}: {e})") from None
        else:
            missing.append(stage)
    # issue #23: the optional compress stage (off by default, so never "missing")
    if (folder / "compress" / "compress.json").is_file():
        from .compress.claim import compress_claims

        rows += compress_claims(runio.read_json(folder / "compress" / "compress.json"))
    if not rows and missing:
        raise UserError(f"{folder} holds no finished stage (no stratify/, probe/ or prune/ results)")
    return {"rows": rows, "missing_stages": missing, "verdict_rules": __doc__.split("Verdicts:")[1].split("CIs:")[0].strip()}


def write_claims(folder: str | Path) -> dict:
    c = claims(folder)
    runio.write_json(Path(folder) / "claims.json", c)
    return c
