"""staterank analyze: per-head state rank and norms over tokens (staterank.analyze.analyze)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_common, add_options, add_parser, config_from, load

EPILOG = """examples:
  staterank analyze --model builtin --prompt "The quick brown fox jumps over the lazy dog." --out runs/a1
  staterank analyze --model Qwen/Qwen3-Next-80B-A3B-Instruct --text a.txt b.txt --max-tokens 2048 --log-positions --out runs/a2
  staterank analyze --model ./my_model --text notes.txt --stride 16 --keep-states --out runs/a3

Writes one run folder: config.json, dynamics.npz (threshold_rank, entropy_rank, stable_rank,
nuclear_norm, frobenius_norm, spectral_norm [texts, layers, heads, positions]; positions, layers,
bound, log_decay, texts), heads.csv, texts.csv, figures and report.md. Rerunning the same command
resumes an interrupted run; a folder holding a different run is never overwritten.
"""


def read_texts(args) -> dict[str, str]:
    from pathlib import Path

    from ..data import read_user_text

    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        return {"prompt": args.prompt}
    texts: dict[str, str] = {}
    seen: set[Path] = set()
    for f in args.text:
        p = Path(f)
        if p.resolve() in seen:
            raise UserError(f"--text {f} given twice")
        seen.add(p.resolve())
        texts[p.stem if p.stem not in texts else str(p)] = read_user_text(p, f"--text {f}")
    return texts


def command(args) -> int:
    from ..analyze import AnalyzeConfig, analyze
    from ..report.analyze import render

    cfg = config_from(AnalyzeConfig, args)
    cfg.validate()
    texts = read_texts(args)  # check inputs before loading a model
    dyn = analyze(load(args), texts, **cfg.kwargs(), seed=args.seed, out=args.out)
    report = render(dyn.run_dir)
    if args.ranks_csv:
        from ..report.heads_view import ranks_csv

        print(f"per-token ranks: {ranks_csv(dyn.run_dir)}")
    print(f"wrote {dyn.run_dir} ({len(dyn.texts)} text(s), {len(dyn.positions)} positions); report: {report} (and report.html)")
    return 0


def add(sub) -> None:
    from ..analyze import AnalyzeConfig

    p = add_parser(
        sub, "analyze", help="per-head state rank and norms over tokens, for one model and a few texts",
        description="Capture every linear-attention layer's recurrent state after each token and record, per value "
                    "head, the threshold rank #σ_i > ε·σ_1 (paper Eq. 6) and related ranks and norms.",
        epilog=EPILOG,
    )
    add_common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="analyze this string")
    src.add_argument("--text", nargs="+", metavar="FILE", help="analyze these UTF-8 text files (one forward each)")
    add_options(p, AnalyzeConfig)
    p.add_argument("--ranks-csv", action="store_true",
                   help="also write ranks.csv: every head's ranks and norms at every measured token, one row each")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
