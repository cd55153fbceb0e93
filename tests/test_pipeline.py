"""The main job: config handling, claim verdicts, and one end-to-end run on a tiny model."""

import json

import numpy as np
import pytest
import scipy.stats
from test_models import save_tiny

from staterank import claims as C
from staterank.cli import main
from staterank.errors import UserError
from staterank.pipeline import RunConfig


def test_config_overrides_and_errors(tmp_path):
    cfg = RunConfig.load(None, ["probe.limit=7", "stratify.max_tokens=64", "model=foo", "stages=[stratify]"])
    assert cfg.probe.limit == 7 and cfg.stratify.max_tokens == 64 and cfg.model == "foo" and cfg.stages == ["stratify"]
    y = tmp_path / "r.yaml"
    y.write_text("probe:\n  seeds: 2\nprune:\n  alpha: 0.25\n")
    cfg = RunConfig.load(y, ["prune.alpha=0.75"])
    assert cfg.probe.seeds == 2 and cfg.prune.alpha == 0.75
    for bad in (["nope=1"], ["probe.nope=1"], ["prune.alpha=2"], ["probe.fraction=1"], ["stages=[x]"], ["limit"]):
        with pytest.raises(UserError):
            RunConfig.load(None, bad)
    with pytest.raises(UserError, match="no such file"):
        RunConfig.load(tmp_path / "missing.yaml")


def test_bad_model_leaves_no_run_folder(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("val,lo,hi,init,expect", [
    (0.95, 0.93, 0.97, 0.40, "holds"),
    (0.95, 0.93, 0.97, 0.96, "artefact"),
    (0.95, 0.85, 0.99, 0.40, "inconclusive"),
    (0.80, 0.70, 0.88, 0.40, "fails"),
    (0.95, 0.93, 0.97, None, "inconclusive"),
    (None, None, None, 0.5, "inconclusive"),
])
def test_threshold_verdicts(val, lo, hi, init, expect):
    assert C._threshold_verdict(val, lo, hi, 0.90, init)[0] == expect


def test_bimodality_ci_contains_value():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.05, 0.02, 40), rng.normal(0.95, 0.02, 40)])
    v, lo, hi = C._bc_ci(x)
    assert lo <= v <= hi and lo > 5 / 9  # two tight clusters: clearly bimodal
    assert hi - lo > 0.004  # resampling heads changes the cluster sizes, so BC varies: a real interval
    # an independent percentile bootstrap (another seed) gives about the same interval
    from staterank.stratify import bimodality_coefficient

    r2 = np.random.default_rng(12345)
    boots = [bimodality_coefficient(x[r2.integers(0, len(x), len(x))])["value"] for _ in range(2000)]
    blo, bhi = np.quantile(boots, [0.025, 0.975])
    assert lo == pytest.approx(blo, abs=0.25 * (bhi - blo)) and hi == pytest.approx(bhi, abs=0.25 * (bhi - blo))
    v, lo, hi = C._bc_ci(rng.normal(0.5, 0.1, 80))
    assert hi < 5 / 9  # one Gaussian: clearly not
    assert C._bc_ci(np.ones(10)) == (None, None, None)


def _probe_json(base, low, high, rnd, p_lo_hi, p_lo_rnd):
    rows = [{"task": "t", "condition": c, "accuracy": a, "n": 50, "ci_low": a - 0.1, "ci_high": a + 0.1}
            for c, a in (("base", base), ("low", low), ("high", high))]
    comps = [{"task": "t", "a": "low", "b": "high", "diff": low - high, "p_items": p_lo_hi, "seeds": 1,
              "diff_ci_low": None, "diff_ci_high": None},
             {"task": "t", "a": "low", "b": "layer_random.low", "diff": low - rnd, "p_items": p_lo_rnd, "seeds": 3,
              "diff_ci_low": low - rnd - 0.05, "diff_ci_high": low - rnd + 0.05}]
    from staterank.probes.run import verdicts

    pj = {"rows": rows, "comparisons": comps}
    pj["verdicts"] = verdicts(pj, ["t"])
    return pj


