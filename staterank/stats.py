"""Every interval and test staterank reports, in one place (scipy where it has them).

Small pure functions: numbers or numpy arrays in, floats (or tuples and dicts of them) out; no
file, model or report code. Seeds are fixed arguments, so a rerun gives the same numbers bit for
bit. Conventions, kept from the callers that first wrote them:

* ``wilson_interval``, ``t_interval``: NaN where there is no interval (n = 0, one value);
* ``t_ci``, ``jackknife_pairs_ci``, ``bootstrap_ci``: None where there is no interval (the claims
  read None as "no verdict"), bounds clipped to the statistic's range;
* p-values are floats in [0, 1]; a test with nothing to test (no discordant pairs, all
  differences 0) gives 1.0.

``fmt_num`` prints these numbers for claims and reports (the one number formatter; ``report``
re-exports it, since the library may not import ``report``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

Z95 = 1.959963984540054  # two-sided 95 % normal quantile, scipy.stats.norm.ppf(0.975)


# ---------------------------------------------------------------- proportions

def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials at ``level`` (two-sided).

    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; (NaN, NaN) when n = 0. At k = 0
    (k = n) the bound is exactly 0 (1), and the interval never leaves [0, 1]."""
    if n == 0:
        return float("nan"), float("nan")
    ci = scipy.stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    lo = 0.0 if k == 0 else max(0.0, float(ci.low))
    hi = 1.0 if k == n else min(1.0, float(ci.high))
    return lo, hi


