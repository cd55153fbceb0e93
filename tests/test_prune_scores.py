"""Scoring methods against hand computations on a small [L, H] example; budgets; bad input."""

import numpy as np
import pytest

from staterank.errors import UserError
from staterank.prune.scores import Budget, get_method
from staterank.stratify import HeadStats, head_stats

# L = 2 layers (model indices 0 and 3), H = 3 heads, d = 8
RANK = np.array([[1.0, 4.0, 2.0], [8.0, 3.0, 7.0]])
NORM = np.array([[2.0, 1.0, 4.0], [3.0, 8.0, 5.0]])


def _stats():
    z = np.zeros_like(RANK)
    return HeadStats(layers=np.array([0, 3]), mean_rank=RANK, final_rank=z, mean_nuclear=NORM,
                     bound=np.array([8.0, 8.0]), log_decay=z, n_contexts=1)


def test_scores_by_hand():
    s = _stats()
    np.testing.assert_allclose(get_method("rank").score(s), [[0.125, 0.5, 0.25], [1.0, 0.375, 0.875]])
    np.testing.assert_allclose(get_method("norm").score(s), [[0.25, 0.125, 0.5], [0.375, 1.0, 0.625]])
    jrnp = [[0.1875, 0.3125, 0.375], [0.6875, 0.6875, 0.75]]
    np.testing.assert_allclose(get_method("jrnp").score(s), jrnp)
    np.testing.assert_allclose(get_method("jrnp", alpha=0.25).score(s),
                               [[0.21875, 0.21875, 0.4375], [0.53125, 0.84375, 0.6875]])
    np.testing.assert_allclose(get_method("inverse").score(s), -np.array(jrnp))
    np.testing.assert_allclose(get_method("random", seed=3).score(s), np.random.default_rng(3).random((2, 3)))


def test_global_selection_never_empties_a_layer():
    s = _stats()
    m = get_method("jrnp")
    # (1,2)=.75 first; (1,0) and (1,1) tie at .6875 -> lower head first
    assert m.select(s, Budget("count", 2)) == [(3, 2), (3, 0)]
    # 0.5 of 6 = 3 heads: (3,1) would empty layer 3, so the next head (0,2) goes instead
    assert m.select(s, Budget("fraction", 0.5)) == [(3, 2), (3, 0), (0, 2)]
    assert get_method("inverse").select(s, Budget("count", 2)) == [(0, 0), (0, 1)]
    assert get_method("rank").select(s, Budget("count", 1)) == [(3, 0)]
    assert get_method("norm").select(s, Budget("count", 1)) == [(3, 1)]
    assert m.select(s, Budget("fraction", 0.0)) == []


def test_per_layer_bytes_and_layer_counts():
    s, hb = _stats(), (100, 200)
    m = get_method("jrnp")
    assert m.select(s, Budget("fraction", 0.34), "per_layer") == [(0, 2), (3, 2)]  # round(0.34*3) = 1 each
    assert m.select(s, Budget("count", 2), "per_layer") == [(0, 2), (3, 2)]
    # bytes: (3,2) frees 200 < 250, (3,0) reaches 400
    assert m.select(s, Budget("bytes", 250), head_bytes=hb) == [(3, 2), (3, 0)]
    assert m.select(s, Budget("bytes", 250), "per_layer", hb) == [(0, 2), (3, 2)]  # 1 per layer frees 300
    with pytest.raises(UserError):
        m.select(s, Budget("bytes", 250))  # bytes need head_bytes
    sel = get_method("random", seed=1).select(s, Budget("layer_counts", (2, 1)))
    assert sorted(li for li, _ in sel) == [0, 0, 3]
    a = get_method("random", seed=1).select(s, Budget("count", 3))
    assert a == get_method("random", seed=1).select(s, Budget("count", 3))
    seeds = {tuple(get_method("random", seed=k).select(s, Budget("count", 3))) for k in range(6)}
    assert len(seeds) > 1


