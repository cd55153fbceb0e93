"""One declaration per option: a stage config's dataclass field carries its default, help text,
command-line flag and checked type, and every way in reads it.

    @dataclass
    class StratifyConfig:
        stride: int = opt(4, POS, "measure every N-th token", run=True)

* the command line: ``cli.common.add_options(parser, StratifyConfig)`` makes ``--stride`` (type POS,
  help "measure every N-th token (default 4)"); ``cli.common.config_from(StratifyConfig, args)``
  builds the config from the flags given, the field defaults for the rest;
* YAML (``staterank run --config``, ``--set stratify.stride=8``): ``configtypes.coerce`` turns the
  value into the field's annotated type; fields marked ``run=True`` are the keys of the pipeline's
  section (``pipeline.RunConfig``), whose documented defaults may differ (``pipeline.PIPELINE``);
* the library: ``cfg.validate()`` calls ``check_fields`` (each value against its checked type and
  choices), then the stage's own cross-field checks. CLI, YAML and library all end there.

A checked type is both an argparse ``type`` (parses a string, refuses with one line while parsing,
before a model loads) and a value check (``.check(label, x)`` -> one-line UserError). Leaf module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from typing import Any

from .errors import UserError

_INT_MAX = 2**63 - 1  # torch seeds and tensor sizes are 64-bit


class Checked:
    """``kind`` (int or float) that is finite, fits 64 bits and passes ``ok`` (described as ``what``)."""

    def __init__(self, kind, ok, what: str):
        self.kind, self.ok, self.what = kind, ok, what
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def _problem(self, x) -> str | None:
        if self.kind is float and not math.isfinite(x):
            return "must be a finite number"
        if self.kind is int and abs(x) > _INT_MAX:
            return "must be at most 2**63 - 1"
        return None if self.ok(x) else f"must be {self.what}"

    def __call__(self, text: str):
        """argparse: the string as a checked value, or ArgumentTypeError (one line)."""
        try:
            x = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if self.kind is int else ' number'}") from None
        why = self._problem(x)
        if why:
            raise argparse.ArgumentTypeError(f"{why}, got {text}")
        return x

    def check(self, label: str, x) -> None:
        """A typed value (library, YAML): a UserError naming ``label`` unless it passes."""
        why = self._problem(x)
        if why:
            raise UserError(f"{label} {why}, got {x}")


# Every numeric option takes one of these (tests/test_cli_inputs.py walks them all with 0, -1, nan, inf, 1e308, 2**64).
POS = Checked(int, lambda x: x >= 1, ">= 1")
NONNEG = Checked(int, lambda x: x >= 0, ">= 0")
FLOAT = Checked(float, lambda x: True, "a number")  # finite; ranges are checked where they are known
UNIT = Checked(float, lambda x: 0 <= x <= 1, "in [0, 1]")
SHARE = Checked(float, lambda x: 0 < x < 1, "in (0, 1)")  # a share of heads to remove: some, not all
SHARE1 = Checked(float, lambda x: 0 < x <= 1, "in (0, 1]")
MIB = Checked(float, lambda x: 0 < x <= 2**30, "in (0, 2**30] MiB")
EPS = Checked(float, lambda x: 0 < x < 1, "in (0, 1)")  # σ_i > ε·σ_1 with ε >= 1 counts nothing


def opt(default: Any = None, type: Checked | None = None, help: str = "", *, flag: str | None = None,
        choices=None, group: str | None = None, run: bool = False, cli: bool = True, record: bool = True,
        metavar: str | None = None):
    """A config field with its option facts (``dataclasses.field`` metadata).

    ``default``: the stage's default (a list or tuple is copied per instance). ``type``: a Checked
    type, applied to each item of a list. ``help``: the --help text ("(default X)" is added unless
    it says its default itself; a callable is called when the parser is built, for registries that
    grow). ``flag``: the command-line flag when not ``--NAME`` (dashes for underscores), or
    ``--no-NAME`` for a bool that defaults to True (its help says what the flag does).
    ``choices``: the allowed values. ``group``: flags of one group are mutually exclusive. ``run``:
    a key of ``staterank run``'s section of this stage. ``cli=False``: no flag (the caller sets it:
    the run's seed, data folder, output folder). ``record=False``: not written to the stage's
    config.json (it only describes inputs recorded otherwise).
    """
    meta = {"type": type, "help": help, "flag": flag, "choices": choices, "group": group, "run": run, "cli": cli,
            "record": record, "metavar": metavar}
    if isinstance(default, (list, tuple)):
        d = default
        return dataclasses.field(default_factory=lambda: type_of(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_of(x):
    return list if isinstance(x, list) else tuple


def options(cls) -> list[dataclasses.Field]:
    """The fields of config class ``cls`` declared with ``opt``."""
    return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_of(f: dataclasses.Field) -> str:
    """The field's command-line flag: as declared, else --NAME (--no-NAME for a switch that is on by default)."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    return ("--no-" if default_of(f) is True else "--") + f.name.replace("_", "-")


def check_fields(cfg, prefix: str = "") -> None:
    """Every ``opt`` field of ``cfg`` against its checked type and choices; errors name ``prefix`` + field."""
    for f in options(cfg):
        v, m = getattr(cfg, f.name), f.metadata
        if v is None:
            continue
        label = prefix + f.name
        if m["type"] is not None:
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                m["type"].check(label, x)
        if m["choices"] is not None and v not in m["choices"]:
            raise UserError(f"unknown {label} {v!r}; choose one of {', '.join(m['choices'])}")


def record(cfg) -> dict:
    """``asdict(cfg)`` without the fields marked ``record=False``: what a stage writes to config.json."""
    skip = {f.name for f in options(cfg) if not f.metadata["record"]}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


@contextlib.contextmanager
def section(prefix: str):
    """A stage's own (cross-field) checks: their one-line errors name the config section, if any."""
    try:
        yield
    except UserError as e:
        if not prefix:
            raise
        raise UserError(f"{prefix.rstrip('.')}: {e}") from None
