"""Head groups: tested groups by score, and random controls that are count-, layer- and
byte-matched and reproducible from the seed."""

import numpy as np
import pytest

from staterank.adapters import get_adapter
from staterank.errors import UserError
from staterank.probes.groups import (HeadSpace, by_score, byte_matched_group, group_size, layer_matched_group,
                                     make_groups, random_group, size)
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
