"""Per-item bookkeeping: ``items.jsonl`` (one line per finished (task, condition, item), so a
killed probe resumes item by item, losing and repeating nothing) and what identifies a task's
items in the run config (a folder holding other items is never resumed)."""

from __future__ import annotations

import json
import os
from dataclasses import fields, is_dataclass
from pathlib import Path

from .tasks import ProbeTask


class ItemLog:
    """Append-only per-item results; (task, condition, id) is done once it is on disk."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[str, str, str], dict] = {}
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a line torn by a kill: drop it (its item is redone)
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # unreadable line: its item is redone
                        continue
                    self.rows.setdefault((r["task"], r["condition"], r["id"]), r)

    def done(self, task: str, condition: str) -> set[str]:
        return {i for (t, c, i) in self.rows if t == task and c == condition}

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in rows:
                key = (r["task"], r["condition"], r["id"])
                if key in self.rows:
                    continue
                self.rows[key] = r
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def results(self, task: str, condition: str) -> dict[str, dict]:
        return {i: r for (t, c, i), r in self.rows.items() if t == task and c == condition}


def task_spec(task: ProbeTask) -> dict:
    """What defines a task's items and scoring: its class and plain fields (batch size only
    changes speed, so it is left out and may differ on resume)."""
    simple = (str, int, float, bool, type(None), tuple, list)
    d = {f.name: getattr(task, f.name) for f in fields(task)} if is_dataclass(task) else {}
    # a Path too; absent when not given, so runs from before tasks took a data_dir still resume
    d = {k: (str(v) if k == "data_dir" else v) for k, v in d.items() if not (k == "data_dir" and v is None)}
    d = {k: v for k, v in d.items() if k != "batch_size" and not k.startswith("_") and isinstance(v, simple)}
    return {"class": type(task).__name__, "repr": None if is_dataclass(task) else repr(task), **d}