def test_bad_input_is_one_line_user_error():
    s = _stats()
    for bad in (lambda: get_method("jrnp", alpha=1.5), lambda: get_method("jrnp", alpha=-0.1),
                lambda: Budget("fraction", 1.0), lambda: Budget("count", -1), lambda: Budget("kilos", 3),
                lambda: get_method("jrnp").select(s, Budget("count", 7)),  # 6 heads exist
                lambda: get_method("jrnp").select(s, Budget("count", 5)),  # would empty a layer
                lambda: get_method("jrnp").select(s, Budget("count", 3), "per_layer"),  # 3 over 2 layers
                lambda: get_method("jrnp").select(s, Budget("fraction", 0.9), "per_layer"),
                lambda: get_method("jrnp").select(s, Budget("fraction", 0.9)),  # 5 of 6 would empty a layer
                lambda: get_method("jrnp").select(s, Budget("count", 1), "sideways")):
        with pytest.raises(UserError) as e:
            bad()
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="did you mean jrnp"):
        get_method("jrpn")


def test_scores_read_stratify_head_stats():
    """The scores take r̄ = stratify's time-mean rank, n̄ its mean nuclear norm, d its bound."""
    # one context, B=N=1, L=2, H=3, positions t = 4, 8 (bound min(t, K, V) with K = V = 8)
    r = np.stack([RANK / 2, RANK], axis=-1)[None]  # time mean (trapezoid) = 0.75 * RANK
    n = np.stack([NORM, NORM], axis=-1)[None]
    dyn = {"threshold_rank": r, "nuclear_norm": n, "positions": np.array([4, 8]), "layers": np.array([0, 3]),
           "bound": np.array([4, 8]), "log_decay": np.zeros((1, 2, 3))}
    hs = head_stats(dyn)
    np.testing.assert_allclose(get_method("rank").score(hs), 0.75 * RANK / 8)
    np.testing.assert_allclose(get_method("norm").score(hs), NORM / 8)


# ---- mutation-audit additions: exact expectations computed by hand -------------------------------

def _stats_bounds(bound):
    z = np.zeros_like(RANK)
    return HeadStats(layers=np.array([0, 3]), mean_rank=RANK, final_rank=z, mean_nuclear=NORM,
                     bound=np.asarray(bound, float), log_decay=z, n_contexts=1)


def test_rank_divides_by_each_layers_own_bound():
    """d is min(T, K, V) per layer: a layer with smaller K·V divides by its own, smaller d."""
    s = _stats_bounds([4.0, 8.0])
    np.testing.assert_allclose(get_method("rank").score(s), [[0.25, 1.0, 0.5], [1.0, 0.375, 0.875]])
    # JRNP (α = 0.5): mean of that rank score and n/8
    np.testing.assert_allclose(get_method("jrnp").score(s),
                               [[0.25, 0.5625, 0.5], [0.6875, 0.6875, 0.75]])


def test_bytes_budget_stops_as_soon_as_it_is_met():
    s, hb = _stats(), (100, 200)
    m = get_method("jrnp")
    assert m.select(s, Budget("bytes", 200), head_bytes=hb) == [(3, 2)]  # 200 freed: exactly enough
    assert m.select(s, Budget("bytes", 0), head_bytes=hb) == []
    # 600 = every layer down to one head: (3,2) 200, (3,0) 400, (3,1) would empty layer 3, (0,2) 500, (0,1) 600
    assert m.select(s, Budget("bytes", 600), head_bytes=hb) == [(3, 2), (3, 0), (0, 2), (0, 1)]
    with pytest.raises(UserError, match="cannot free 601 bytes"):
        m.select(s, Budget("bytes", 601), head_bytes=hb)


def test_per_layer_bytes_takes_the_smallest_count_that_suffices():
    s, hb = _stats(), (100, 200)
    m = get_method("jrnp")
    # one head per layer frees 300 < 350: two per layer (600) are needed
    assert m.select(s, Budget("bytes", 350), "per_layer", hb) == [(0, 2), (0, 1), (3, 2), (3, 0)]
    assert m.select(s, Budget("bytes", 300), "per_layer", hb) == [(0, 2), (3, 2)]


