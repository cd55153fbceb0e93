"""staterank.stats: every interval and test, each pinned to exact values.

The pinned numbers are what the implementations had before they moved here (claims.py,
probes/run.py, tasks/evaluate.py; #19), so a change to any of them shows as a failure here.
"""

import math

import numpy as np
import pytest
import scipy.stats

from staterank import stats as S


def _wilson_by_hand(k, n, z=1.959963984540054):
    """The hand-written Wilson interval stats.wilson_interval replaced (tasks/evaluate.py before #19)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def test_wilson_equals_the_hand_formula_it_replaced():
    got, want = [], []
    for n in list(range(1, 121)) + [199, 256, 500, 1000, 4096]:
        for k in sorted({*range(0, min(n, 30) + 1), *range(max(0, n - 30), n + 1), n // 2, n // 3}):
            got.append(S.wilson_interval(k, n))
            want.append(_wilson_by_hand(k, n))
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-12)


def test_wilson_known_values_and_edges():
    lo, hi = S.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901624, abs=1e-7) and hi == pytest.approx(0.9433178, abs=1e-7)
    assert S.wilson_interval(0, 20)[0] == 0.0 and S.wilson_interval(20, 20)[1] == 1.0  # exact at the edges
    assert S.wilson_interval(0, 20)[1] == pytest.approx(0.1611251, abs=1e-7)
    assert all(math.isnan(v) for v in S.wilson_interval(0, 0))  # n = 0: no interval
    lo90, hi90 = S.wilson_interval(8, 10, level=0.9)
    assert lo < lo90 < 0.8 < hi90 < hi
    assert S.wilson_interval(np.int64(3), np.int64(10)) == S.wilson_interval(3, 10)


def test_accuracy_ci():
    assert S.accuracy_ci([True] * 8 + [False] * 2) == (0.8, *S.wilson_interval(8, 10))
    acc, lo, hi = S.accuracy_ci([])
    assert math.isnan(acc) and (lo, hi) == (0.0, 1.0)


def test_mcnemar_exact():
    m = S.mcnemar([1, 1, 1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 1, 0, 1, 0])
    assert m == {"n": 8, "a_only": 3, "b_only": 1, "p_value": 0.625}  # 2·P(X ≤ 1), X ~ Bin(4, 1/2) = 10/16
    assert S.mcnemar([True, False], [True, False])["p_value"] == 1.0  # no discordant pair


def test_t_interval_and_halfwidth():
    m, lo, hi = S.t_interval([0.2, 0.4, 0.3, 0.5])
    h = scipy.stats.t.ppf(0.975, 3) * math.sqrt(0.05 / 3) / 2
    assert m == pytest.approx(0.35, abs=1e-15) and (lo, hi) == pytest.approx((0.35 - h, 0.35 + h), rel=1e-14)
    assert (lo, hi) == pytest.approx((0.14457397432394797, 0.5554260256760521), rel=1e-12)  # probes/run.t_interval
    m, lo, hi = S.t_interval([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert S.t_halfwidth(0.1, 4) == pytest.approx(0.1591223152641854, rel=1e-12)  # claims._seed_interval's half
    assert S.t_halfwidth(0.1, 4, level=0.99) == pytest.approx(scipy.stats.t.ppf(0.995, 3) * 0.05, rel=1e-14)


def test_t_ci_finite_values_bounds_and_no_interval():
    assert S.t_ci([0.91, 0.95, 0.97, 0.99, np.nan]) == pytest.approx((0.955, 0.9006493823240798, 1.0), rel=1e-12)
    assert S.t_ci([0.2, 0.5, 0.9, 0.4], level=0.99) == pytest.approx((0.5, -0.35975857109121745, 1.0), rel=1e-12)
    assert S.t_ci([0.2, 0.5, 0.9, 0.4], bounds=(0.0, 1.0), level=0.99)[1] == 0.0
    assert S.t_ci([0.985]) == (0.985, None, None)  # one value: no interval
    assert S.t_ci([0.5, 0.5, np.nan]) == (0.5, None, None)  # equal values: no interval
    assert S.t_ci([np.nan]) == (None, None, None)


def test_one_sample_t_p():
    assert S.one_sample_t_p([-0.1]) is None
    assert S.one_sample_t_p([0.0, 0.0, 0.0]) == 1.0
    assert S.one_sample_t_p([0.2, 0.2]) is None  # identical non-zero: undefined
    assert S.one_sample_t_p([-0.1, 0.0, -0.3]) == pytest.approx(0.26970325665977846, rel=1e-12)


def test_ratio_mean_se():
    num, den = np.array([10.0, 30.0, 7.0, 22.0]), np.array([5, 12, 4, 9])
    r, se = S.ratio_mean_se(num, den)
    assert r == 69 / 30
    want = math.sqrt(4 / 3 * sum((a - 2.3 * b) ** 2 for a, b in zip(num, den))) / 30
    assert se == pytest.approx(want, rel=1e-13)
    assert math.isnan(S.ratio_mean_se(np.array([3.0]), np.array([2]))[1])


def _sign_flip_by_enumeration(d):
    nz = np.asarray([x for x in d if x != 0], dtype=float)
    signs = 1 - 2 * ((np.arange(2 ** len(nz))[:, None] >> np.arange(len(nz))) & 1)
    return float((np.abs((signs * nz).mean(1)) >= abs(nz.mean()) * (1 - 1e-12)).mean())


# one condition's right/wrong answers on 10 items, and 3 seeds of a random control on the same items
A = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], float)
B = np.array([[0, 1, 0, 0, 0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 1, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 1, 0, 1, 0, 0]], float)


def test_sign_flip_p():
    d = A - B.mean(0)
    assert S.sign_flip_p(d) == 0.078125  # (pinned: compare()'s p before #19)
    assert S.sign_flip_p(d) == pytest.approx(_sign_flip_by_enumeration(d), rel=1e-9)
    assert S.sign_flip_p(np.array([1.0, 1.0, -1.0, 0.0])) == 1.0  # one magnitude: the sign test
    assert S.sign_flip_p(np.zeros(5)) == 1.0
    mc = np.array([1, 0.5, -0.25, 0.75, 1, -0.5, 0.25, 1, 0.5, -1, 0.75, 0.25, -0.75, 0.5, 0.25, -0.5, 1, 0, 0.5, -0.25])
    assert S.sign_flip_p(mc) == 0.09679516024198791  # Monte Carlo, seed 0: bit for bit


def test_wilcoxon_p():
    pc, pb = np.array([2.0, 2.5, 1.75, 2.4444]), np.array([1.8, 2.0833, 1.875, 2.2222])
    assert S.wilcoxon_p(pc, pb) == pytest.approx(scipy.stats.wilcoxon(pc, pb).pvalue, rel=1e-14)
    assert S.wilcoxon_p(pc, pb) == pytest.approx(0.25, rel=1e-12)  # exact null distribution, 4 pairs
    assert S.wilcoxon_p(pc, pc) == 1.0 and S.wilcoxon_p(pc[:1], pb[:1]) == 1.0


def test_holm():
    # sorted 0.01·3, 0.03·2, 0.04·1 → running max; None is left out of the family
    assert S.holm({"a": 0.01, "b": 0.04, "c": None, "d": 0.03}) == {"a": 0.03, "b": 0.06, "c": None, "d": 0.06}
    assert S.holm({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}  # capped at 1
    assert S.holm({}) == {}


def test_bootstrap_ci():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9, 0.45])
    assert S.bootstrap_ci(x, np.mean) == (0.46875, 0.30609375000000005, 0.65)
    assert S.bootstrap_ci(x, np.mean, seed=1, n_boot=500) == (0.46875, 0.30000000000000004, 0.6500000000000001)
    assert S.bootstrap_ci(x, lambda v: np.nan) == (None, None, None)
    distinct = lambda v: float(v.mean()) if len(set(v.tolist())) == len(v) else np.nan  # noqa: E731
    assert S.bootstrap_ci(np.arange(10.0), distinct) == (4.5, None, None)  # most resamples undefined


def test_bimodality_bootstrap_through_claims():
    """claims._bc_ci is bootstrap_ci of the bimodality coefficient: pinned to its values before #19."""
    from staterank import claims as C

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0.1, 0.05, 30), rng.normal(0.9, 0.05, 30), [np.nan]])
    assert C._bc_ci(x) == pytest.approx((0.879502559308673, 0.8707039403741144, 0.9000809531026888), rel=1e-12)
    assert C._bc_ci(x, seed=3, n_boot=200) == pytest.approx(
        (0.879502559308673, 0.8718538461593718, 0.9021391031857974), rel=1e-12)