@pytest.mark.parametrize("args,expect", [
    ((0.9, 0.3, 0.85, 0.8, 1e-4, 1e-4), "holds"),
    ((0.9, 0.85, 0.3, 0.8, 1e-4, 0.5), "fails"),  # low-rank removal hurts less than high-rank
    ((0.9, 0.88, 0.88, 0.88, 1.0, 1.0), "inconclusive"),  # no effect seen, but the interval allows some harm
    ((0.9, 0.88, 0.88, 0.80, 1.0, 1.0), "fails"),  # the interval vs random excludes any extra harm
    ((0.9, 0.3, 0.85, 0.3, 1e-4, 1.0), "inconclusive"),  # worse than high, same as layer-matched random
    ((0.0, 0.0, 0.0, 0.0, 1.0, 1.0), "inconclusive"),  # nothing to lose
])
def test_probe_claim_verdicts(args, expect):
    (row,) = [r for r in C.probe_claims(_probe_json(*args)) if not r.get("informational")]
    assert row["verdict"] == expect, row["why"]


@pytest.mark.parametrize("row,share,expect", [(0, 0.0, "holds"), (0, 0.1, "holds"), (0, 0.12, "inconclusive"),
                                               (2, 0.9, "holds")])
def test_probe_claim_needs_a_budget_the_unmodified_model_fits_in(row, share, expect):
    """A claim is inconclusive when more than 10 % of the UNMODIFIED model's outputs hit the token
    budget (its accuracy then measures the budget); an ablated condition running on to the budget
    (row 2: high-rank removed, looping) is an effect of the ablation and does not block a verdict.
    The budget is judged before "no skill to lose": raising --max-new-tokens is the fix to name."""
    pj = _probe_json(0.9, 0.3, 0.85, 0.8, 1e-4, 1e-4)
    pj["rows"][row]["truncated_share"] = share
    (r,) = [x for x in C.probe_claims(pj) if not x.get("informational")]
    assert r["verdict"] == expect, r["why"]
    if expect == "inconclusive":
        assert "12% of the unmodified model's outputs hit the token budget" in r["why"]
    pj = _probe_json(0.0, 0.0, 0.0, 0.0, 1.0, 1.0)  # no skill AND cut off: the budget is named
    pj["rows"][0]["truncated_share"] = 0.9
    (r,) = [x for x in C.probe_claims(pj) if not x.get("informational")]
    assert r["verdict"] == "inconclusive" and "token budget" in r["why"]