def test_layer_counts_take_each_layers_highest_scores_whatever_the_ranking():
    s = _stats()
    m = get_method("jrnp")
    for ranking in ("global", "per_layer"):
        assert m.select(s, Budget("layer_counts", (2, 1)), ranking) == [(0, 2), (0, 1), (3, 2)]
        assert m.select(s, Budget("layer_counts", (0, 2)), ranking) == [(3, 2), (3, 0)]
    assert get_method("inverse").select(s, Budget("layer_counts", (1, 1))) == [(0, 0), (3, 0)]
    with pytest.raises(UserError):
        m.select(s, Budget("layer_counts", (1,)))
    with pytest.raises(UserError):
        m.select(s, Budget("layer_counts", (3, 0)))  # would empty layer 0


def test_count_and_bytes_budgets_must_be_integers():
    for kind in ("count", "bytes"):
        with pytest.raises(UserError, match="non-negative integer"):
            Budget(kind, 2.5)
        assert Budget(kind, 2.0).value == 2.0
    with pytest.raises(UserError):
        Budget("layer_counts", (1, -1))


def test_a_new_scoring_method_is_one_class():
    """A Scorer subclass with a name, defined anywhere, is a method get_method finds and select uses;
    an unnamed subclass does not replace its parent."""
    from dataclasses import dataclass
    from typing import ClassVar

    from staterank.prune import scores as S

    assert list(S.METHODS)[:5] == ["jrnp", "rank", "norm", "random", "inverse"]

    @dataclass(frozen=True)
    class LastHead(S.Scorer):
        name: ClassVar[str] = "last_head"

        def score(self, stats):
            r = np.zeros(np.shape(stats.mean_rank))
            r[:, -1] = 1.0
            return r

    @dataclass(frozen=True)
    class Unnamed(S.JRNP):
        pass

    try:
        assert S.METHODS["jrnp"] is S.JRNP
        m = S.get_method("last_head", alpha=0.3)  # params it does not take are ignored
        assert m.select(_stats(), S.Budget("count", 2)) == [(0, 2), (3, 2)]  # layers 0 and 3, last head
    finally:
        S.METHODS.pop("last_head", None)


def test_key_groups_removes_whole_groups_by_their_mean_score():
    from staterank.prune.scores import select

    # 2 layers (model indices 0 and 3), H_v = 6 in 3 groups of G = 2
    scores = np.array([[0.9, 0.0, 0.5, 0.5, 0.1, 0.2],   # group means 0.45, 0.5, 0.15
                       [0.0, 0.1, 0.3, 0.2, 0.8, 0.9]])  # 0.05, 0.25, 0.85
    hb = [64, 64]
    assert select(scores, Budget("fraction", 0.34), "key_groups", [0, 3], hb, group=2) == [(0, 2), (0, 3), (3, 4), (3, 5)]
    assert select(scores, Budget("count", 8), "key_groups", [0, 3], hb, group=2) == [
        (0, 2), (0, 3), (0, 0), (0, 1), (3, 4), (3, 5), (3, 2), (3, 3)]
    assert select(scores, Budget("bytes", 200), "key_groups", [0, 3], hb, group=2)[:2] == [(0, 2), (0, 3)]
    with pytest.raises(UserError, match="multiple of 4"):
        select(scores, Budget("count", 2), "key_groups", [0, 3], hb, group=2)
    with pytest.raises(UserError, match="keeps at least one"):
        select(scores, Budget("count", 12), "key_groups", [0, 3], hb, group=2)
    # G = 1 (Kimi, or layers of different G): single heads, the same as per_layer
    assert select(scores, Budget("count", 2), "key_groups", [0, 3], hb, group=1) == \
        select(scores, Budget("count", 2), "per_layer", [0, 3], hb)