def test_paired_bootstrap_ci():
    assert S.paired_bootstrap_ci(A, B) == (0.033333333333333326, 0.6674999999999955)  # compare() before #19
    lo, hi = S.paired_bootstrap_ci(A, B[:1], n_boot=300, seed=5)
    assert lo <= A.mean() - B[0].mean() <= hi


def test_jackknife_pairs_ci():
    mat = np.array([[1, .9, .8, .7], [.9, 1, .85, .75], [.8, .85, 1, .95], [.7, .75, .95, 1]])
    assert S.jackknife_pairs_ci(mat) == pytest.approx((0.825, 0.6726519819171188, 0.9773480180828813), rel=1e-12)
    assert S.jackknife_pairs_ci(mat, bounds=(0.7, 0.9))[1:] == (0.7, 0.9)
    assert S.jackknife_pairs_ci([[1, 0.99], [0.99, 1]]) == (0.99, None, None)  # two contexts: one pair
    assert S.jackknife_pairs_ci(np.full((4, 4), 0.5))[1:] == (None, None)  # every pair equal
    assert S.jackknife_pairs_ci([[1.0]]) == (None, None, None)


def test_fmt_num_variants():
    nan = float("nan")
    assert [S.fmt_num(v) for v in (None, 0.12345, 3, nan)] == ["—", "0.123", "3.000", "nan"]
    assert S.fmt_num(0.5, 1) == "0.5"
    # claims' reasons: NaN is a dash too
    assert [S.fmt_num(v, dash_nonfinite=True) for v in (None, nan, np.float64(np.inf), 2)] == ["—", "—", "—", "2.000"]
    # the claims table: counts and names print as they are, floats (numpy's too) with decimals
    assert [S.fmt_num(v, str_nonfloat=True) for v in (None, 64, "x", np.float64(0.25), nan)] == \
        ["—", "64", "x", "0.250", "nan"]


def test_report_layer_grid_hides_unused_panels():
    from staterank.report.common import layer_grid, pyplot

    plt = pyplot()
    fig, panels = layer_grid(plt, 6, "rank")
    axes = fig.get_axes()
    assert len(axes) == 8 and len(panels) == 6 and sum(not a.axison for a in axes) == 2
    assert [a.get_ylabel() for a in panels] == ["rank", "", "", "", "rank", ""]
    assert [a.get_xlabel() for a in panels] == ["", "", "", "", "token t", "token t"]
    plt.close(fig)


def test_report_text_for_one_seed_and_plurals():
    """Issue #24 text slips: '1 seeds' and '± 0.000' for a single seed."""
    from staterank.report.common import plural
    from staterank.report.prune import _mean_std

    assert plural(1, "seed") == "1 seed" and plural(5, "seed") == "5 seeds"
    assert _mean_std({"mean": 0.5, "std": 0.0, "n_seeds": 1}) == "0.500 (1 seed: no spread)"
    assert _mean_std({"mean": 0.5, "std": 0.1, "n_seeds": 3}) == "0.500 ± 0.100 (3 seeds)"
