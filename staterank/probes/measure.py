"""The measurement: conditions (base, head groups, random controls per seed, single heads) × tasks
→ per-item rows, each condition's heads ablated in place while its items run. Finished items are
skipped, so a resumed run only runs what is missing.

Condition names: ``base`` (nothing ablated), a group name (``low``, ``random/s0``, ...; see
``groups.make_groups``), ``head/L{layer}.H{head}`` (one head alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import distributed
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


def _todo_items(cond: str, items: list, single_limit: int | None) -> list:
    return items[: single_limit] if cond.startswith(SINGLE) and single_limit else items


def item_order(task_items: list, conds: dict[str, G.Group], single_limit: int | None) -> list[tuple[str, str, str]]:
    """(task, condition, item id) in the order one process measures (and logs) them."""
    return [(task.name, cond, it.id) for task, items in task_items for cond in conds
            for it in _todo_items(cond, items, single_limit)]


def measure(model, tok, task_items: list, conds: dict[str, G.Group], log: ItemLog, *, mode: str,
            means=None, adapter=None, batch_size: int = 16, single_limit: int | None = None) -> None:
    """Run every (task, items) of ``task_items`` under every condition, ``batch_size`` items at a
    time, appending each batch's rows to ``log``; single-head conditions run the first
    ``single_limit`` items (all when None).

    Batches are cut from the full item list (a resumed run skips finished items inside them), so a
    batch holds the same items whoever runs it; under torchrun batch b of the whole run (counted over
    tasks and conditions) is rank b % world size's (``distributed.owns``)."""
    rank = distributed.world()
    step = max(1, batch_size)
    b = -1
    for task, items in task_items:
        for cond, group in conds.items():
            todo_items = _todo_items(cond, items, single_limit)
            done = log.done(task.name, cond)
            mine = []
            for s in range(0, len(todo_items), step):
                b += 1
                left = [it for it in todo_items[s:s + step] if it.id not in done]
                if left and distributed.owns(b, rank):
                    mine.append(left)
            if not mine:
                continue
            say(f"probe: {task.name} / {cond}: {sum(map(len, mine))} items")
            with ablate(model, group, mode, means=means, adapter=adapter):
                for batch in mine:
                    res = task.run(model, tok, batch)
                    log.append([{"task": task.name, "condition": cond, **r} for r in res])
