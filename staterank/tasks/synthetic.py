"""Synthetic in-context tasks: associative recall, variable-binding chains, addition."""

from __future__ import annotations

import functools
import hashlib
import random
import string

from ..errors import UserError
from . import Item, is_eval_seed

_LETTERS = string.ascii_lowercase


def _rng(task: str, seed: int) -> random.Random:
    # str seeds are hashed with sha512 by random.seed: stable across runs and Python versions
    return random.Random(f"{task}:{seed}")


def mqar(n: int, seed: int, n_pairs: int = 8, n_queries: int = 4) -> list[Item]:
    """Key=value pairs, then several queries; the last query's value is the answer.

    Keys are distinct 2-letter strings, values 2-digit numbers. Earlier queries are answered in the
    prompt (multi-query), the last one is scored.
    """
    if not 1 <= n_queries <= n_pairs:
        raise ValueError("need 1 <= n_queries <= n_pairs")
    rng = _rng("mqar", seed)
    items = []
    for i in range(n):
        keys: list[str] = []
        while len(keys) < n_pairs:
            k = rng.choice(_LETTERS) + rng.choice(_LETTERS)
            if k not in keys:
                keys.append(k)
        vals = [str(rng.randint(10, 99)) for _ in keys]
        kv = dict(zip(keys, vals))
        q = rng.sample(keys, n_queries)
        prompt = "Pairs: " + ", ".join(f"{k}={v}" for k, v in kv.items()) + ".\nQueries: "
        prompt += "".join(f"{k}={kv[k]}, " for k in q[:-1]) + f"{q[-1]}="
        items.append(Item(f"mqar-{seed}-{i}", prompt, kv[q[-1]], {"n_pairs": n_pairs, "n_queries": n_queries}))
    return items


def multihop(n: int, seed: int, hops: int = 2, n_distractors: int = 2) -> list[Item]:
    """Variable binding: ``a=5; b=a; c=b. c=?`` with ``hops`` copy steps and distractor chains.

    Statements of all chains are interleaved at random but each chain keeps its order, so a
    variable is always defined before it is used.
    """
    n_chains = 1 + n_distractors
    if n_chains * (hops + 1) > len(_LETTERS):
        raise ValueError("too many variables for 26 letters")
    rng = _rng("multihop", seed)
    items = []
    for i in range(n):
        names = rng.sample(_LETTERS, n_chains * (hops + 1))
        chains = []
        for c in range(n_chains):
            vs = names[c * (hops + 1):(c + 1) * (hops + 1)]
            stmts = [f"{vs[0]}={rng.randint(0, 9)}"] + [f"{vs[j]}={vs[j - 1]}" for j in range(1, hops + 1)]
            chains.append(stmts)
        answer = chains[0][0].split("=")[1]
        target = names[hops]
        order = [c for c in range(n_chains) for _ in range(hops + 1)]
        rng.shuffle(order)
        pos = [0] * n_chains
        out = []
        for c in order:
            out.append(chains[c][pos[c]])
            pos[c] += 1
        prompt = "Vars: " + "; ".join(out) + f". {target}=?"
        items.append(Item(f"multihop-{seed}-{i}", prompt, answer, {"hops": hops, "n_distractors": n_distractors}))
    return items


def _arith_heldout(a: int, b: int) -> bool:
    # A fixed tenth of all problems is never used for training (seeds < 10**9 skip it). Hashing the
    # unordered pair keeps the split independent of the answer (an arithmetic rule such as
    # (31a + b) % 10 == 0 is a + b = 0 mod 10: every held-out sum would end in a digit training never
    # shows) and holds out b+a together with a+b.
    key = f"{min(a, b)}+{max(a, b)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10 == 0


@functools.lru_cache(maxsize=4)
def _heldout_pool(digits: int) -> int:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return sum(_arith_heldout(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1))


def arith(n: int, seed: int, digits: int = 2) -> list[Item]:
    """``a+b=`` with two ``digits``-digit numbers. Eval seeds draw only held-out problems, each at
    most once (a greedy model answers a repeated prompt the same way: repeats are not independent
    items, and the held-out pool is small: 761 ordered problems for 2 digits)."""
    rng = _rng("arith", seed)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    want_heldout = is_eval_seed(seed)
    if want_heldout:
        pool = _heldout_pool(digits)
        if n > pool:
            raise UserError(f"addition has {pool} held-out {digits}-digit problems; asked for {n} items")
    items, seen = [], set()
    while len(items) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if _arith_heldout(a, b) != want_heldout or (want_heldout and (a, b) in seen):
            continue
        seen.add((a, b))
        items.append(Item(f"arith-{seed}-{len(items)}", f"{a}+{b}=", str(a + b), {"digits": digits}))
    return items


def arith_modal_share(digits: int = 2) -> float:
    """Accuracy of always answering the commonest sum of the evaluation (held-out) problems: the
    best constant guess on them, an upper bound of what a model without addition scores (no model
    can know that mode, so this errs towards "no skill to lose"; the training split's commonest sum,
    110, scores 0.003 there, the overall one, 109, 0.008)."""
    from collections import Counter

    lo, hi = 10 ** (digits - 1), 10**digits - 1
    sums = Counter(a + b for a in range(lo, hi + 1) for b in range(lo, hi + 1) if _arith_heldout(a, b))
    return max(sums.values()) / sum(sums.values())
