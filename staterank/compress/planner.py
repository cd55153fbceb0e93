"""Storage plans for a byte budget: which heads to remove, which to keep at which precision.

A plan is {(model layer index, value head): precision} (``quant.PRECISIONS``; a head not named is
fp32). Its bytes are Σ over heads of ``quant.head_bytes`` (K·V·bytes per element + fp32 scales), the
recurrent state one sequence keeps; budgets are shares of the all-fp32 total.

  pruning-only    heads in a method's order (prune.scores: higher score first, as prune removes them)
                  are dropped until the plan fits; never the last head of a layer (as prune)
  precision-only  the same order walks down a ladder (default bf16, then int8_head): every head to
                  the first rung in order, then to the next, until the plan fits; None if even the
                  last rung everywhere does not fit (int8 with a per-head scale is 25.1 % of fp32 at
                  K = V = 32, so it cannot meet 25 %)
  mixed           :func:`knapsack`: per head one option (fp32, a measured precision, or drop)
                  minimising the sum of measured per-head costs (the sensitivity table's ΔNLL,
                  clipped at 0) under the budget; exact dynamic programme over bytes. The cost model is
                  additive (heads measured one at a time); interactions are what the evaluation tests.
  random controls :func:`shuffled`: the same multiset of per-head precisions on randomly chosen heads
                  (the same bytes when every head has the same K·V), no layer left without heads;
                  or layer-matched: each layer's precisions on random heads of that layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from .quant import head_bytes

Head = tuple[int, int]


def heads_of(layers) -> list[tuple[int, int, int, int]]:
    """(layer index, head, K, V) of every value head of ``layers`` (adapter.linear_layers)."""
    return [(l.index, h, l.layout.k, l.layout.v) for l in layers for h in range(l.layout.h_v)]


def plan_bytes(plan: dict[Head, str], heads) -> int:
    return sum(head_bytes(plan.get((li, h), "fp32"), k, v) for li, h, k, v in heads)


def full_bytes(heads) -> int:
    return sum(head_bytes("fp32", k, v) for _, _, k, v in heads)


def method_order(scores: np.ndarray, layers: Sequence[int], h_v: Sequence[int]) -> list[Head]:
    """Heads by descending score [L, H] (ties by layer, head), as prune.scores ranks removals."""
    flat = np.asarray(scores, dtype=float).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    H = scores.shape[1]
    return [(int(layers[i // H]), int(i % H)) for i in order if i % H < h_v[i // H]]


def _last_in_layer(plan: dict[Head, str], head: Head, heads) -> bool:
    alive = [h for li, h, _, _ in heads if li == head[0] and plan.get((li, h), "fp32") != "drop"]
    return alive == [head[1]]


def ladder(order: list[Head], heads, rungs: Sequence[str], budget: int) -> dict[Head, str] | None:
    """Walk ``order`` down ``rungs`` until the plan's bytes <= ``budget``; None if it never fits."""
    plan: dict[Head, str] = {}
    if plan_bytes(plan, heads) <= budget:
        return plan
    for rung in rungs:
        for hd in order:
            if rung == "drop" and _last_in_layer(plan, hd, heads):
                continue
            plan[hd] = rung
            if plan_bytes(plan, heads) <= budget:
                return dict(sorted(plan.items()))
    return None


def knapsack(costs: dict[Head, dict[str, float]], heads, budget: int) -> dict[Head, str] | None:
    """Per head the option (``costs[head]``'s keys; fp32 at cost 0 always) minimising Σ max(cost, 0)
    with Σ bytes <= ``budget``; exact DP over bytes in units of their gcd. None if nothing fits."""
    opts = []
    for li, h, k, v in heads:
        c = {"fp32": 0.0, **{p: max(0.0, float(x)) for p, x in costs.get((li, h), {}).items() if math.isfinite(x)}}
        opts.append([(p, head_bytes(p, k, v), x) for p, x in sorted(c.items())])
    unit = math.gcd(*[b for o in opts for _, b, _ in o if b > 0]) or 1
    cap = budget // unit
    if sum(min(b for _, b, _ in o) for o in opts) // unit > cap:
        return None
    inf = float("inf")
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    choice = np.zeros((len(opts), cap + 1), dtype=np.int16)
    for i, o in enumerate(opts):
        new = np.full(cap + 1, inf)
        for j, (_, b, x) in enumerate(o):
            w = b // unit
            if w > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[w:] = dp[: cap + 1 - w] + x
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = j
        dp = new
    end = int(np.argmin(dp))  # lowest cost; ties -> fewest bytes
    if not np.isfinite(dp[end]):
        return None
    plan = {}
    for i in range(len(opts) - 1, -1, -1):
        p, b, _ = opts[i][choice[i, end]]
        if p != "fp32":
            plan[(heads[i][0], heads[i][1])] = p
        end -= b // unit
    return dict(sorted(plan.items()))


def shuffled(plan: dict[Head, str], heads, seed: int, within_layer: bool = False, tries: int = 1000) -> dict[Head, str]:
    """The plan's per-head precisions (fp32 included) on a random permutation of the heads (count- and,
    with equal K·V, byte-matched), or of each layer's heads (``within_layer``: layer-matched too),
    redrawn until no layer loses all its heads (when the plan itself keeps one in every layer)."""
    rng = np.random.default_rng(seed)
    keys = [(li, h) for li, h, _, _ in heads]
    vals = [plan.get(k, "fp32") for k in keys]
    layers = {li for li, _ in keys}
    if within_layer:
        out: dict[Head, str] = {}
        for li in sorted(layers):
            idx = [i for i, k in enumerate(keys) if k[0] == li]
            perm = rng.permutation(len(idx))
            out.update({keys[idx[i]]: vals[idx[j]] for i, j in enumerate(perm)})
        return dict(sorted((k, p) for k, p in out.items() if p != "fp32"))

    def every_layer_kept(p: dict) -> bool:
        return all(any(p.get(k, "fp32") != "drop" for k in keys if k[0] == li) for li in layers)

    need = every_layer_kept(plan)
    for _ in range(tries):
        perm = rng.permutation(len(keys))
        out = {keys[i]: vals[j] for i, j in zip(range(len(keys)), perm)}
        if not need or every_layer_kept(out):
            return dict(sorted((k, p) for k, p in out.items() if p != "fp32"))
    raise UserError(f"no random control keeps a head in every layer after {tries} draws")


def to_json(plan: dict[Head, str]) -> list[list]:
    return [[li, h, p] for (li, h), p in sorted(plan.items())]


def from_json(rows: list[list]) -> dict[Head, str]:
    return {(int(li), int(h)): str(p) for li, h, p in rows}