def test_run_end_to_end_and_resume(tmp_path, capsys):
    """stratify → probe → prune → claims on a tiny model; a second call resumes and changes nothing;
    another config in the same folder is refused."""
    save_tiny(tmp_path / "m", "qwen3_next", h_k=2, h_v=4, k=8, v=8)
    out = tmp_path / "run"
    args = ["run", "--model", str(tmp_path / "m"), "--quiet", "--out", str(out),
            "--set", "stratify.max_tokens=48", "--set", "stratify.suite=natural",
            "--set", "probe.tasks=[arith]", "--set", "probe.limit=4", "--set", "probe.seeds=2",
            "--set", "probe.single_head=false",
            "--set", "prune.tasks=[arith]", "--set", "prune.eval_n=4", "--set", "prune.random_seeds=1",
            "--set", "prune.calib_tokens=48", "--set", "prune.state_context=32", "--set", "prune.calib_suite=natural"]
    assert main(args) == 0
    c = json.loads((out / "claims.json").read_text())
    assert not c["missing_stages"]
    assert all(r["verdict"] in C.VERDICTS for r in c["rows"])
    claims_text = {r["claim"] for r in c["rows"]}
    assert any("stratification" in x for x in claims_text) and any("Pruning" in x for x in claims_text)
    report = (out / "report.md").read_text()
    assert "| claim | paper |" in report and "## stratify" in report
    before = {p: p.stat().st_mtime_ns for p in (out / "probe" / "probe.json", out / "prune" / "prune.json")}
    assert main(args) == 0  # resume: finished stages are kept as they are
    assert before == {p: p.stat().st_mtime_ns for p in before}
    capsys.readouterr()
    assert main(args[:-2] + ["--set", "prune.calib_suite=default"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["verify", str(out)]) == 0
    assert "| claim |" in capsys.readouterr().out


@pytest.mark.parametrize("family,gates", [("qwen3_5", "fla"), ("kimi_linear", "model"), ("olmo_hybrid", "model")])
def test_run_end_to_end_on_every_other_family(family, gates, tmp_path):
    """The whole pipeline on the other three families: their own init baseline gates (memoryless
    Qwen3.5 init replaced), ablation probes, per-layer pruning exported and checked."""
    kw = dict(h_v=4, k=8, v=8) if family == "kimi_linear" else dict(h_k=2, h_v=4, k=8, v=8)
    save_tiny(tmp_path / "m", family, **kw)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "m"), "--quiet", "--out", str(out),
                 "--set", "stratify.max_tokens=48", "--set", "stratify.suite=natural",
                 "--set", "probe.tasks=[arith]", "--set", "probe.limit=4", "--set", "probe.seeds=2",
                 "--set", "probe.single_head=false", "--set", "prune.tasks=[arith]", "--set", "prune.eval_n=4",
                 "--set", "prune.random_seeds=1", "--set", "prune.calib_tokens=48", "--set", "prune.state_context=32",
                 "--set", "prune.calib_suite=natural", "--set", "prune.ranking=per_layer"]) == 0
    c = json.loads((out / "claims.json").read_text())
    assert not c["missing_stages"] and all(r["verdict"] in C.VERDICTS for r in c["rows"])
    assert json.loads((out / "stratify" / "stratify.json").read_text())["init_baseline"]["gates"] == gates
    assert f"at init ({gates} gates)" in (out / "report.md").read_text()  # the claims table names the baseline
    p = json.loads((out / "prune" / "prune.json").read_text())
    assert p["check"]["passed"] and not p.get("not_exported") and (out / "prune" / "model" / "config.json").exists()


def test_claims_table_keeps_measurements_apart_and_rules_are_a_list():
    from staterank.report.claims import _p, _rules, claims_table

    claim = C._row("A claim", "paper says", {"value": 0.5, "ci": [0.4, 0.6]}, "fails", "why", "src")
    extra = C._row("A measurement", "not claimed", {"rho": 0.3}, "informational", "what it asks", "src",
                   informational=True)
    text = claims_table({"rows": [extra, claim]})
    head, tail = text.split("Also measured")
    assert "A claim" in head and "**FAILS**" in head and "A measurement" not in head
    assert "| A measurement | rho 0.300 | what it asks |" in tail
    rules = _rules(C.__doc__.split("Verdicts:")[1].split("CIs:")[0])
    assert [r.split(" ")[1] for r in rules[2:]] == [f"`{v}`" for v in C.VERDICTS]  # one item per verdict
    assert _p(0.0) == "p=0.0e+00" and _p(2.5e-16) == "p=2.5e-16" and _p(0.0312) == "p=0.031"


def _prune_json(per_seed, after=0.04, before=0.044, n=100, method="jrnp", task="t"):
    from staterank.probes.run import wilson
    from staterank.prune.run import _summ  # the summary prune.json carries

    lo, hi = wilson(round(after * n), n)
    summ = _summ([{task: {"acc": a}} for a in per_seed])
    blo, bhi = wilson(round(before * n), n)
    return {"method": method, "fraction_saved": {"linear_state": 0.375}, "head_fraction_removed": 0.375,
            "accuracy": {"before": {task: {"acc": before, "lo": blo, "hi": bhi, "n": n}},
                         "after": {task: {"acc": after, "lo": lo, "hi": hi, "n": n}},
                         "controls": {"layer_matched": {"summary": summ}}}}


