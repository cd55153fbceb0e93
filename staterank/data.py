"""Where local data lives. Code reads data from a directory given by the user, never from the repo.

Resolution order: explicit argument, ``$STATERANK_DATA``, ``../shared/data`` next to the current
directory or next to the source checkout. Users outside this workplace pass ``--data-dir`` or use the
HF ``datasets`` download paths that each loader keeps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def check_given(path: str | os.PathLike | None) -> None:
    """One-line UserError when a data folder was given (``--data-dir``) and does not exist; None
    is fine (the resolution order applies)."""
    if path is not None and not os.path.isdir(path):
        raise UserError(f"--data-dir {path}: no such directory")


def data_dir(path: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """Return the data directory, or raise a one-line UserError if none exists and ``required``."""
    candidates = []
    if path:
        candidates.append(Path(path))
    elif os.environ.get("STATERANK_DATA"):
        candidates.append(Path(os.environ["STATERANK_DATA"]))
    else:
        candidates += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise UserError(
            f"data directory not found (looked in {', '.join(str(c) for c in candidates)}); "
            "pass --data-dir or set STATERANK_DATA"
        )
    return None


def prose_files(path: str | os.PathLike | None = None) -> list[Path]:
    """Public-domain prose files (Austen novels, KJV), sorted for determinism."""
    root = data_dir(path) / "prose"
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise UserError(f"no prose .txt files under {root}")
    return files


def read_gsm8k(path: str | os.PathLike) -> list[dict]:
    """GSM8K records {question, answer, ...} of a JSON-lines file; a file that is not UTF-8, a line
    that is not a JSON object, or a record without question and answer: one line naming the file
    and line, not a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise UserError(f"{path}:{i}: a GSM8K record needs string fields question and answer")
        rows.append(row)
    return rows