def accuracy_ci(correct: Sequence[bool], level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy of a list of right/wrong answers and its Wilson interval: (acc, lo, hi);
    (NaN, 0, 1) for no answers (nothing is known: the whole range)."""
    n = len(correct)
    if n == 0:
        return float("nan"), 0.0, 1.0
    k = sum(bool(c) for c in correct)
    return (k / n, *wilson_interval(k, n, level))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of paired right/wrong answers a vs b on the same items: ``a_only`` = a
    right & b wrong, ``b_only`` = the reverse; two-sided binomial test of the discordant counts at
    1/2 (p = 1.0 when there are none). Returns {n, a_only, b_only, p_value}."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if a_only + b_only == 0 else float(scipy.stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"n": int(len(a)), "a_only": a_only, "b_only": b_only, "p_value": p}


# ---------------------------------------------------------------- means

def t_halfwidth(sd: float, n: int, level: float = 0.95) -> float:
    """Half width of the two-sided ``level`` t interval of a mean: t_{n-1} · sd / √n."""
    return float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x`` and its two-sided ``level`` t interval, mean ± t_{n-1} · sd / √n:
    (mean, lo, hi); the interval is NaN with one value."""
    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    h = float(t_halfwidth(x.std(ddof=1), len(x), level))
    return m, m - h, m + h


def t_ci(x, bounds: tuple[float, float] = (-1.0, 1.0),
         level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """``t_interval`` of the finite values of ``x``, clipped to ``bounds`` (correlations and
    cosines live in [-1, 1]): (mean, lo, hi). (None, None, None) without a finite value; one value,
    or only equal ones, gives no interval: (mean, None, None)."""
    x = np.asarray([v for v in np.ravel(np.asarray(x, dtype=float)) if np.isfinite(v)])
    if len(x) == 0:
        return None, None, None
    if len(x) < 2 or np.ptp(x) == 0:
        return float(x.mean()), None, None
    m, lo, hi = t_interval(x, level)
    return m, max(lo, bounds[0]), min(hi, bounds[1])


def one_sample_t_p(x: Sequence[float]) -> float | None:
    """Two-sided one-sample t test of mean(x) = 0: None under 2 values, 1.0 when all are (close
    to) 0, None when all are equal but not 0 (no spread: the test is undefined)."""
    if len(x) < 2:
        return None
    if np.allclose(x, 0):
        return 1.0
    if np.ptp(x) > 0:
        return float(scipy.stats.ttest_1samp(x, 0.0).pvalue)
    return None


def ratio_mean_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Ratio estimator sum(num) / sum(den) (e.g. NLL per token over windows of different length)
    and its standard error, sqrt(n/(n−1) · Σ(num − r·den)²) / Σden; the SE is NaN with one pair."""
    r = num.sum() / den.sum()
    n = len(num)
    se = math.sqrt(n / (n - 1) * ((num - r * den) ** 2).sum()) / den.sum() if n > 1 else float("nan")
    return r, se


# ---------------------------------------------------------------- paired tests

def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided paired permutation test of mean(d) = 0 by sign flips (exact up to 14 non-zero
    differences, 2^14 arrangements; else 20,000 Monte-Carlo ones, seed 0). With d in {-1, 0, 1} it is
    the exact McNemar test. 1.0 when every difference is 0."""
    nz = d[d != 0]
    if len(nz) == 0:
        return 1.0
    if np.all(np.abs(nz) == np.abs(nz[0])):  # one magnitude: the sign test is exact and closed-form
        return float(scipy.stats.binomtest(int((nz > 0).sum()), len(nz), 0.5).pvalue)
    res = scipy.stats.permutation_test((nz,), np.mean, permutation_type="samples", alternative="two-sided",
                                       n_resamples=20_000, vectorized=False, rng=np.random.default_rng(0))
    return float(min(1.0, res.pvalue))


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test of paired x vs y; 1.0 with one pair or no difference."""
    d = x - y
    return float(scipy.stats.wilcoxon(x, y).pvalue) if len(d) > 1 and np.any(d != 0) else 1.0


def holm(ps: dict) -> dict:
    """Holm-adjusted p-values of a family {key: p} (None stays None and is not counted)."""
    items = sorted(((p, k) for k, p in ps.items() if p is not None), key=lambda x: x[0])
    out, running, m = dict.fromkeys(ps), 0.0, len(items)
    for j, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - j) * p))
        out[k] = running
    return out


# ---------------------------------------------------------------- resampling

def bootstrap_ci(x: np.ndarray, statistic: Callable[[np.ndarray], float], seed: int = 0,
                 n_boot: int = 2000) -> tuple[float | None, float | None, float | None]:
    """``statistic(x)`` and its 95 % percentile bootstrap interval over the entries of ``x``
    (``n_boot`` resamples from ``numpy.random.default_rng(seed)``). (None, None, None) when the
    statistic is not finite; (value, None, None) when fewer than half the resamples give a finite
    one."""
    v = statistic(x)
    if not np.isfinite(v):
        return None, None, None
    rng = np.random.default_rng(seed)
    boots = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        return v, None, None
    return v, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of mean(a) − mean(b) over items AND seeds: ``a`` is [n]
    (one condition's per-item scores), ``b`` is [S, n] (S seeds of a control on the same items).
    Each resample draws n items and S seeds with replacement, so both which items and which random
    draws were taken widen it."""
    S, n = b.shape
    rng = np.random.default_rng(seed)
    ii = rng.integers(0, n, (n_boot, n))
    ss = rng.integers(0, S, (n_boot, S))
    boot = a[ii].mean(1) - np.array([b[s][:, i].mean() for s, i in zip(ss, ii)])
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def jackknife_pairs_ci(mat, bounds: tuple[float, float] = (-1.0, 1.0)) -> tuple[float | None, float | None, float | None]:
    """Mean of a symmetric matrix's off-diagonal pairs and its 95 % leave-one-out jackknife
    interval (t, N − 1 df), clipped to ``bounds``: pairs share their rows (contexts), so rows, not
    pairs, are the sample. None where undefined: under 2 rows or no finite pair (all None); under 3
    rows (or 3 finite leave-one-out means), or every pair equal (no interval)."""
    mat = np.asarray(mat, dtype=float)
    N = len(mat) if mat.ndim == 2 else 0
    off = ~np.eye(N, dtype=bool)
    if N < 2 or not np.isfinite(mat[off]).any():
        return None, None, None
    with np.errstate(invalid="ignore"):
        m = float(np.nanmean(mat[off]))
        if N < 3:
            return m, None, None
        loo = np.array([np.nanmean(np.delete(np.delete(mat, j, 0), j, 1)[~np.eye(N - 1, dtype=bool)]) for j in range(N)])
    loo = loo[np.isfinite(loo)]
    if len(loo) < 3:
        return m, None, None
    n = len(loo)
    se = float(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))
    if se == 0:  # every pair equal: no spread to build an interval from
        return m, None, None
    h = float(scipy.stats.t.ppf(0.975, n - 1)) * se
    return m, max(m - h, bounds[0]), min(m + h, bounds[1])


# ---------------------------------------------------------------- printing

def fmt_num(x, nd: int = 3, *, dash_nonfinite: bool = False, str_nonfloat: bool = False) -> str:
    """``x`` with ``nd`` decimals; "—" for None. ``dash_nonfinite``: a NaN or infinite float prints
    "—" too (else "nan", "inf"). ``str_nonfloat``: anything but a float (an int, a string) prints as
    ``str(x)`` (else an int gets ``nd`` decimals too)."""
    if x is None or (dash_nonfinite and isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if str_nonfloat and not isinstance(x, float):
        return str(x)
    return f"{x:.{nd}f}"
