"""Which heads to ablate: the tested groups (lowest / highest score) and their random controls.

A group is ``{model layer index: [value heads]}``. Heads are addressed in a flat order over
``HeadSpace`` (layer by layer, head by head). Every random group is drawn from
``numpy.random.default_rng([seed, kind, draw])``, so the same seed gives the same heads.

Controls (the same size as the tested group: in heads, except byte_random, in state bytes):
  random        any heads, uniformly (count-matched)
  layer_random  per layer, as many heads as the tested group removes from that layer (layer
                position is a confounder: early short-memory heads can matter most)
  byte_random   random heads whose recurrent state has the same bytes (K·V·dtype per head) as the
                tested group's; differs from count matching only when layers differ in K·V
Shapes: L linear layers, H value heads per layer (may differ by layer; scores padded with NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..adapters import LinearLayer
from ..errors import UserError

DEFAULT_FRACTION = 7 / 18  # the paper's pruning ratio
_KIND_ID = {"random": 1, "layer_random": 2, "byte_random": 3}
MAX_SEEDS = 1000  # high's controls draw at s + MAX_SEEDS: more seeds would reuse low's draws
Group = dict[int, list[int]]


@dataclass(frozen=True)
class HeadSpace:
    """Layer indices [L], value heads per layer [L] and state bytes per head per layer [L]."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    head_bytes: tuple[int, ...]

    @classmethod
    def of(cls, layers: Sequence[LinearLayer], dtype_bytes: int = 4) -> HeadSpace:
        """From ``adapter.linear_layers(model)``; the recurrent state is fp32 (4 bytes) in the
        reference kernels."""
        return cls(tuple(l.index for l in layers), tuple(l.layout.h_v for l in layers),
                   tuple(l.layout.k * l.layout.v * dtype_bytes for l in layers))

    @property
    def total(self) -> int:
        return sum(self.heads)

    def flat(self) -> list[tuple[int, int]]:
        """Every (layer index, head) in order."""
        return [(li, h) for li, n in zip(self.layers, self.heads) for h in range(n)]

    def group_of(self, pairs) -> Group:
        g: Group = {}
        for li, h in pairs:
            g.setdefault(int(li), []).append(int(h))
        return {li: sorted(hs) for li, hs in sorted(g.items())}

    def bytes_of(self, group: Group) -> int:
        per = dict(zip(self.layers, self.head_bytes))
        return sum(per[li] * len(hs) for li, hs in group.items())


def size(group: Group) -> int:
    return sum(len(hs) for hs in group.values())


def group_size(space: HeadSpace, fraction: float | None = None, count: int | None = None) -> int:
    """Number of heads in a group: ``count``, else round(fraction · all heads) (default 7/18)."""
    if count is not None:
        if not 1 <= count <= space.total:
            raise UserError(f"--count must be in 1..{space.total} (heads in the model), got {count}")
        return int(count)
    fraction = DEFAULT_FRACTION if fraction is None else fraction
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    return max(1, int(round(fraction * space.total)))


