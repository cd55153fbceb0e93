"""Typed values for config dataclasses from YAML and ``--set KEY=VALUE`` strings.

``coerce(key, value, type)`` turns what YAML parsed (or a string) into a field's declared type —
int, float, bool, str, their lists, each possibly optional — or raises a one-line UserError naming
the key and the type expected. ``field_types(cls)`` gives a dataclass's resolved field types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import UserError


def field_types(cls) -> dict[str, Any]:
    """field name -> resolved type, for a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unwrap_optional(tp) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_LIST_NAMES = {int: "a list of integers", float: "a list of numbers", bool: "a list of true/false",
               str: "a list of names"}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class _Bad(Exception):
    pass


def _scalar(v, tp):
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in _BOOLS:
            return _BOOLS[v.strip().lower()]
        raise _Bad
    if isinstance(v, bool):  # YAML's yes/no/true/false are not numbers or names
        raise _Bad
    if tp is int:
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v.strip())
            except ValueError:
                pass
            try:  # YAML reads 1e3 (no dot) as a string
                f = float(v.strip())
            except ValueError:
                raise _Bad from None
            if f.is_integer():
                return int(f)
        raise _Bad
    if tp is float:
        if isinstance(v, (int, float)):
            return v  # an int stays an int: the saved config (and its hash) is what was given
        if isinstance(v, str):
            try:
                return float(v.strip())
            except ValueError:
                raise _Bad from None
        raise _Bad
    if tp is str:
        if isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return str(v)
        raise _Bad
    raise TypeError(f"no coercion for {tp}")  # a field type this module does not handle: a bug here


def coerce(key: str, v, tp):
    """``v`` as field type ``tp``, or a one-line UserError naming ``key`` and the type expected."""
    tp, optional = unwrap_optional(tp)
    is_list = typing.get_origin(tp) in (list, tuple)
    item = typing.get_args(tp)[0] if is_list else tp
    want = (_LIST_NAMES[item] + " (or one comma-separated string)") if is_list else _NAMES[tp]
    if v is None:
        if optional:
            return None
        raise UserError(f"{key} must be {want}, got nothing (null)")
    try:
        if not is_list:
            return _scalar(v, tp)
        if isinstance(v, str):  # probe.tasks=niah or niah,mqar: names, not letters
            return [_scalar(x.strip(), item) for x in v.split(",") if x.strip()]
        return [_scalar(x, item) for x in (v if isinstance(v, (list, tuple)) else [v])]
    except _Bad:
        shown = repr(v)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(f"{key} must be {want}{' (or null)' if optional else ''}, got {shown}") from None
