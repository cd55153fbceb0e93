"""staterank ls: what this installation supports (adapters and the registries of tasks, methods, suites)."""

from __future__ import annotations

from .common import add_parser


def optional_section(title: str, module: str, attr: str, describe) -> list[str]:
    """A registry section, skipped when its module has not landed."""
    import importlib

    try:
        reg = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return []
    lines = [f"{title}:"]
    for name in reg:
        desc = describe(reg, name)
        lines.append(f"  {name:<16} {desc}".rstrip())
    return lines + [""]


def command(args) -> int:
    from ..adapters import supported_types

    def doc(reg, name):
        d = (getattr(reg[name], "__doc__", None) or "").strip().splitlines()
        # dataclasses without a docstring get their signature as __doc__: not a description
        return d[0] if d and not d[0].startswith(f"{getattr(reg[name], '__name__', '')}(") else ""

    lines = ["model types (adapters):", *[f"  {t}" for t in supported_types()], ""]
    lines += optional_section("probe tasks (--tasks)", "staterank.probes.tasks", "PROBE_TASKS", lambda reg, n: reg[n])
    lines += optional_section("pruning methods", "staterank.prune.scores", "METHODS", doc)
    lines += optional_section("context suites", "staterank.contexts", "SUITES",
                              lambda reg, n: ", ".join(reg[n]) if isinstance(reg[n], (list, tuple)) else "")
    print("\n".join(lines).rstrip())
    return 0


def add(sub) -> None:
    p = add_parser(sub, "ls", help="list supported model types, tasks, pruning methods and context suites",
                   description="List what this installation supports (sections whose modules are absent are skipped).",
                   epilog="example:\n  staterank ls")
    p.set_defaults(func=command)