@pytest.mark.parametrize("per_seed,expect", [
    ([0.98, 0.0, 0.0, 0.0, 0.0], "inconclusive"),  # mean 0.196 above JRNP's CI, but one lucky seed is all of it
    ([0.30, 0.28, 0.33, 0.31, 0.29], "fails"),  # every random plan keeps more
    ([0.0, 0.01, 0.0, 0.02, 0.0], "inconclusive"),  # random as bad as JRNP
    ([0.30], "inconclusive"),  # one seed: no spread to judge by
])
def test_prune_claim_judges_the_control_by_its_seed_interval(per_seed, expect):
    (row,) = C.prune_claims(_prune_json(per_seed))
    assert row["verdict"] == expect, row["why"]


def test_prune_claim_holds_when_every_random_plan_is_worse():
    (row,) = C.prune_claims(_prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.62, before=0.62, n=400))
    assert row["verdict"] == "holds", row["why"]
    assert "Joint Rank-Norm Pruning" in row["claim"]


def test_prune_claim_needs_the_kept_accuracy_shown_by_its_ci():
    """after ≥ 0.9 × before as a point estimate, but its CI reaches below: accuracy kept is not shown."""
    q = _prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.6, before=0.62, n=100)
    a = q["accuracy"]["after"]["t"]
    assert a["acc"] >= 0.9 * 0.62 > a["lo"]  # the case this test is about
    (row,) = C.prune_claims(q)
    assert row["verdict"] == "inconclusive", row["why"]


def test_prune_claim_control_of_equal_seeds_gives_no_interval():
    """Random plans that all score the same give no spread to judge by (as stats.t_ci): not a point interval."""
    (row,) = C.prune_claims(_prune_json([0.05, 0.05, 0.05], after=0.62, before=0.62, n=400))
    assert row["verdict"] == "inconclusive" and "all equal" in row["why"], row["why"]


def test_prune_claim_of_a_key_groups_plan_is_judged_by_its_group_matched_control():
    """A whole-group plan's closest control removes random whole groups (its layout exactly): that one
    decides, not the layer-matched one, and the report names it."""
    from staterank.prune.run import _summ
    from staterank.report.claims import _ours

    q = _prune_json([0.30, 0.28, 0.33, 0.31, 0.29], after=0.62, before=0.62, n=400)  # layer-matched alone: the claim fails
    q["accuracy"]["controls"]["group_matched"] = {"summary": _summ([{"t": {"acc": a}} for a in (0.05, 0.02, 0.04, 0.03)])}
    (row,) = C.prune_claims(q)
    assert row["verdict"] == "holds" and row["ours"]["matched_control"] == "group_matched", row["why"]
    assert "group-matched over seeds" in _ours(row["ours"])


def test_prune_claim_needs_accuracy_kept():
    """Beating random removal is not enough: the paper claims accuracy largely kept."""
    (row,) = C.prune_claims(_prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.6, before=0.9))
    assert row["verdict"] == "fails" and "not kept" in row["why"], row["why"]


def test_prune_claim_of_another_method_is_not_the_papers():
    (row,) = C.prune_claims(_prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.6, before=0.62, method="inverse"))
    assert row["verdict"] == "informational" and "inverse" in row["claim"] and "Joint" not in row["claim"]


def test_one_value_gives_no_interval_and_no_verdict():
    m, lo, hi = C._t_ci([0.985])
    assert (m, lo, hi) == (0.985, None, None)
    assert C._threshold_verdict(m, lo, hi, 0.97, 0.1)[0] == "inconclusive"
    assert C._jackknife_pairs([[1, 0.99], [0.99, 1]])[1] is None  # two contexts: one pair


