"""What the subcommand modules share: the parser class, checked argument types, the common options,
and small helpers. Internal to the command line (the library never imports it)."""

from __future__ import annotations

import argparse
import math

from ..errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays in --help); subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def checked(kind, minimum, what):
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and math.isinf(x):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if not (x >= minimum if kind is int else x > minimum):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return x
    return parse


# Checked while parsing, before a model (minutes for a real checkpoint) is loaded.
POS = checked(int, 1, ">= 1")
NONNEG = checked(int, 0, ">= 0")
POSF = checked(float, 0.0, "> 0")
FLOAT = checked(float, -math.inf, "a number")  # finite; ranges are checked where they are known


def eps(text: str) -> float:
    x = POSF(text)
    if x >= 1:  # σ_i > ε·σ_1 with ε >= 1 counts nothing: every rank would be 0
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return x


def floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {s!r}") from None


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
