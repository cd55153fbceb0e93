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
    """Append-only per-item results; (task, condition, id) is done once it is on disk.

    Under torchrun each rank appends to its own ``items.rank<r>.jsonl`` (``append_to``) and reads
    every rank's file, so a resumed run skips what any rank finished; ``consolidate`` then writes
    items.jsonl in the order one process would have written it and removes the rank files."""

    def __init__(self, path: Path, append_to: Path | None = None):
        self.path = path
        self.append_to = append_to or path
        self.rows: dict[tuple[str, str, str], dict] = {}
        self.added: list[dict] = []  # rows this process appended
        for p in [path, *self.rank_files()]:
            if p.exists():
                self._read(p)

    def rank_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}"))

    def _read(self, path: Path) -> None:
        data = path.read_bytes()
        if path == self.append_to and data and not data.endswith(b"\n"):  # a line torn by a kill: drop it
            with open(path, "r+b") as f:  # (only in our own file: another rank may be writing its own)
                f.truncate(data.rfind(b"\n") + 1)
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # unreadable or torn line: its item is redone
                continue
            self.rows.setdefault((r["task"], r["condition"], r["id"]), r)

    def done(self, task: str, condition: str) -> set[str]:
        return {i for (t, c, i) in self.rows if t == task and c == condition}

    def append(self, rows: list[dict]) -> None:
        with open(self.append_to, "a", encoding="utf-8") as f:
            for r in rows:
                key = (r["task"], r["condition"], r["id"])
                if key in self.rows:
                    continue
                self.rows[key] = r
                self.added.append(r)
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, rows: list[dict]) -> None:
        """Rows another rank measured (already on disk in its own file)."""
        for r in rows:
            self.rows.setdefault((r["task"], r["condition"], r["id"]), r)

    def consolidate(self, order: list[tuple[str, str, str]]) -> None:
        """items.jsonl := every row, ``order`` first (the one-process order), then the rank files
        go. A kill in between leaves rows in both: they are read once (same key)."""
        files = self.rank_files()
        if not files:
            return
        from ..runio import atomic_write_text

        keys = [k for k in order if k in self.rows] + [k for k in self.rows if k not in set(order)]
        atomic_write_text(self.path, "".join(json.dumps(self.rows[k]) + "\n" for k in keys))
        for p in files:
            p.unlink(missing_ok=True)

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
