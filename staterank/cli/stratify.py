"""staterank stratify: head classes and their statistics (staterank.stratify.run_stratify / stratify_from_runs)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_common, add_options, add_parser, config_from, load, names

EPILOG = """examples:
  staterank stratify --model builtin --out runs/s1
  staterank stratify --model builtin --contexts prose,math,repeat_rare --max-tokens 512 --out runs/s2
  staterank stratify --model Qwen/Qwen3-Next-80B-A3B-Instruct --device cuda --suite natural --out runs/s3
  staterank stratify --from-runs runs/a1 runs/a2 --no-report --out runs/s4   # from analyze run folders
"""


def command(a) -> int:
    from .. import stratify as st

    cfg = config_from(st.StratifyConfig, a, init_seed=a.seed)
    if a.no_init and a.init_gates is not None:
        raise UserError("--init-gates sets the baseline's gates; with --no-init there is no baseline")
    if a.init_runs and not a.from_runs:
        raise UserError("--init-runs goes with --from-runs")
    cfg.validate()
    if a.from_runs:
        out = st.stratify_from_runs(a.from_runs, a.out, cfg, a.init_runs)
    else:
        from .. import contexts as cx

        files = [cx.from_file(f) for f in a.context_file]  # a bad file fails before the model loads
        loaded = load(a)
        kw = dict(tokens=cfg.max_tokens, tokenizer=loaded.tokenizer)
        only = names(a.contexts) if a.contexts else None
        ctxs = cx.suite(cfg.suite, seed=a.seed, data=a.data_dir, only=only, **kw)
        ctxs += files + [cx.from_hf(s, **kw) for s in a.hf_context]
        out = st.run_stratify(loaded, ctxs, a.out, cfg)
    print(out / "stratify.json")
    if not a.no_report:
        from ..report.stratify import render

        print(render(out))
    return 0


def add(sub) -> None:
    from ..stratify.config import StratifyConfig

    p = add_parser(
        sub, "stratify",
        help="low/high-rank head classes, bimodality, consistency over time and contexts, decay->rank, vs the model at init",
        description="Analyze a context suite (or read analyze run folders) and compute stratification statistics "
        "beside the same architecture at initialisation. Writes stratify.json, heads.csv, figures, report.md.",
        epilog=EPILOG,
    )
    add_common(p)
    p.add_argument("--out", required=True, help="run folder (a finished one with the same config is resumed, never overwritten)")
    add_options(p, StratifyConfig)
    p.add_argument("--contexts", default=None, help="comma-separated subset of builtin contexts, e.g. prose,math,repeat_rare")
    p.add_argument("--context-file", action="append", default=[], metavar="PATH", help="add a UTF-8 text file as a context (repeatable)")
    p.add_argument("--hf-context", action="append", default=[], metavar="DATASET[:CONFIG]:SPLIT:COLUMN",
                   help="add a context from an HF dataset (needs `datasets` and network or cache; repeatable)")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="DIR", help="use finished analyze run folders instead of a model")
    p.add_argument("--init-runs", nargs="+", default=None, metavar="DIR",
                   help="with --from-runs: analyze folders of the same texts on the model at initialisation")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=command)
