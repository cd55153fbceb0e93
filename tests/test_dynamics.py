"""dynamics: texts measured at different positions merged onto the union of positions (NaN where a
text has none), the last finite value of a series, and the trapezoid time mean."""

import numpy as np
import pytest

from staterank.dynamics import last_finite, merge_dynamics, merge_on_positions, time_mean
from staterank.errors import UserError
from staterank.spectra import STAT_NAMES


def test_merge_on_positions_of_texts_of_different_lengths():
    # run a: two texts at positions 1, 4, 8; run b: one shorter text at 1, 2, 4 (2 is new)
    a = {"x": np.arange(2 * 3 * 2 * 3, dtype=float).reshape(2, 3, 2, 3), "positions": np.array([1, 4, 8])}
    b = {"x": -np.arange(1 * 3 * 2 * 3, dtype=float).reshape(1, 3, 2, 3) - 1, "positions": np.array([1, 2, 4])}
    out, pos = merge_on_positions([a, b], ["x"])
    assert pos.tolist() == [1, 2, 4, 8]
    x = out["x"]
    assert x.shape == (3, 3, 2, 4) and x.dtype == np.float64
    np.testing.assert_array_equal(x[:2][..., [0, 2, 3]], a["x"])  # a's texts first, in order
    assert np.isnan(x[:2][..., 1]).all()  # a has no position 2
    np.testing.assert_array_equal(x[2][..., [0, 1, 2]], b["x"][0])
    assert np.isnan(x[2][..., 3]).all()  # b is shorter: nothing at 8


def _run(seed, pos, texts, bound):
    rng = np.random.default_rng(seed)
    r = {n: rng.random((len(texts), 2, 3, len(pos))) for n in STAT_NAMES}
    r.update(positions=np.array(pos), layers=np.array([0, 2]), bound=np.asarray(bound),
             log_decay=-rng.random((len(texts), 2, 3)), texts=np.array(texts))
    return r


def test_merge_dynamics_takes_the_union_and_the_bound_on_it():
    a = _run(0, [1, 4, 8], ["a0", "a1"], [1, 4, 6])
    b = _run(1, [2, 4], ["b0"], [[2, 4], [2, 4]])  # per-layer bound [L, P]
    m = merge_dynamics([a, b])
    assert m["positions"].tolist() == [1, 2, 4, 8] and m["texts"].tolist() == ["a0", "a1", "b0"]
    assert m["threshold_rank"].shape == (3, 2, 3, 4)
    assert np.isnan(m["nuclear_norm"][2][..., [0, 3]]).all() and np.isnan(m["nuclear_norm"][:2][..., 1]).all()
    np.testing.assert_array_equal(m["bound"], [1, 2, 4, 6])  # equal over layers: stored as [P]
    np.testing.assert_array_equal(m["log_decay"], np.concatenate([a["log_decay"], b["log_decay"]]))
    assert merge_dynamics([a]) is a
    with pytest.raises(UserError, match="different layers"):
        merge_dynamics([a, {**b, "layers": np.array([0, 3])}])


def test_last_finite_and_time_mean():
    nan = np.nan
    x = np.array([[1.0, 2.0, nan, nan], [nan, 5.0, 6.0, 7.0], [nan, nan, nan, nan], [3.0, nan, 4.0, nan]])
    out = last_finite(x)
    np.testing.assert_array_equal(out[[0, 1, 3]], [2.0, 7.0, 4.0])
    assert np.isnan(out[2])
    t = np.array([1, 2, 4, 8])
    m = time_mean(x, t)
    # trapezoid over each row's finite positions, divided by their span; one value: that value
    assert m[0] == pytest.approx(1.5) and m[1] == pytest.approx((5.5 * 2 + 6.5 * 4) / 6)
    assert np.isnan(m[2]) and m[3] == pytest.approx(3.5)
    assert time_mean(np.array([[nan, 9.0, nan]]), np.array([1, 2, 3]))[0] == 9.0
