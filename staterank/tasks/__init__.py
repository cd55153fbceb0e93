"""Built-in in-context tasks: generators of prompts with short exact answers, and their registry.

Every task is ``generate(n, seed, **params) -> list[Item]``, deterministic in ``seed``. A prediction
is the greedy continuation's first line, stripped, reduced to its leading integer when it starts with
one (:func:`extract_answer`); it is correct iff it equals ``item.answer`` exactly (:func:`score`).

Seeds: the built-in model's training used seeds < 10**6 (``TRAIN_SEED_LIMIT``); evaluation uses seeds
>= 10**9 (``EVAL_SEED_BASE``). Seeds >= 10**9 also switch generators to held-out material: the held-out
10 % of every prose file for haystacks and the held-out tenth of addition problems.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserError

_LEADING_INT = re.compile(r"-?\d+(?!\d|[.,]\d)")  # a whole integer: not the start of 12.5 or 1,000

TRAIN_SEED_LIMIT = 10**6
EVAL_SEED_BASE = 10**9


@dataclass
class Item:
    id: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


@dataclass
class Task:
    name: str
    description: str
    generate: Callable[..., list[Item]]
    chance: float  # accuracy without the task's skill (see TASKS), for "beats chance" / "skill to lose" checks
    default_params: dict = field(default_factory=dict)


def is_eval_seed(seed: int) -> bool:
    return seed >= EVAL_SEED_BASE


def extract_answer(continuation: str) -> str:
    """The prediction: the continuation up to the first newline, stripped; when that starts with a
    number, the number alone. Every answer here is an integer, and a model not trained on the exact
    format goes on after it ("8328." copying the needle's period, "66, dx=…" continuing the queries):
    the whole digit run counts, so "83281" is still not "8328", and "110.5" or "1,000" are not integers."""
    line = continuation.split("\n", 1)[0].strip()
    m = _LEADING_INT.match(line)
    return m.group(0) if m else line


# Bumped whenever how a prediction is read changes: resumed runs must not mix rows scored two ways.
SCORING = "leading-integer-3"


def items_digest(items_by_task: dict) -> str:
    """16 hex digits over every item (task, id, prompt, answer, meta) and ``SCORING``: a run folder
    records it, so resuming with items that changed under the same ids is refused, not mixed."""
    import hashlib
    import json

    blob = json.dumps({"scoring": SCORING, "items": {str(t): [[it.id, it.prompt, it.answer, it.meta] for it in its]
                                                     for t, its in items_by_task.items()}},
                      sort_keys=True)  # no default=str: a meta that is not plain JSON must fail, not hash loosely
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def score(pred: str, answer: str) -> bool:
    """Exact match after stripping both sides."""
    return pred.strip() == answer.strip()


from .niah import niah, niah_grid  # noqa: E402
from .synthetic import arith, arith_modal_share, mqar, multihop  # noqa: E402


def _set_partitions(n: int):
    """Every partition of range(n) into blocks (Bell(n) of them; n <= 8 here)."""
    def rec(i, blocks):
        if i == n:
            yield [list(b) for b in blocks]
            return
        for b in blocks:
            b.append(i)
            yield from rec(i + 1, blocks)
            b.pop()
        blocks.append([i])
        yield from rec(i + 1, blocks)
        blocks.pop()
    yield from rec(0, [])


def _copy_guess(candidates: int, values: int) -> float:
    """Accuracy of the best guess that copies a value from the prompt without binding: ``candidates``
    values, each uniform over ``values`` and independent, one of them the answer. Copying one at random
    gets (1 + (c − 1)/v)/c; copying the commonest of them (ties at random) gets more, since the answer's
    value is more likely to be among repeated ones. Exact, by summing over which candidates share a
    value (set partitions): the larger of the two."""
    from fractions import Fraction

    c, v = candidates, values
    mode = Fraction(0)
    for blocks in _set_partitions(c):
        k = len(blocks)
        p = Fraction(1)
        for j in range(k):  # k distinct values, in the pattern of the blocks
            p *= Fraction(v - j, v)
        p /= Fraction(v) ** (c - k)
        sizes = [len(b) for b in blocks]
        top = max(sizes)
        if len(blocks[0]) == top:  # block 0 holds the answer (candidate 0)
            mode += p / sizes.count(top)
    return float(max(mode, (1 + Fraction(c - 1, v)) / c))


# "chance" is the best guess that needs no skill, not a uniform guess over all answers: MQAR's last
# query is one of the 8 - 3 = 5 pairs not already answered in the prompt, with values in 10..99 (90);
# multihop's answer is one of the 3 chains' root digits (0..9); for addition, the best constant
# answer on the held-out problems; NIAH's needle is a uniform 4-digit number.
TASKS: dict[str, Task] = {
    "niah": Task("niah", "single needle (4-digit magic number) in public-domain prose", niah, 1 / 9000,
                 {"context_tokens": 256, "depth": 0.5}),
    "mqar": Task("mqar", "multi-query associative recall over key=value pairs", mqar, _copy_guess(8 - (4 - 1), 90),
                 {"n_pairs": 8, "n_queries": 4}),
    "multihop": Task("multihop", "variable binding chains a=5; b=a; c=b; c=?", multihop, _copy_guess(3, 10),
                     {"hops": 2, "n_distractors": 2}),
    "arith": Task("arith", "addition of two 2-digit numbers", arith, arith_modal_share(2), {"digits": 2}),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}") from None


__all__ = ["Item", "Task", "TASKS", "get_task", "score", "extract_answer", "items_digest", "SCORING", "niah_grid",
           "TRAIN_SEED_LIMIT", "EVAL_SEED_BASE", "is_eval_seed"]


def train_text(item: Item) -> str:
    """Prompt followed by its answer, as seen in training (NIAH joins them with a space)."""
    return item.prompt + item.meta.get("join", "") + item.answer