def by_score(space: HeadSpace, scores: np.ndarray, n: int, lowest: bool) -> Group:
    """The ``n`` heads with the lowest (or highest) score. scores: [L, max H] (NaN = no head).
    Ties break by (layer, head) so the group is deterministic."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] != len(space.layers) or scores.shape[1] < max(space.heads):
        raise UserError(f"scores have shape {scores.shape}; the model has {len(space.layers)} linear layers "
                        f"with up to {max(space.heads)} heads")
    flat = space.flat()
    vals = np.array([scores[i, h] for i, n_h in enumerate(space.heads) for h in range(n_h)])
    if not np.isfinite(vals).all():
        raise UserError("scores contain NaN/inf for existing heads")
    key = vals if lowest else -vals
    order = np.lexsort((np.arange(len(flat)), key))  # primary: score; secondary: flat position
    return space.group_of(flat[i] for i in order[:n])


def random_group(space: HeadSpace, n: int, seed: int, draw: int = 0) -> Group:
    rng = np.random.default_rng([seed, _KIND_ID["random"], draw])
    flat = space.flat()
    return space.group_of(flat[i] for i in rng.choice(len(flat), size=n, replace=False))


def layer_matched_group(space: HeadSpace, target: Group, seed: int, draw: int = 0) -> Group:
    """Random heads, the same number from each layer as ``target`` (drawn uniformly within the
    layer, so they may overlap the target: the control is 'any k heads of this layer')."""
    rng = np.random.default_rng([seed, _KIND_ID["layer_random"], draw])
    n_of = dict(zip(space.layers, space.heads))
    pairs = []
    for li in sorted(target):  # fixed order: reproducible whatever the dict order
        pairs += [(li, h) for h in rng.choice(n_of[li], size=len(target[li]), replace=False)]
    return space.group_of(pairs)


def byte_matched_group(space: HeadSpace, target_bytes: int, seed: int, draw: int = 0, tries: int = 1000) -> Group:
    """Random heads whose state bytes sum to exactly ``target_bytes``: heads are taken in a random
    order while they fit; a fresh order is tried until the sum is exact."""
    rng = np.random.default_rng([seed, _KIND_ID["byte_random"], draw])
    flat = space.flat()
    per = dict(zip(space.layers, space.head_bytes))
    b = np.array([per[li] for li, _ in flat])
    for _ in range(tries):
        left, pick = target_bytes, []
        for i in rng.permutation(len(flat)):
            if b[i] <= left:
                pick.append(i)
                left -= b[i]
                if left == 0:
                    return space.group_of(flat[j] for j in pick)
    raise UserError(f"no random set of heads has exactly {target_bytes} state bytes")


KINDS = ("low", "high", "random", "layer_random", "byte_random")


def check_kinds(kinds: Sequence[str], seeds: int = 1) -> None:
    """One-line UserError for unknown group kinds, matched controls without a tested group, seeds
    outside 1..MAX_SEEDS."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UserError(f"unknown group(s) {bad}; choose from {', '.join(KINDS)}")
    for kind in ("layer_random", "byte_random"):
        if kind in kinds and not any(t in kinds for t in ("low", "high")):
            raise UserError(f"{kind} is matched to a tested group: add low and/or high to --groups")
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be in 1..{MAX_SEEDS}, got {seeds}")


def make_groups(space: HeadSpace, kinds: Sequence[str], n: int, seeds: int, seed: int,
                scores: np.ndarray | None = None) -> dict[str, Group]:
    """Conditions by name: "low", "high", "random/s{i}", "layer_random.{low|high}/s{i}",
    "byte_random.{low|high}/s{i}" (controls matched to each tested group present; with no tested
    group, ``layer_random`` / ``byte_random`` are meaningless and rejected)."""
    check_kinds(kinds, seeds)
    out: dict[str, Group] = {}
    tested = [k for k in ("low", "high") if k in kinds]
    if tested and scores is None:
        raise UserError("low/high groups need per-head scores")
    for k in tested:
        out[k] = by_score(space, scores, n, lowest=(k == "low"))
    if "random" in kinds:
        for s in range(seeds):
            out[f"random/s{s}"] = random_group(space, n, seed, s)
    for kind in ("layer_random", "byte_random"):
        if kind not in kinds:
            continue
        for t in tested:
            for s in range(seeds):
                # draw index distinct per matched group so low's and high's controls are independent
                draw = s + MAX_SEEDS * (t == "high")
                out[f"{kind}.{t}/s{s}"] = (layer_matched_group(space, out[t], seed, draw) if kind == "layer_random"
                                           else byte_matched_group(space, space.bytes_of(out[t]), seed, draw))
    return out


def family(condition: str) -> str:
    """'random/s3' -> 'random'; 'low' -> 'low'."""
    return condition.split("/", 1)[0]
