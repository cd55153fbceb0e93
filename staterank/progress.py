"""The one progress mechanism: messages through ``logging`` (logger ``staterank``), bars through tqdm,
both on stderr, both off when quiet (``--quiet`` on every command).

    from .progress import bar, say
    say("prune: calibrating")                      # [staterank 12:34:56] prune: calibrating
    for text in bar(texts, desc="texts", unit="text"):
        ...

Under torchrun only rank 0 reports (the others would repeat it). Quiet is the logger's level: ``set_quiet()`` (the CLI's --quiet), ``with quiet():`` (a library
caller), or ``logging.getLogger("staterank").setLevel(logging.WARNING)`` all silence both. Results
never go through here: what a command prints on stdout is its answer, not its progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("staterank")


class _Stderr(logging.Handler):
    """Writes to the current sys.stderr (looked up per message, so redirections and pytest's capture see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"[staterank {time.strftime('%H:%M:%S', time.localtime(record.created))}] {record.getMessage()}",
                  file=sys.stderr, flush=True)
        except Exception:  # a closed stream must not stop a run
            self.handleError(record)


if not any(isinstance(h, _Stderr) for h in log.handlers):
    log.addHandler(_Stderr())
    log.propagate = False  # once, on stderr; not again through a root handler
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO) and os.environ.get("RANK", "0") == "0"


def set_quiet(on: bool = True) -> None:
    log.setLevel(logging.WARNING if on else logging.INFO)


@contextlib.contextmanager
def quiet():
    """No progress messages or bars inside the block."""
    before = log.level
    set_quiet(True)
    try:
        yield
    finally:
        log.setLevel(before)


def say(msg: str) -> None:
    """A progress message (one line on stderr), unless quiet."""
    if enabled():
        log.info(msg)


def bar(iterable=None, **kw) -> tqdm:
    """A tqdm bar on stderr, disabled when quiet (keyword arguments are tqdm's)."""
    return tqdm(iterable, disable=not enabled(), file=sys.stderr, **kw)
