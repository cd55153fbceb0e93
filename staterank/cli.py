"""Thin command line: each subcommand maps to one library function, then renders its report.

Errors in input become one line on stderr and exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

EPILOG = """examples:
  staterank analyze --model builtin --prompt "The quick brown fox" --out runs/a1
  staterank stratify --model builtin --out runs/s1
  staterank probe --model builtin --tasks niah --groups low,high,random --out runs/p1
  staterank prune --model builtin --method jrnp --fraction 0.389 --out runs/pr1
  staterank run --model builtin --out runs/demo
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="builtin", help="HF id, local folder, or 'builtin' (default)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $STATERANK_DATA or ../shared/data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


# ---- analyze -------------------------------------------------------------------------------
def _add_analyze(sub) -> None:
    pass


# ---- stratify ------------------------------------------------------------------------------
def _add_stratify(sub) -> None:
    pass


# ---- probe ---------------------------------------------------------------------------------
def _add_probe(sub) -> None:
    pass


# ---- prune ---------------------------------------------------------------------------------
def _add_prune(sub) -> None:
    pass


# ---- run / verify / ls ---------------------------------------------------------------------
def _add_run(sub) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staterank",
        description="Per-head recurrent-state rank dynamics of linear-attention LLMs (arXiv 2602.02195), measured with controls.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_analyze, _add_stratify, _add_probe, _add_prune, _add_run):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"staterank: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("staterank: interrupted (finished pieces are saved; rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
