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


_INT_MAX = 2**63 - 1  # torch seeds and tensor sizes are 64-bit


def checked(kind, ok, what):
    """An argparse type: ``kind`` (int or float) that is finite, fits 64 bits, and passes ``ok``
    (described as ``what`` in the one-line refusal)."""
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if kind is int and abs(x) > _INT_MAX:
            raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1, got {text}")
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return x
    return parse


# Checked while parsing, before a model (minutes for a real checkpoint) is loaded: every numeric
# option takes one of these (tests/test_cli_inputs.py walks them all with 0, -1, nan, inf, 1e308, 2**64).
POS = checked(int, lambda x: x >= 1, ">= 1")
NONNEG = checked(int, lambda x: x >= 0, ">= 0")
FLOAT = checked(float, lambda x: True, "a number")  # finite; ranges are checked where they are known
UNIT = checked(float, lambda x: 0 <= x <= 1, "in [0, 1]")
SHARE = checked(float, lambda x: 0 < x < 1, "in (0, 1)")  # a share of heads to remove: some, not all
SHARE1 = checked(float, lambda x: 0 < x <= 1, "in (0, 1]")
MIB = checked(float, lambda x: 0 < x <= 2**30, "in (0, 2**30] MiB")
eps = checked(float, lambda x: 0 < x < 1, "in (0, 1)")  # σ_i > ε·σ_1 with ε >= 1 counts nothing


def floats(s: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {s!r}") from None
    if not all(math.isfinite(x) for x in out):
        raise UserError(f"expected finite numbers, got {s!r}")
    return out


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
