"""Head groups: tested groups by score, and random controls that are count-, layer- and
byte-matched and reproducible from the seed."""

import numpy as np
import pytest

from staterank.adapters import get_adapter
from staterank.errors import UserError
from staterank.probes.groups import (
    HeadSpace,
    by_score,
    byte_matched_group,
    group_size,
    layer_matched_group,
    make_groups,
    random_group,
    size,
)
from staterank.testing import tiny_model

# mixed layouts: layers differ in heads and in K·V, as in real hybrids after surgery
SPACE = HeadSpace(layers=(0, 1, 3, 5), heads=(8, 8, 6, 4), head_bytes=(4096, 4096, 16384, 8192))


def _pairs(g):
    return {(l, h) for l, hs in g.items() for h in hs}


def test_head_space_from_model():
    m = tiny_model("qwen3_next", h_v=4, k=8, v=12)
    sp = HeadSpace.of(get_adapter(m).linear_layers(m))
    assert sp.layers == (0, 1, 3) and sp.heads == (4, 4, 4) and sp.head_bytes == (8 * 12 * 4,) * 3


def test_group_size():
    assert group_size(SPACE) == round(26 * 7 / 18)
    assert group_size(SPACE, fraction=0.5) == 13
    assert group_size(SPACE, count=3) == 3
    with pytest.raises(UserError):
        group_size(SPACE, count=27)
    with pytest.raises(UserError):
        group_size(SPACE, fraction=0)


def test_by_score_picks_extremes_deterministically():
    rng = np.random.default_rng(0)
    scores = np.full((4, 8), np.nan)
    for i, n in enumerate(SPACE.heads):
        scores[i, :n] = rng.permutation(n) + 10 * i  # layer 0 lowest, layer 5 highest
    low = by_score(SPACE, scores, 5, lowest=True)
    high = by_score(SPACE, scores, 5, lowest=False)
    assert size(low) == size(high) == 5
    assert set(low) == {0} and set(high) == {5, 3}
    assert low[0] == sorted(int(h) for h in np.argsort(scores[0])[:5])
    with pytest.raises(UserError):
        by_score(SPACE, scores[:3], 5, lowest=True)


def test_random_groups_count_matched_and_reproducible():
    a = random_group(SPACE, 10, seed=7, draw=2)
    assert a == random_group(SPACE, 10, seed=7, draw=2)
    assert size(a) == 10 and len(_pairs(a)) == 10
    assert all(0 <= h < dict(zip(SPACE.layers, SPACE.heads))[l] for l, h in _pairs(a))
    draws = {tuple(sorted(_pairs(random_group(SPACE, 10, seed=7, draw=d)))) for d in range(5)}
    assert len(draws) == 5  # different draws differ
    assert random_group(SPACE, 10, seed=8) != random_group(SPACE, 10, seed=7)


def test_layer_matched_groups_remove_the_same_count_per_layer():
    target = {0: [1, 2, 3], 3: [0], 5: [0, 1, 2, 3]}
    for d in range(10):
        g = layer_matched_group(SPACE, target, seed=3, draw=d)
        assert {l: len(hs) for l, hs in g.items()} == {l: len(hs) for l, hs in target.items()}
        assert g == layer_matched_group(SPACE, target, seed=3, draw=d)
    assert len({str(layer_matched_group(SPACE, target, 3, d)) for d in range(10)}) > 1


def test_byte_matched_groups_match_bytes():
    target = {3: [0, 1], 5: [2]}  # 2·16384 + 8192 = 40960 bytes in 3 heads
    tb = SPACE.bytes_of(target)
    assert tb == 40960
    sizes = set()
    for d in range(20):
        g = byte_matched_group(SPACE, tb, seed=1, draw=d)
        assert SPACE.bytes_of(g) == tb
        assert g == byte_matched_group(SPACE, tb, seed=1, draw=d)
        sizes.add(size(g))
    assert len(sizes) > 1  # bytes are matched, not counts: small heads can stand in for big ones
    with pytest.raises(UserError):
        byte_matched_group(SPACE, 100, seed=1)


def test_make_groups_names_and_matching():
    scores = np.arange(32, dtype=float).reshape(4, 8)
    gs = make_groups(SPACE, ["low", "high", "random", "layer_random", "byte_random"], n=6, seeds=3, seed=0, scores=scores)
    assert {k for k in gs if "/" not in k} == {"low", "high"}
    assert sum(k.startswith("random/") for k in gs) == 3
    for t in ("low", "high"):
        for s in range(3):
            lr = gs[f"layer_random.{t}/s{s}"]
            assert {l: len(h) for l, h in lr.items()} == {l: len(h) for l, h in gs[t].items()}
            assert SPACE.bytes_of(gs[f"byte_random.{t}/s{s}"]) == SPACE.bytes_of(gs[t])
    assert all(size(g) == 6 for k, g in gs.items() if not k.startswith("byte_random"))
    assert gs == make_groups(SPACE, ["low", "high", "random", "layer_random", "byte_random"], 6, 3, 0, scores)
    with pytest.raises(UserError, match="matched to a tested group"):
        make_groups(SPACE, ["layer_random"], 6, 3, 0)
    with pytest.raises(UserError, match="unknown group"):
        make_groups(SPACE, ["lowest"], 6, 3, 0, scores)


