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
ANALYZE_EPILOG = """examples:
  staterank analyze --model builtin --prompt "The quick brown fox jumps over the lazy dog." --out runs/a1
  staterank analyze --model Qwen/Qwen3-Next-80B-A3B-Instruct --text a.txt b.txt --max-tokens 2048 --log-positions --out runs/a2
  staterank analyze --model ./my_model --text notes.txt --stride 16 --keep-states --out runs/a3

Writes one run folder: config.json, dynamics.npz (threshold_rank, entropy_rank, stable_rank,
nuclear_norm, frobenius_norm, spectral_norm [texts, layers, heads, positions]; positions, layers,
bound, log_decay, texts), heads.csv, texts.csv, figures and report.md. Rerunning the same command
resumes an interrupted run; a folder holding a different run is never overwritten.
"""


def _analyze_texts(args) -> dict[str, str]:
    from pathlib import Path

    if args.prompt is not None:
        return {"prompt": args.prompt}
    texts: dict[str, str] = {}
    for f in args.text:
        p = Path(f)
        if not p.is_file():
            raise UserError(f"--text {f}: no such file")
        try:
            body = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--text {f}: not UTF-8 text") from None
        name = p.stem if p.stem not in texts else str(p)
        if name in texts:
            raise UserError(f"--text {f} given twice")
        texts[name] = body
    return texts


def _run_analyze(args) -> int:
    from .analyze import analyze
    from .capture import Schedule
    from .models import load_model
    from .report.analyze import render

    texts = _analyze_texts(args)  # check inputs before loading a model
    if args.max_state_mb <= 0:
        raise UserError(f"--max-state-mb must be > 0, got {args.max_state_mb}")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    dyn = analyze(
        loaded, texts, max_tokens=args.max_tokens, schedule=Schedule(stride=args.stride, log=args.log_positions),
        eps=args.eps, keep_states=args.keep_states, max_state_bytes=int(args.max_state_mb * 2**20),
        prefill_chunk=args.prefill_chunk, seed=args.seed, out=args.out, progress=not args.quiet,
    )
    report = render(dyn.run_dir)
    print(f"wrote {dyn.run_dir} ({len(dyn.texts)} text(s), {len(dyn.positions)} positions); report: {report}")
    return 0


def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze", help="per-head state rank and norms over tokens, for one model and a few texts",
        description="Capture every linear-attention layer's recurrent state after each token and record, per value "
                    "head, the threshold rank #σ_i > ε·σ_1 (paper Eq. 6) and related ranks and norms.",
        epilog=ANALYZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="analyze this string")
    src.add_argument("--text", nargs="+", metavar="FILE", help="analyze these UTF-8 text files (one forward each)")
    p.add_argument("--max-tokens", type=int, default=None, help="truncate each text to N tokens (default: all)")
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--stride", type=int, default=1, help="measure every N-th token (default 1: all)")
    sched.add_argument("--log-positions", action="store_true", help="measure at t = 1, 2, 4, 8, ... only")
    p.add_argument("--eps", type=float, default=1e-4, help="relative threshold ε of the rank (default 1e-4)")
    p.add_argument("--keep-states", action="store_true",
                   help="also write the measured states as safetensors (states/NNNN.safetensors)")
    p.add_argument("--max-state-mb", type=float, default=1024,
                   help="refuse to keep more than this many MiB of states per text (default 1024)")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="tokens per forward through the cache; bounds activation memory (default 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=_run_analyze)


# ---- ls ------------------------------------------------------------------------------------
def _ls_optional(title: str, module: str, attr: str, describe) -> list[str]:
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


def _run_ls(args) -> int:
    from .adapters import supported_types

    def doc(reg, name):
        d = (getattr(reg[name], "__doc__", None) or "").strip().splitlines()
        # dataclasses without a docstring get their signature as __doc__: not a description
        return d[0] if d and not d[0].startswith(f"{getattr(reg[name], '__name__', '')}(") else ""

    lines = ["model types (adapters):", *[f"  {t}" for t in supported_types()], ""]
    lines += _ls_optional("tasks", "staterank.tasks", "TASKS",
                          lambda reg, n: getattr(reg[n], "description", ""))
    lines += _ls_optional("pruning methods", "staterank.prune.scores", "METHODS", doc)
    lines += _ls_optional("context suites", "staterank.contexts", "SUITES",
                          lambda reg, n: ", ".join(reg[n]) if isinstance(reg[n], (list, tuple)) else "")
    print("\n".join(lines).rstrip())
    return 0


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list supported model types, tasks, pruning methods and context suites",
                       description="List what this installation supports (sections whose modules are absent are skipped).")
    p.set_defaults(func=_run_ls)


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
    for add in (_add_analyze, _add_ls, _add_stratify, _add_probe, _add_prune, _add_run):
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
