"""Task accuracy of a model variant (original, zero-ablated by a plan, or pruned), cached per file.

    items = task_items(("mqar",), 100, 10**9, tokenizer)
    acc = accuracy(model, tokenizer, items, run_dir / "evals" / f"masked_{_plan_key(plan)}.json", cfg, plan)
    # {task: {acc, lo, hi, n, k}}: accuracy with its Wilson 95 % interval
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from pathlib import Path

from .. import distributed, runio
from .config import PruneConfig
from .export import masked
from .plan import Plan


def task_items(tasks, n: int, seed: int, tokenizer) -> dict[str, list]:
    from ..tasks import get_task

    out = {}
    for name in tasks:
        t = get_task(name)
        params = dict(t.default_params)
        if "tokenizer" in inspect.signature(t.generate).parameters:
            params["tokenizer"] = tokenizer
        out[name] = t.generate(n, seed, **params)
    return out


def _plan_key(plan: Plan | None) -> str:
    if plan is None or not plan.removed:
        return "none"
    return hashlib.sha256(json.dumps(sorted(plan.removed)).encode()).hexdigest()[:12]


def accuracy(model, tokenizer, items: dict[str, list], path: Path | None, cfg: PruneConfig,
             plan: Plan | None = None) -> dict:
    """{task: {acc, lo, hi, n, k}} of ``model`` (zero-ablated by ``plan`` if given); cached at ``path``."""
    from ..tasks.evaluate import accuracy_ci, evaluate, length_batches

    if path is not None and path.exists():
        return runio.read_json(path)["accuracy"]

    def mine() -> dict[tuple[str, int], dict]:
        """{(task, item index): row} of this rank's batches: the batches one process decodes
        (``length_batches``), batch b of this call being rank b % world size's (all in one process)."""
        got, b = {}, -1
        with masked(model, plan) if plan is not None and plan.removed else contextlib.nullcontext():
            for name, its in items.items():
                for batch in length_batches([len(tokenizer(it.prompt)["input_ids"]) for it in its]):
                    b += 1
                    if distributed.owns(b):
                        rows = evaluate(model, tokenizer, [its[i] for i in batch], max_new_tokens=cfg.max_new_tokens)
                        got.update({(name, i): r for i, r in zip(batch, rows)})
        return got

    done = {k: v for part in distributed.each(mine) for k, v in part.items()}
    res, rows_all = {}, {}
    for name, its in items.items():
        rows = [done[(name, i)] for i in range(len(its))]
        acc, lo, hi = accuracy_ci([r["correct"] for r in rows])
        res[name] = {"acc": acc, "lo": lo, "hi": hi, "n": len(rows), "k": sum(r["correct"] for r in rows)}
        rows_all[name] = rows
    if path is not None:
        distributed.on_main(lambda: runio.write_json(path, {"accuracy": res, "rows": rows_all}))
    return res
