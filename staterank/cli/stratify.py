"""staterank stratify: head classes and their statistics (staterank.stratify.run_stratify / stratify_from_runs)."""

from __future__ import annotations

import sys

from ..errors import UserError
from .common import POS, SHARE1, add_common, add_parser, eps, load, names

EPILOG = """examples:
  staterank stratify --model builtin --out runs/s1
  staterank stratify --model builtin --contexts prose,math,repeat_rare --max-tokens 512 --out runs/s2
  staterank stratify --model Qwen/Qwen3-Next-80B-A3B-Instruct --device cuda --suite natural --out runs/s3
  staterank stratify --from-runs runs/a1 runs/a2 --no-report --out runs/s4   # from analyze run folders
"""


def command(a) -> int:
    from .. import stratify as st

    cfg = st.StratifyConfig(rule=a.rule, threshold=a.threshold, t_early=a.t_early, t_late=a.t_late,
                            max_tokens=a.max_tokens, stride=a.stride, init=not a.no_init,
                            init_gates=a.init_gates or "auto", init_seed=a.seed, eps=a.eps)
    if a.no_init and a.init_gates is not None:
        raise UserError("--init-gates sets the baseline's gates; with --no-init there is no baseline")
    if a.init_runs and not a.from_runs:
        raise UserError("--init-runs goes with --from-runs")
    if a.from_runs:
        out = st.stratify_from_runs(a.from_runs, a.out, cfg, a.init_runs)
    else:
        from .. import contexts as cx

        cfg.validate()
        files = [cx.from_file(f) for f in a.context_file]  # a bad file fails before the model loads
        loaded = load(a)
        kw = dict(tokens=a.max_tokens, tokenizer=loaded.tokenizer)
        only = names(a.contexts) if a.contexts else None
        ctxs = cx.suite(a.suite, seed=a.seed, data=a.data_dir, only=only, **kw)
        ctxs += files + [cx.from_hf(s, **kw) for s in a.hf_context]
        out = st.run_stratify(loaded, ctxs, a.out, cfg,
                              log=(lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
    print(out / "stratify.json")
    if not a.no_report:
        from ..report.stratify import render

        print(render(out))
    return 0


def add(sub) -> None:
    p = add_parser(
        sub, "stratify",
        help="low/high-rank head classes, bimodality, consistency over time and contexts, decay->rank, vs the model at init",
        description="Analyze a context suite (or read analyze run folders) and compute stratification statistics "
        "beside the same architecture at initialisation. Writes stratify.json, heads.csv, figures, report.md.",
        epilog=EPILOG,
    )
    add_common(p)
    p.add_argument("--out", required=True, help="run folder (a finished one with the same config is resumed, never overwritten)")
    p.add_argument("--suite", default="default", help="context suite: default (7 contexts incl. the two repetition attacks) or natural")
    p.add_argument("--contexts", default=None, help="comma-separated subset of builtin contexts, e.g. prose,math,repeat_rare")
    p.add_argument("--context-file", action="append", default=[], metavar="PATH", help="add a UTF-8 text file as a context (repeatable)")
    p.add_argument("--hf-context", action="append", default=[], metavar="DATASET[:CONFIG]:SPLIT:COLUMN",
                   help="add a context from an HF dataset (needs `datasets` and network or cache; repeatable)")
    p.add_argument("--max-tokens", type=POS, default=2048, help="tokens per context (default 2048)")
    p.add_argument("--stride", type=POS, default=4, help="measure every STRIDE-th token, plus t-early, t-late, last (default 4)")
    p.add_argument("--t-early", type=POS, default=128, help="early position for the rank-order Spearman (default 128)")
    p.add_argument("--t-late", type=POS, default=2048, help="late position (default 2048; shorter contexts use their last)")
    p.add_argument("--rule", default="two_cluster", choices=["two_cluster", "threshold"],
                   help="class rule on mean rank / bound: optimal two-cluster split (default) or a fixed --threshold")
    p.add_argument("--threshold", type=SHARE1, default=None, help="with --rule threshold: low iff mean rank / bound < this")
    p.add_argument("--no-init", action="store_true", help="skip the same-architecture-at-initialisation baseline")
    p.add_argument("--init-gates", default=None, choices=["auto", "model", "fla"],
                   help="gate init of the baseline: model (its own _init_weights), fla (FLA/Mamba-style), "
                   "auto (default) = model unless that init is memoryless (median decay < 0.5 per token, as "
                   "transformers' Qwen3-Next/Qwen3.5 init), then fla")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="DIR", help="use finished analyze run folders instead of a model")
    p.add_argument("--init-runs", nargs="+", default=None, metavar="DIR",
                   help="with --from-runs: analyze folders of the same texts on the model at initialisation")
    p.add_argument("--eps", type=eps, default=1e-4, help="threshold-rank epsilon (paper Eq. 6; default 1e-4)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=command)
