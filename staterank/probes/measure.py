"""The measurement: conditions (base, head groups, random controls per seed, single heads) × tasks
→ per-item rows, each condition's heads ablated in place while its items run. Finished items are
skipped, so a resumed run only runs what is missing.

Condition names: ``base`` (nothing ablated), a group name (``low``, ``random/s0``, ...; see
``groups.make_groups``), ``head/L{layer}.H{head}`` (one head alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..progress import say
from . import groups as G
from .ablate import ablate
from .itemlog import ItemLog

BASE = "base"
SINGLE = "head/"  # single-head conditions: "head/L{layer}.H{head}"


def _single_head_conditions(space: G.HeadSpace) -> dict[str, G.Group]:
    return {f"{SINGLE}L{li}.H{h}": {li: [h]} for li, h in space.flat()}


def conditions(space: G.HeadSpace, groups: Sequence[str], n: int, seeds: int, seed: int,
               norm_rank: np.ndarray | None, single_head: bool) -> dict[str, G.Group]:
    """{condition: {layer: [heads]}}: the base (nothing ablated), the groups of ``n`` heads
    (``norm_rank`` [L, H] picks low / high), and every head alone when ``single_head``."""
    conds: dict[str, G.Group] = {BASE: {}}
    conds.update(G.make_groups(space, groups, n, seeds, seed, norm_rank))
    if single_head:
        conds.update(_single_head_conditions(space))
    return conds


def measure(model, tok, task_items: list, conds: dict[str, G.Group], log: ItemLog, *, mode: str,
            means=None, adapter=None, batch_size: int = 16, single_limit: int | None = None) -> None:
    """Run every (task, items) of ``task_items`` under every condition, ``batch_size`` items at a
    time, appending each batch's rows to ``log``; single-head conditions run the first
    ``single_limit`` items (all when None)."""
    for task, items in task_items:
        for cond, group in conds.items():
            if cond.startswith(SINGLE):
                todo_items = items[: single_limit] if single_limit else items
            else:
                todo_items = items
            done = log.done(task.name, cond)
            todo = [it for it in todo_items if it.id not in done]
            if not todo:
                continue
            say(f"probe: {task.name} / {cond}: {len(todo)} items")
            step = max(1, batch_size)
            with ablate(model, group, mode, means=means, adapter=adapter):
                for s in range(0, len(todo), step):
                    batch = todo[s:s + step]
                    res = task.run(model, tok, batch)
                    log.append([{"task": task.name, "condition": cond, **r} for r in res])