def test_spearman_claim_is_judged_per_layer():
    """The paper's ρ > 0.90 holds per layer: one bad layer among 36 good ones is not a pass."""
    rng = np.random.default_rng(0)
    good = rng.uniform(0.95, 0.99, (5, 36))
    bad = good.copy()
    bad[:, 7] = rng.uniform(0.25, 0.35, 5)
    for per, expect in ((good, "holds"), (bad, "fails")):
        sp = {"per_context": {f"c{i}": row.tolist() for i, row in enumerate(per)}, "t_early": 128,
              "t_early_used": {"c0": 128}, "t_late_used": {"c0": 2048}, "mean": float(per.mean())}
        m, lo, hi, layers = C._weakest_layer(sp)
        assert len(layers) == 36
        assert C._threshold_verdict(m, lo, hi, 0.90, 0.2)[0] == expect


def test_spearman_claim_does_not_drop_contexts_whose_order_is_lost():
    """Half the contexts put every head at the bound at t_late (ρ undefined there): the other half's
    high ρ cannot make the layer pass; the reason names how many contexts had no ρ."""
    per = {f"c{i}": [0.99 + 0.001 * i] for i in range(4)} | {f"c{i}": [None] for i in range(4, 8)}
    sp = {"per_context": per, "layers": [0], "t_early": 128, "mean": 0.99}
    m, lo, hi, layers = C._weakest_layer(sp)
    assert m > 0.9 and lo is None and hi is not None
    s = _stratify_json()
    s["spearman_t_early_t_late"] = sp
    row = next(r for r in C.stratify_claims(s) if "Spearman" in r["claim"])
    assert row["verdict"] == "inconclusive" and "undefined in 4 of 8 contexts" in row["why"], row["why"]
    assert row["ours"]["contexts_rho_undefined"] == [4]


def test_cosine_interval_is_over_contexts():
    """Seven contexts, one of them off: the jackknife over contexts is wider than a t interval that
    treats the 21 overlapping pairs as independent."""
    N = 7
    mat = np.full((N, N), 0.99)
    mat[0, :] = mat[:, 0] = 0.90
    np.fill_diagonal(mat, 1.0)
    m, lo, hi = C._jackknife_pairs(mat)
    _, plo, phi = C._t_ci(mat[np.triu_indices(N, 1)])
    assert m == pytest.approx(mat[np.triu_indices(N, 1)].mean())
    assert hi - lo > phi - plo


def test_prune_claim_needs_the_point_estimate_kept_not_only_the_ci():
    """after's CI reaches 0.9 × before but its accuracy does not: with random removal far below,
    beating random is not enough for "holds" (accuracy kept is not shown) and it is not "fails" either."""
    q = _prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.78, before=0.9)
    a = q["accuracy"]["after"]["t"]
    assert a["hi"] >= 0.9 * 0.9 > a["acc"]  # the case this test is about
    (row,) = C.prune_claims(q)
    assert row["verdict"] == "inconclusive", row["why"]


def test_no_skill_is_judged_by_the_ci_not_the_point_estimate():
    """mqar's chance is the best copy guess (≈ 0.222); an unpruned accuracy of 0.25 over 100 items has a
    Wilson CI reaching below it: no demonstrated skill to lose, whatever pruning does."""
    ch = C._chance("mqar")
    assert 0.21 < ch < 0.23
    q = _prune_json([0.05, 0.02, 0.04, 0.03, 0.06], after=0.24, before=0.25, task="mqar")
    b = q["accuracy"]["before"]["mqar"]
    assert b["lo"] <= ch < b["acc"]  # the case this test is about
    (row,) = C.prune_claims(q)
    assert row["verdict"] == "inconclusive" and "no skill to lose" in row["why"], row["why"]
    assert C._no_skill("mqar", 0.25, 0.17) and C._no_skill("mqar", 0.25, 0.23) is None


# ---- stratification claims on synthetic stratify.json ---------------------------------------------------

