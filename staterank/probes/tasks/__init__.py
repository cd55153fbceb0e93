"""What a probe measures: per-item results that can be paired across ablation conditions.

A ``ProbeTask`` builds its items once (deterministic in ``seed``) and runs a batch of them on a
model, returning one dict per item with ``id`` and either ``correct`` (accuracy tasks) or ``nll``
and ``tokens`` (perplexity). The runner appends those dicts to ``items.jsonl`` as they come, so an
interrupted probe resumes item by item.

Tasks: the built-in generators (``staterank.tasks``: niah as a context-length × depth grid, mqar,
multihop, arith; scored by ``tasks.evaluate.evaluate``), GSM8K (chat template when the tokenizer
has one, greedy, final-number exact match) and perplexity on held-out prose.

One module per task family registers its names (``base.register``); ``make_task(name, ...)``
looks them up. ``FAMILIES`` lists those modules in registration order, the order ``TASK_NAMES``
and ``PROBE_TASKS`` (``staterank ls``) show: a new family's module goes at its end
(docs/adding-a-probe-task.md).
"""

from __future__ import annotations

import importlib

from . import base
from .base import (
    PROBE_TASKS,
    REGISTRY,
    BuiltinTask,
    ProbeTask,
    TaskOptions,
    TaskSpec,
    check_seed,
    make_task,
    register,
    task_names,
    unregister,
)

# one module per task family; importing them in this order registers their names in this order,
# which is TASK_NAMES' order (niah, then mqar, multihop, arith, then gsm8k, ppl)
FAMILIES = ("niah", "builtin", "gsm8k", "ppl")
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

from .builtin import GENERATORS  # noqa: E402
from .gsm8k import GSM8K_INSTRUCTION, Gsm8kTask, extract_final_number, gsm8k_gold, load_gsm8k, normalize_number, strip_thinking  # noqa: E402
from .niah import NiahTask  # noqa: E402
from .ppl import PerplexityTask  # noqa: E402


def __getattr__(attr: str):  # TASK_NAMES follows the registry (PEP 562)
    if attr == "TASK_NAMES":
        return task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["PROBE_TASKS", "REGISTRY", "TASK_NAMES", "BuiltinTask", "GENERATORS", "GSM8K_INSTRUCTION",
           "FAMILIES", "Gsm8kTask", "NiahTask", "PerplexityTask", "ProbeTask", "TaskOptions", "TaskSpec", "base",
           "check_seed", "extract_final_number", "gsm8k_gold", "load_gsm8k", "make_task", "normalize_number",
           "register", "strip_thinking", "task_names", "unregister"]