# ---- mutation-audit additions: exact draws from the documented seed streams ----------------------
# Every random group is drawn from numpy.random.default_rng([seed, kind, draw]) with kind ids
# random = 1, layer_random = 2, byte_random = 3 (the module docstring's contract).

FLAT = [(l, h) for l, n in zip(SPACE.layers, SPACE.heads) for h in range(n)]  # 26 heads, layer by layer


def _group(pairs):
    g = {}
    for l, h in pairs:
        g.setdefault(int(l), []).append(int(h))
    return {l: sorted(hs) for l, hs in sorted(g.items())}


def test_by_score_ties_break_by_layer_then_head():
    flat_scores = np.zeros((4, 8))
    assert by_score(SPACE, flat_scores, 3, lowest=True) == {0: [0, 1, 2]}
    assert by_score(SPACE, flat_scores, 3, lowest=False) == {0: [0, 1, 2]}
    s = np.zeros((4, 8))
    s[2, 5] = s[3, 1] = 1.0  # (3,5) and (5,1) tie for highest: the earlier layer first
    assert by_score(SPACE, s, 1, lowest=False) == {3: [5]}
    assert by_score(SPACE, s, 2, lowest=False) == {3: [5], 5: [1]}
    s[1, 6] = -1.0  # head 6 of layer 1 is the lowest; then ties from the start
    assert by_score(SPACE, s, 2, lowest=True) == {0: [0], 1: [6]}


def test_random_group_is_the_documented_stream_and_uniform():
    for seed, draw in ((7, 2), (0, 0), (5, 1001)):
        idx = np.random.default_rng([seed, 1, draw]).choice(26, size=10, replace=False)
        assert random_group(SPACE, 10, seed, draw) == _group(FLAT[i] for i in idx)
    counts = {p: 0 for p in FLAT}
    for d in range(260):
        for p in _pairs(random_group(SPACE, 10, seed=11, draw=d)):
            counts[p] += 1
    # each head is in a draw with probability 10/26: 100 expected of 260 draws, sd ≈ 7.8
    assert min(counts.values()) > 60 and max(counts.values()) < 140


def test_layer_matched_group_is_the_documented_stream_and_stays_in_range():
    target = {5: [0, 1, 2, 3], 0: [1, 2, 3], 3: [0]}  # dict order must not matter
    n_of = dict(zip(SPACE.layers, SPACE.heads))
    for d in (0, 4, 1000):
        rng = np.random.default_rng([3, 2, d])
        want = {}
        for l in (0, 3, 5):
            want[l] = sorted(int(h) for h in rng.choice(n_of[l], size=len(target[l]), replace=False))
        assert layer_matched_group(SPACE, target, seed=3, draw=d) == want
    for d in range(30):
        g = layer_matched_group(SPACE, target, seed=9, draw=d)
        assert all(0 <= h < n_of[l] for l, hs in g.items() for h in hs)
        assert g[5] == [0, 1, 2, 3]  # all four heads of layer 5 (it has exactly four)


def test_byte_matched_group_is_the_documented_stream():
    # equal bytes per head: the first try succeeds with the first k heads of the permutation
    space = HeadSpace(layers=(0, 2), heads=(4, 4), head_bytes=(100, 100))
    flat = [(0, h) for h in range(4)] + [(2, h) for h in range(4)]
    for seed, draw in ((1, 0), (4, 7)):
        perm = np.random.default_rng([seed, 3, draw]).permutation(8)
        assert byte_matched_group(space, 300, seed, draw) == _group(flat[i] for i in perm[:3])


def test_make_groups_high_controls_draw_past_max_seeds():
    scores = np.arange(32, dtype=float).reshape(4, 8)
    kinds = ["low", "high", "random", "layer_random", "byte_random"]
    gs = make_groups(SPACE, kinds, n=6, seeds=2, seed=5, scores=scores)
    for s in range(2):
        assert gs[f"random/s{s}"] == random_group(SPACE, 6, 5, s)
        for t, draw in (("low", s), ("high", s + 1000)):
            assert gs[f"layer_random.{t}/s{s}"] == layer_matched_group(SPACE, gs[t], 5, draw)
            assert gs[f"byte_random.{t}/s{s}"] == byte_matched_group(SPACE, SPACE.bytes_of(gs[t]), 5, draw)


def test_group_size_rounds_to_nearest():
    assert group_size(SPACE, fraction=0.3) == 8  # 7.8 heads
    assert group_size(SPACE, fraction=0.01) == 1  # never empty
    assert group_size(SPACE, fraction=1.0) == 26


def test_byte_matched_group_follows_the_documented_rule_with_mixed_sizes():
    """'heads are taken in a random order while they fit; a fresh order is tried until the sum is
    exact' — replayed here from the same stream: a head that does not fit is skipped, never taken."""
    space = HeadSpace(layers=(0, 1), heads=(3, 3), head_bytes=(100, 300))
    flat = [(0, h) for h in range(3)] + [(1, h) for h in range(3)]
    b = [100] * 3 + [300] * 3
    for seed, draw, target in [(s, d, t) for s in range(4) for d in (0, 9) for t in (400, 500, 700)]:
        rng = np.random.default_rng([seed, 3, draw])
        want = None
        while want is None:
            left, pick = target, []
            for i in rng.permutation(6):
                if b[i] <= left:
                    pick.append(i)
                    left -= b[i]
                    if left == 0:
                        want = _group(flat[j] for j in pick)
                        break
        assert byte_matched_group(space, target, seed, draw) == want
