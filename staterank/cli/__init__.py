"""Thin command line: each subcommand maps to one library function, then renders its report.

One module per subcommand (analyze, ls, stratify, probe, prune, run with verify), each with
``add(sub)`` registering its parser; what they share is in ``common``. Errors in input become one
line on stderr and exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .. import progress
from ..errors import UserError, VerificationFailed
from . import analyze, compress, ls, probe, prune, run, stratify
from .common import Parser

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  staterank analyze --model builtin --prompt "The quick brown fox" --out runs/a1
  staterank stratify --model builtin --out runs/s1
  staterank probe --model builtin --tasks niah --groups low,high,random --out runs/p1
  staterank prune --model builtin --method jrnp --fraction 0.389 --out runs/pr1
  staterank compress --model builtin --out runs/c1
  staterank run --model builtin --out runs/demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="staterank",
        description="Per-head recurrent-state rank dynamics of linear-attention LLMs (arXiv 2602.02195), measured with controls.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (analyze, ls, stratify, probe, prune, compress, run):
        command.add(sub)
    return parser


def _quiet_cpu_kernel_advice(device) -> None:
    """On CPU, drop transformers' "falling back to its reference PyTorch implementation ... install
    flash-linear-attention" notes: the reference is the only path there (fla's kernels are Triton,
    and a CPU forward with them fails: docs/fla-models.md), so the advice would mislead."""
    import logging

    import torch

    if device not in (None, "cpu") or (device is None and torch.cuda.is_available()):
        return
    log = logging.getLogger("transformers.integrations.hub_kernels")
    if not any(getattr(f, "_staterank", False) for f in log.filters):
        f = logging.Filter()
        f.filter = lambda r: "falling back to its reference PyTorch implementation" not in r.getMessage()
        f._staterank = True
        log.addFilter(f)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar
    if hasattr(args, "device"):
        _quiet_cpu_kernel_advice(args.device)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        from ..distributed import env_rank

        if env_rank().rank != 0:  # under torchrun rank 0 speaks for all (errors still go to each stderr)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        # --quiet: the one progress switch (staterank.progress), for this command only
        with progress.quiet() if getattr(args, "quiet", False) else contextlib.nullcontext():
            return int(args.func(args) or 0)
    except UserError as e:
        if getattr(e, "echo", True):  # False: another torchrun rank failed and reports it itself
            print(f"staterank: error: {e}", file=sys.stderr)
        return 2
    except VerificationFailed as e:
        print(f"staterank: check failed: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # the file system said no (bad --out, permissions, disk full): its words, one line
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"staterank: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("staterank: interrupted (finished pieces are saved; rerun the same command to resume)", file=sys.stderr)
        return 130
