"""The probe-task base classes and registry: ``make_task(name, ...)`` looks ``name`` up here.

``ProbeTask`` is the interface; ``BuiltinTask`` a task whose items come from a ``staterank.tasks``
generator (mqar, multihop, arith; ``NiahTask`` extends it), scored by ``tasks.evaluate.evaluate``.

A task family registers one builder per name with ``@register(name, description)``; the builder
takes the ``TaskOptions`` of ``make_task`` and returns a ``ProbeTask``. Registration order is the
order of ``TASK_NAMES`` (``staterank ls``, ``--tasks`` help, the unknown-name error).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import UserError
from ...tasks import EVAL_SEED_BASE, Item, get_task


class ProbeTask:
    """Base: ``items(tokenizer)`` once, then ``run(model, tokenizer, items)`` in batches."""

    name: str = ""
    metric: str = "accuracy"  # or "perplexity"

    def items(self, tokenizer) -> list[Item]:
        raise NotImplementedError

    def run(self, model, tokenizer, items: list[Item]) -> list[dict]:
        raise NotImplementedError


@dataclass
class BuiltinTask(ProbeTask):
    """A generator from ``staterank.tasks`` at its default parameters, on evaluation seeds."""

    name: str
    limit: int = 100
    seed: int = 0
    max_new_tokens: int = 8
    batch_size: int = 16

    def items(self, tokenizer) -> list[Item]:
        t = get_task(self.name)
        return t.generate(self.limit, EVAL_SEED_BASE + self.seed, **t.default_params)

    def run(self, model, tokenizer, items):
        from ...tasks.evaluate import evaluate

        return evaluate(model, tokenizer, items, self.max_new_tokens, self.batch_size)


@dataclass(frozen=True)
class TaskOptions:
    """What ``make_task`` was given, checked (limit >= 1 or None, seed >= 0, data_dir exists)."""

    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    data_dir: Any = None
    niah_lengths: Sequence[int] | None = None
    niah_depths: Sequence[float] | None = None
    max_new_tokens: int | None = None
    n_shot: int = 0

    def common(self) -> dict:
        """Keyword arguments every generative task takes: seed, and limit / max_new_tokens when given
        (a task's own defaults otherwise)."""
        kw: dict = {"seed": self.seed}
        if self.limit is not None:
            kw["limit"] = self.limit
        if self.max_new_tokens is not None:
            kw["max_new_tokens"] = self.max_new_tokens
        return kw


Builder = Callable[[TaskOptions], ProbeTask]


@dataclass(frozen=True)
class TaskSpec:
    """One registered probe task: ``build(options)`` makes it; ``description`` is its line in
    ``staterank ls``; ``chance`` the accuracy without the skill, when known (None: unknown)."""

    name: str
    description: str
    build: Builder
    chance: float | None = None


REGISTRY: dict[str, TaskSpec] = {}
PROBE_TASKS: dict[str, str] = {}  # name -> one line, for `staterank ls`; kept in step with REGISTRY


def register(name: str, description: str, chance: float | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(options) -> ProbeTask`` as probe task ``name``. A name already
    registered is an error (remove it first with ``unregister``)."""

    def deco(build: Builder) -> Builder:
        if name in REGISTRY:
            raise ValueError(f"probe task {name!r} is already registered")
        REGISTRY[name] = TaskSpec(name, description, build, chance)
        PROBE_TASKS[name] = description
        return build

    return deco


def unregister(name: str) -> None:
    """Remove probe task ``name`` (tests registering toy tasks clean up with it)."""
    REGISTRY.pop(name, None)
    PROBE_TASKS.pop(name, None)


def task_names() -> tuple[str, ...]:
    """Registered probe task names, in registration order (also ``TASK_NAMES``)."""
    return tuple(REGISTRY)


def __getattr__(attr: str):  # TASK_NAMES follows the registry (PEP 562)
    if attr == "TASK_NAMES":
        return task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def check_seed(seed) -> None:
    """One-line UserError unless ``seed`` is a whole number >= 0 (eval items are drawn at
    EVAL_SEED_BASE + seed: a negative seed would reach training items)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"--seed must be a whole number >= 0, got {seed!r}")


def make_task(name: str, *, limit: int | None = None, seed: int = 0, batch_size: int = 16, data_dir=None,
              niah_lengths: Sequence[int] | None = None, niah_depths: Sequence[float] | None = None,
              max_new_tokens: int | None = None, n_shot: int = 0) -> ProbeTask:
    """A probe task by name, with its default item count unless ``limit`` is given. ``data_dir``
    (prose for niah / ppl, gsm8k/*.jsonl for gsm8k) must exist when given."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    from ...data import check_given

    check_seed(seed)
    check_given(data_dir)
    spec = REGISTRY.get(name)
    if spec is None:
        import difflib

        names = task_names()
        hint = difflib.get_close_matches(name, names, n=1)
        raise UserError(f"unknown probe task {name!r}{f' (did you mean {hint[0]}?)' if hint else ''}; "
                        f"choose from {', '.join(names)} (any lm-eval task: staterank.probes.lmeval)")
    return spec.build(TaskOptions(limit=limit, seed=seed, batch_size=batch_size, data_dir=data_dir,
                                  niah_lengths=niah_lengths, niah_depths=niah_depths,
                                  max_new_tokens=max_new_tokens, n_shot=n_shot))


def _number(x, msg: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise UserError(f"{msg}, got {x!r}") from None


def _whole(x) -> int:
    """A NIAH length as an int: 256 and 256.0 pass, 25.5 is refused (one line); the range is
    checked by ``NiahTask``."""
    msg = "NIAH context lengths must be whole numbers of tokens >= 1"
    f = _number(x, msg)
    if not f.is_integer():
        raise UserError(f"{msg}, got {x!r}")
    return int(f)