def _stratify_json(L=3, N=5):
    """A stratify.json as run_stratify writes it (model and initialisation baseline) from synthetic
    dynamics; tests overwrite the blocks they judge."""
    from test_stratify import synth

    from staterank import stratify as st

    pos = np.array([64, 128, 256, 512, 1024, 2048])
    out = []
    for seed in (0, 1):
        raw, cls, stats, _ = st.stratify_stats(synth(N, L, 6, positions=pos, seed=seed), [f"c{i}" for i in range(N)])
        out.append({**raw, "head_stats": stats.to_dict()})
    s = {**out[0], "paper": st.PAPER, "init_baseline": out[1]}
    return json.loads(json.dumps(st.jsonable(s)))


def _spearman_block(per, layers=None):
    """per [N contexts, L layers] -> the spearman_t_early_t_late block claims reads."""
    per = np.asarray(per, dtype=float)
    names = [f"c{i}" for i in range(len(per))]
    return {"per_context": {n: row.tolist() for n, row in zip(names, per)}, "layers": layers or list(range(per.shape[1])),
            "t_early": 128, "t_late_requested": 2048, "t_early_used": dict.fromkeys(names, 128),
            "t_late_used": dict.fromkeys(names, 2048), "mean": float(per.mean()), "note": None}


def _claim(rows, text):
    (row,) = [r for r in rows if text in r["claim"]]
    return row


def test_stratify_claims_spearman_is_an_artefact_when_the_init_passes_too():
    rng = np.random.default_rng(0)
    s = _stratify_json()
    s["spearman_t_early_t_late"] = _spearman_block(rng.uniform(0.95, 0.99, (5, 3)))
    s["init_baseline"]["spearman_t_early_t_late"] = _spearman_block(rng.uniform(0.93, 0.99, (5, 3)))
    row = _claim(C.stratify_claims(s), "Rank order stable")
    assert row["verdict"] == "artefact", row["why"]
    assert row["ours"]["init"] == pytest.approx(min(np.mean([r for r in s["init_baseline"]["spearman_t_early_t_late"]
                                                             ["per_context"].values()], axis=0)))
    s["init_baseline"]["spearman_t_early_t_late"] = _spearman_block(rng.uniform(0.2, 0.4, (5, 3)))
    assert _claim(C.stratify_claims(s), "Rank order stable")["verdict"] == "holds"


