"""What the subcommand modules share: the parser class, the common options, the flags of a stage
config (``add_options``, ``config_from``: see staterank.options and docs/adding-an-option.md) and
small helpers. Internal to the command line (the library never imports it)."""

from __future__ import annotations

import argparse
import typing

from ..configtypes import coerce, field_types, unwrap_optional
from ..options import EPS, FLOAT, MIB, NONNEG, POS, SHARE, SHARE1, UNIT, Checked, default_of, flag_of, options

# The checked types are declared in staterank.options; these names stay importable from here for
# commands written before (they declare flags by hand: port them to add_options, docs/adding-an-option.md).
checked, eps = Checked, EPS
__all__ = ["EPS", "FLOAT", "MIB", "NONNEG", "POS", "SHARE", "SHARE1", "UNIT", "Parser", "add_common", "add_options",
           "add_parser", "checked", "config_from", "eps", "given", "is_list_option", "load", "names"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays in --help); subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_options(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per ``opt`` field of config class ``cls`` (``staterank.options``), in field order:
    its checked type (items of a list field are checked after parsing, by ``config_from``), choices,
    help with the stage default. Every flag defaults to None (False for a switch), so that what the
    user gave is knowable (``given``); ``config_from`` fills in the dataclass defaults."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in options(cls):
        m = f.metadata
        if not m["cli"] or f.name in skip:
            continue
        where = p
        if m["group"]:
            if m["group"] not in groups:
                groups[m["group"]] = p.add_mutually_exclusive_group()
            where = groups[m["group"]]
        default = default_of(f)
        help = m["help"]() if callable(m["help"]) else m["help"]
        flag = flag_of(f)
        if isinstance(default, bool):
            where.add_argument(flag, action="store_true", help=help)
            continue
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        if default is not None and "(default" not in help:
            help = f"{help} (default {shown})"
        where.add_argument(flag, default=None, help=help, metavar=m["metavar"], choices=m["choices"],
                           type=None if is_list_option(cls, f.name) else m["type"])


def config_from(cls, args, **fixed):
    """A ``cls`` from the flags ``add_options`` made (those not given keep the field defaults) and
    ``fixed`` fields (seed, paths); comma-separated lists are parsed to the field's item type. Not
    validated: the stage calls ``validate()``."""
    kw = dict(fixed)
    types = field_types(cls)
    for f in options(cls):
        if not f.metadata["cli"] or f.name in kw:
            continue
        flag = flag_of(f)
        v = getattr(args, flag[2:].replace("-", "_"), None)
        if v is None or v is False:
            continue
        if isinstance(default_of(f), bool):  # a switch: --no-init sets init False, --single-head True
            kw[f.name] = not flag.startswith("--no-")
        elif is_list_option(cls, f.name):
            kw[f.name] = coerce(flag, v, types[f.name])
        else:
            kw[f.name] = v
    return cls(**kw)


def is_list_option(cls, name: str) -> bool:
    """Whether field ``name`` of ``cls`` holds a list (one comma-separated string on the command line)."""
    return typing.get_origin(unwrap_optional(field_types(cls)[name])[0]) in (list, tuple)


def names(s: str) -> list[str]:
    """A comma-separated list, items stripped, empty items dropped."""
    return [x.strip() for x in s.split(",") if x.strip()]


def given(args, *options: str) -> list[str]:
    """The options among ``options`` the user gave (None or False means not given), as flags."""
    # identity, not equality: --alpha 0 or --fraction 0.0 are given (0.0 == False)
    return ["--" + n.replace("_", "-") for n in options if getattr(args, n) is not None and getattr(args, n) is not False]


def add_parser(sub, name: str, help: str, epilog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser (a Parser, as the top one); its description and examples print as written."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="builtin", help="HF id, local folder, or 'builtin' (default)")
    p.add_argument("--device", default=None,
                   help="torch device, or 'auto' to spread a model too big for one GPU over all of them "
                        "(accelerate's device map; needs accelerate) (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--threads", type=POS, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $STATERANK_DATA, else the data bundled with staterank)")
    p.add_argument("--seed", type=NONNEG, default=0, help="random seed (default 0)")


def load(args):
    """The model that the common options (--model, --device, --dtype, --trust-remote-code) name."""
    from ..models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