def _pair_matrix(mean, N=6, spread=0.01, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(0, spread, N)
    mat = mean + (e[:, None] + e[None, :]) / 2  # pairs share contexts: a context effect
    np.fill_diagonal(mat, 1.0)
    return mat.tolist()


@pytest.mark.parametrize("key,ref,mean", [("cosine_rank", 0.97, 0.80), ("cosine_nuclear", 0.98, 0.90)])
def test_stratify_claims_cosine_fails_below_the_papers_threshold(key, ref, mean):
    s = _stratify_json()
    s[key]["matrix"] = _pair_matrix(mean)
    s["init_baseline"][key]["mean_offdiag"] = 0.1
    m, lo, hi = C._jackknife_pairs(s[key]["matrix"])
    assert 0.5 < lo and hi < ref  # the whole interval between 0.5 and the paper's threshold
    row = _claim(C.stratify_claims(s), "cosine of " + ("rank" if key == "cosine_rank" else "nuclear"))
    assert row["verdict"] == "fails" and f"{ref:.3f}" in row["why"], row["why"]
    assert row["ours"]["criterion"] == f"> {ref}" and row["ours"]["value"] == pytest.approx(m)


def test_stratify_claims_spearman_interval_is_bonferroni_adjusted_over_layers():
    """One layer's five contexts: the unadjusted 95 % t interval clears 0.90, the interval adjusted
    for L = 10 layers does not; every other layer clears it either way → inconclusive, not holds."""
    L, n = 10, 5
    rng = np.random.default_rng(1)
    per = 0.99 + rng.normal(0, 0.002, (n, L))
    z = rng.normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    se = 0.0125
    per[:, 4] = 0.95 + z * se * np.sqrt(n)  # mean 0.95, standard error 0.0125
    x = per[:, 4]
    t95 = scipy.stats.t.ppf(0.975, n - 1) * se
    tbon = scipy.stats.t.ppf(1 - 0.05 / (2 * L), n - 1) * se
    assert x.mean() - t95 > 0.90 > x.mean() - tbon  # the case this test is about
    s = _stratify_json()
    s["spearman_t_early_t_late"] = _spearman_block(per, layers=list(range(1, 2 * L, 2)))
    s["init_baseline"]["spearman_t_early_t_late"] = _spearman_block(rng.uniform(0.2, 0.4, (n, L)))
    row = _claim(C.stratify_claims(s), "Rank order stable")
    assert row["verdict"] == "inconclusive" and "layer 9 " in row["why"], row["why"]
    assert row["ours"]["per_layer"][4] == pytest.approx([x.mean(), x.mean() - tbon, min(x.mean() + tbon, 1.0)])
    assert row["ours"]["ci"][0] == pytest.approx(x.mean() - tbon)


def test_the_papers_niah_number_is_not_claimed_for_other_tasks():
    """Issue #24: the paper's NIAH numbers stood in the MQAR and multihop rows as if measured there."""
    from staterank.probes.run import verdicts

    for task, paper in (("niah", "NIAH 93.8 → 46.9"), ("mqar", "not measured for mqar (the paper's")):
        pj = _probe_json(0.9, 0.3, 0.85, 0.8, 1e-4, 1e-4)
        for r in pj["rows"] + pj["comparisons"]:
            r["task"] = task
        pj["verdicts"] = verdicts(pj, [task])
        (row,) = [r for r in C.probe_claims(pj) if not r.get("informational")]
        assert row["paper"].startswith(paper), row["paper"]


def test_compress_is_an_optional_stage_of_run_with_its_claim_row(tmp_path):
    """stages=[compress]: the compress stage's run folder inside the run, its YAML section checked like
    the others, its informational row in the claims; the default stages leave it out."""
    assert "compress" not in RunConfig.load(None).stages
    with pytest.raises(UserError, match="compress"):
        RunConfig.load(None, ["compress.budgets=[1.5]"])
    save_tiny(tmp_path / "m", "qwen3_next", h_k=2, h_v=4, k=8, v=8)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "m"), "--quiet", "--out", str(out), "--set", "stages=[compress]",
                 "--set", "compress.tasks=[arith]", "--set", "compress.budgets=[0.5]", "--set", "compress.eval_n=3",
                 "--set", "compress.sens_n=1", "--set", "compress.random_seeds=1", "--set", "compress.ladder=[int8_head]",
                 "--set", "compress.sensitivity=[int8_head,drop]", "--set", "compress.all_heads=[int8_head]",
                 "--set", "compress.calib_tokens=48", "--set", "compress.calib_suite=natural"]) == 0
    res = json.loads((out / "compress" / "compress.json").read_text())
    assert res["base"]["all"]["n"] == 3
    rows = json.loads((out / "claims.json").read_text())["rows"]
    assert any("state bytes" in r["claim"] for r in rows)


def test_bimodality_claim_knows_the_init_baseline_ran(monkeypatch):
    """The baseline ran but its BC is undefined (every head alike at init): the row says so, as the
    Spearman and cosine rows do, instead of claiming no baseline was measured."""
    s = _stratify_json()
    s["init_baseline"]["bimodality_coefficient"]["value"] = None
    monkeypatch.setattr(C, "_bc_ci", lambda x: (0.8, 0.7, 0.9))
    row = _claim(C.stratify_claims(s), "stratification")
    assert row["verdict"] == "holds" and "undefined" in row["why"], row["why"]


@pytest.mark.parametrize("stage,content", [("prune", "[1, 2]"), ("stratify", "{}"), ("stratify", "null")])
def test_claims_of_a_stage_file_of_another_shape_is_one_line(tmp_path, stage, content):
    (tmp_path / stage).mkdir()
    (tmp_path / stage / f"{stage}.json").write_text(content)
    with pytest.raises(UserError, match=f"not a staterank {stage} result") as e:
        C.claims(tmp_path)
    assert "\n" not in str(e.value)
