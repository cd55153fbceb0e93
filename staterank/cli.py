"""Thin command line: each subcommand maps to one library function, then renders its report.

Errors in input become one line on stderr and exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .errors import UserError, VerificationFailed


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays in --help); subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind, minimum, what):
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
_POS = _checked(int, 1, ">= 1")
_NONNEG = _checked(int, 0, ">= 0")
_POSF = _checked(float, 0.0, "> 0")
_FLOAT = _checked(float, -math.inf, "a number")  # finite; ranges are checked where they are known


def _eps(text: str) -> float:
    x = _POSF(text)
    if x >= 1:  # σ_i > ε·σ_1 with ε >= 1 counts nothing: every rank would be 0
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return x

EPILOG = """examples:
  staterank analyze --model builtin --prompt "The quick brown fox" --out runs/a1
  staterank stratify --model builtin --out runs/s1
  staterank probe --model builtin --tasks niah --groups low,high,random --out runs/p1
  staterank prune --model builtin --method jrnp --fraction 0.389 --out runs/pr1
  staterank run --model builtin --out runs/demo
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="builtin", help="HF id, local folder, or 'builtin' (default)")
    p.add_argument("--device", default=None,
                   help="torch device, or 'auto' to spread a model too big for one GPU over all of them "
                        "(accelerate's device map; needs accelerate) (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--threads", type=_POS, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $STATERANK_DATA, else the data bundled with staterank)")
    p.add_argument("--seed", type=_NONNEG, default=0, help="random seed (default 0)")


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
        if not p.is_file():
            raise UserError(f"--text {f}: {'a directory; give the text files in it' if p.is_dir() else 'no such file'}")
        try:
            body = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--text {f}: not UTF-8 text") from None
        if not body.strip():
            raise UserError(f"--text {f}: is empty")
        texts[p.stem if p.stem not in texts else str(p)] = body
    return texts


def _run_analyze(args) -> int:
    from .analyze import analyze
    from .capture import Schedule
    from .models import load_model
    from .report.analyze import render

    texts = _analyze_texts(args)  # check inputs before loading a model
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
    p.add_argument("--max-tokens", type=_POS, default=None, help="truncate each text to N tokens (default: all)")
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--stride", type=_POS, default=1, help="measure every N-th token (default 1: all)")
    sched.add_argument("--log-positions", action="store_true", help="measure at t = 1, 2, 4, 8, ... only")
    p.add_argument("--eps", type=_eps, default=1e-4, help="relative threshold ε of the rank (default 1e-4)")
    p.add_argument("--keep-states", action="store_true",
                   help="also write the measured states as safetensors (states/NNNN.safetensors)")
    p.add_argument("--max-state-mb", type=_POSF, default=1024,
                   help="refuse to keep more than this many MiB of states per text (default 1024)")
    p.add_argument("--prefill-chunk", type=_POS, default=256,
                   help="tokens per forward through the cache; bounds activation memory (default 256)")
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
    lines += _ls_optional("probe tasks (--tasks)", "staterank.probes.tasks", "PROBE_TASKS", lambda reg, n: reg[n])
    lines += _ls_optional("pruning methods", "staterank.prune.scores", "METHODS", doc)
    lines += _ls_optional("context suites", "staterank.contexts", "SUITES",
                          lambda reg, n: ", ".join(reg[n]) if isinstance(reg[n], (list, tuple)) else "")
    print("\n".join(lines).rstrip())
    return 0


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list supported model types, tasks, pruning methods and context suites",
                       description="List what this installation supports (sections whose modules are absent are skipped).",
                       epilog="example:\n  staterank ls", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_run_ls)


# ---- stratify ------------------------------------------------------------------------------
def _add_stratify(sub) -> None:
    p = sub.add_parser(
        "stratify",
        help="low/high-rank head classes, bimodality, consistency over time and contexts, decay->rank, vs the model at init",
        description="Analyze a context suite (or read analyze run folders) and compute stratification statistics "
        "beside the same architecture at initialisation. Writes stratify.json, heads.csv, figures, report.md.",
        epilog="""examples:
  staterank stratify --model builtin --out runs/s1
  staterank stratify --model builtin --contexts prose,math,repeat_rare --max-tokens 512 --out runs/s2
  staterank stratify --model Qwen/Qwen3-Next-80B-A3B-Instruct --device cuda --suite natural --out runs/s3
  staterank stratify --from-runs runs/a1 runs/a2 --no-report --out runs/s4   # from analyze run folders
""", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--out", required=True, help="run folder (a finished one with the same config is resumed, never overwritten)")
    p.add_argument("--suite", default="default", help="context suite: default (7 contexts incl. the two repetition attacks) or natural")
    p.add_argument("--contexts", default=None, help="comma-separated subset of builtin contexts, e.g. prose,math,repeat_rare")
    p.add_argument("--context-file", action="append", default=[], metavar="PATH", help="add a UTF-8 text file as a context (repeatable)")
    p.add_argument("--hf-context", action="append", default=[], metavar="DATASET[:CONFIG]:SPLIT:COLUMN",
                   help="add a context from an HF dataset (needs `datasets` and network or cache; repeatable)")
    p.add_argument("--max-tokens", type=_POS, default=2048, help="tokens per context (default 2048)")
    p.add_argument("--stride", type=_POS, default=4, help="measure every STRIDE-th token, plus t-early, t-late, last (default 4)")
    p.add_argument("--t-early", type=_POS, default=128, help="early position for the rank-order Spearman (default 128)")
    p.add_argument("--t-late", type=_POS, default=2048, help="late position (default 2048; shorter contexts use their last)")
    p.add_argument("--rule", default="two_cluster", choices=["two_cluster", "threshold"],
                   help="class rule on mean rank / bound: optimal two-cluster split (default) or a fixed --threshold")
    p.add_argument("--threshold", type=_FLOAT, default=None, help="with --rule threshold: low iff mean rank / bound < this")
    p.add_argument("--no-init", action="store_true", help="skip the same-architecture-at-initialisation baseline")
    p.add_argument("--init-gates", default="auto", choices=["auto", "model", "fla"],
                   help="gate init of the baseline: model (its own _init_weights), fla (FLA/Mamba-style), "
                   "auto (default) = model unless that init is memoryless (median decay < 0.5 per token, as "
                   "transformers' Qwen3-Next/Qwen3.5 init), then fla")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="DIR", help="use finished analyze run folders instead of a model")
    p.add_argument("--init-runs", nargs="+", default=None, metavar="DIR",
                   help="with --from-runs: analyze folders of the same texts on the model at initialisation")
    p.add_argument("--eps", type=_eps, default=1e-4, help="threshold-rank epsilon (paper Eq. 6; default 1e-4)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    def run(a) -> int:
        from . import stratify as st

        cfg = st.StratifyConfig(rule=a.rule, threshold=a.threshold, t_early=a.t_early, t_late=a.t_late,
                                max_tokens=a.max_tokens, stride=a.stride, init=not a.no_init,
                                init_gates=a.init_gates, init_seed=a.seed, eps=a.eps)
        if a.init_runs and not a.from_runs:
            raise UserError("--init-runs goes with --from-runs")
        if a.from_runs:
            out = st.stratify_from_runs(a.from_runs, a.out, cfg, a.init_runs)
        else:
            from . import contexts as cx
            from .models import load_model

            cfg.validate()
            loaded = load_model(a.model, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code)
            kw = dict(tokens=a.max_tokens, tokenizer=loaded.tokenizer)
            only = [c.strip() for c in a.contexts.split(",") if c.strip()] if a.contexts else None
            ctxs = cx.suite(a.suite, seed=a.seed, data=a.data_dir, only=only, **kw)
            ctxs += [cx.from_file(f) for f in a.context_file] + [cx.from_hf(s, **kw) for s in a.hf_context]
            out = st.run_stratify(loaded, ctxs, a.out, cfg,
                                  log=(lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr)))
        print(out / "stratify.json")
        if not a.no_report:
            from .report.stratify import render

            print(render(out))
        return 0

    p.set_defaults(func=run)


# ---- probe ---------------------------------------------------------------------------------
PROBE_EPILOG = """examples:
  staterank probe --model builtin --tasks niah --groups low,high,random,layer_random --out runs/p1
  staterank probe --model builtin --tasks niah,mqar,ppl --groups low,high,random,layer_random,byte_random \\
      --fraction 0.389 --seeds 5 --limit 60 --out runs/p2
  staterank probe --model builtin --tasks mqar --groups low,high,layer_random --single-head --single-limit 50 --out runs/p3
  staterank probe --model Qwen/Qwen3-Next-80B-A3B-Instruct --tasks niah,gsm8k --niah-lengths 4096,16384 \\
      --mode mean --limit 100 --out runs/p4
  staterank probe --model builtin --tasks niah --lm-eval gsm8k_local --lm-eval-limit 50 --out runs/p5   # needs the eval extra

tasks: niah (context length x needle depth grid), mqar, multihop, arith (built-in generators),
gsm8k (chat template when the tokenizer has one, final-number exact match), ppl (held-out prose).
groups: low / high (lowest / highest normalised mean rank), random (count-matched), layer_random
(same heads per layer as low / high), byte_random (same recurrent-state bytes as low / high).
Writes one run folder: config.json, scores.json, groups.json, items.jsonl, probe.json,
single_head.csv, figures and report.md. Rerun the same command to resume; finished items are kept.
"""


def _run_probe(args) -> int:
    from .models import load_model
    from .probes.run import probe
    from .report.probe import render

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    lm_tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()] if args.lm_eval else []
    # check cheap inputs before a model loads
    from .probes.groups import check_kinds
    from .probes.tasks import make_task

    if not tasks and not lm_tasks:
        raise UserError("--tasks is empty")
    if not groups:
        raise UserError("--groups is empty: nothing would be ablated")
    niah_lengths = [int(x) if x.is_integer() else x for x in _floats(args.niah_lengths)] if args.niah_lengths else None
    niah_depths = list(_floats(args.niah_depths)) if args.niah_depths else None
    for t in tasks:
        make_task(t, limit=args.limit, seed=args.seed, data_dir=args.data_dir, niah_lengths=niah_lengths,
                  niah_depths=niah_depths)
    check_kinds(groups, args.seeds)
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {args.fraction}")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    folder = probe(
        loaded, tasks, groups, out=args.out, fraction=args.fraction, count=args.count, seeds=args.seeds,
        seed=args.seed, limit=args.limit, mode=args.mode, single_head=args.single_head,
        single_limit=args.single_limit, scores=args.scores, batch_size=args.batch_size, data_dir=args.data_dir,
        niah_lengths=niah_lengths, niah_depths=niah_depths,
        max_new_tokens=args.max_new_tokens, n_shot=args.n_shot, calib_texts=args.calib_texts,
        calib_tokens=args.calib_tokens, progress=not args.quiet, lm_eval_tasks=lm_tasks,
        lm_eval_limit=args.lm_eval_limit,
    )
    print(f"wrote {folder}; report: {render(folder)}")
    return 0


def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe", help="ablate low-/high-rank heads and count-, layer- and byte-matched random controls; measure tasks",
        description="Remove groups of value heads from the in-memory model (zero: the head never writes its state; "
                    "mean: what it feeds the output projection is replaced by its mean over calibration text) and measure tasks on the same "
                    "items as the unablated model, with Wilson intervals and exact paired tests.",
        epilog=PROBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--tasks", default="niah", help="comma-separated: niah, mqar, multihop, arith, gsm8k, ppl (default niah)")
    p.add_argument("--groups", default="low,high,random,layer_random",
                   help="comma-separated: low, high, random, layer_random, byte_random (default low,high,random,layer_random)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=_FLOAT, default=None, help="group size as a fraction of all value heads (default 7/18)")
    size.add_argument("--count", type=int, default=None, help="group size in heads")
    p.add_argument("--seeds", type=_POS, default=5, help="random draws per control (default 5)")
    p.add_argument("--limit", type=_POS, default=None,
                   help="items per task, exactly (defaults: niah 60 spread over the grid — fewer than its cells measures "
                        "that many cells spread over it —, others 100, ppl 32 windows)")
    p.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode (default zero)")
    p.add_argument("--single-head", action="store_true", help="also ablate every head alone (per-head costs, correlated with rank and nuclear norm)")
    p.add_argument("--single-limit", type=_POS, default=None, help="items per task for single-head ablations (default: all)")
    p.add_argument("--scores", default=None, metavar="JSON",
                   help="per-head mean_rank / mean_nuclear (stratify HeadStats JSON) instead of measuring them on prose")
    p.add_argument("--niah-lengths", default=None, help="NIAH context lengths in tokens, e.g. 256,512,1024 (default)")
    p.add_argument("--niah-depths", default=None, help="NIAH needle depths in [0,1], e.g. 0,0.25,0.5,0.75,1 (default)")
    p.add_argument("--max-new-tokens", type=_POS, default=None, help="generation budget (defaults: 8; gsm8k 256, or 1024 with a chat template — Thinking models may "
                        "need thousands; the report gives the share of outputs cut at the budget)")
    p.add_argument("--n-shot", type=_NONNEG, default=0, help="GSM8K few-shot examples for prompts without a chat template")
    p.add_argument("--batch-size", type=_POS, default=16, help="items per batch (equal-length prompts batch without padding)")
    p.add_argument("--calib-texts", type=_POS, default=8, help="prose segments for scores / mean calibration (default 8)")
    p.add_argument("--calib-tokens", type=_POS, default=512, help="tokens per calibration segment (default 512)")
    p.add_argument("--lm-eval", default=None, metavar="TASKS",
                   help="also run these lm-evaluation-harness tasks per condition (gsm8k_local runs offline)")
    p.add_argument("--lm-eval-limit", type=_POS, default=None, help="lm-eval --limit per task")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=_run_probe)


# ---- prune ---------------------------------------------------------------------------------
PRUNE_EPILOG = """examples:
  staterank prune --model builtin --method jrnp --alpha 0.5 --fraction 0.389 --ranking per_layer --out runs/pr1
  staterank prune --model builtin --fraction 0.389 --out runs/pr2        # the paper's global top-k (in memory)
  staterank prune --model builtin --sweep --alphas 0,0.5,1 --fractions 0.125,0.25,0.389 --out runs/sw1
  staterank prune --model builtin --plan runs/pr1/plan.json --out runs/pr3           # apply a saved plan

rankings: global = one top-k over all heads (the paper's; heads per layer usually end up uneven, which
stock transformers cannot load, so such a plan is pruned and checked in memory, not exported); per_layer = round(fraction*H) heads from every
layer (uniform head counts: exports, and stock transformers reloads DIR/model/).
"""


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {s!r}") from None


def _given(args, *names: str) -> list[str]:
    """The options among ``names`` the user gave (None or False means not given), as flags."""
    # identity, not equality: --alpha 0 or --fraction 0.0 are given (0.0 == False)
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) is not None and getattr(args, n) is not False]


def _run_prune(args) -> int:
    from .models import load_model
    from .prune.run import CheckFailed, PruneConfig, SweepConfig, run_prune, run_sweep
    from .report.prune import render

    budget = {"fraction": args.fraction, "count": args.count, "bytes": args.bytes}
    # scoring options default to None so that "given" is knowable; PruneConfig's defaults apply
    d = PruneConfig()
    method = d.method if args.method is None else args.method
    alpha = d.alpha if args.alpha is None else args.alpha
    ranking = d.ranking if args.ranking is None else args.ranking
    if args.plan:
        from .prune.plan import Plan

        # the plan fixes the heads: scoring options would be recorded in config.json but not used
        moot = _given(args, "method", "alpha", "ranking", "fraction", "count", "bytes", "sweep", "alphas", "fractions")
        if moot:
            raise UserError(f"--plan fixes the heads to remove; {', '.join(moot)} do(es) not apply")
        plan = Plan.load(args.plan)
        method, alpha, ranking = plan.method, plan.params.get("alpha", alpha), plan.ranking
        budget = {"fraction": None, "count": len(plan.removed), "bytes": None}
    if all(v is None for v in budget.values()):
        budget["fraction"] = d.fraction
    cfg = PruneConfig(
        method=method, alpha=alpha, **budget, ranking=ranking, calib_suite=args.calib,
        calib_tokens=args.calib_tokens, calib_stride=args.calib_stride,
        tasks=tuple(t.strip() for t in args.eval.split(",") if t.strip()), eval_n=args.eval_n,
        random_seeds=args.random_seeds, state_context=args.state_context, state_batch=args.state_batch,
        decode_tokens=args.decode_tokens, export=not args.no_export, seed=args.seed, plan_file=args.plan,
        data_dir=args.data_dir,
    )
    if args.sweep:
        # the grid is JRNP over --alphas x --fractions (+ inverse JRNP at --alpha, + random), not exported
        moot = _given(args, "method", "fraction", "count", "bytes", "no_export")
        if moot:
            raise UserError(f"--sweep scores JRNP over --alphas x --fractions; {', '.join(moot)} do(es) not apply")
        d_sweep = SweepConfig()
        sc = SweepConfig(base=cfg, alphas=d_sweep.alphas if args.alphas is None else _floats(args.alphas),
                         fractions=d_sweep.fractions if args.fractions is None else _floats(args.fractions))
        if not sc.alphas or not sc.fractions:
            raise UserError("--sweep needs at least one alpha and one fraction")
        cfg.validate()
        loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        res = run_sweep(loaded, sc, args.out, progress=not args.quiet)
        print(f"wrote {args.out} ({len(res['points'])} sweep points); report: {render(args.out)}")
        return 0
    if args.alphas is not None or args.fractions is not None:
        raise UserError("--alphas and --fractions set the grid of --sweep; without it, give --alpha and --fraction")
    cfg.validate()  # bad input fails before a model loads
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    try:
        res = run_prune(loaded, cfg, args.out, progress=not args.quiet)
    except CheckFailed:
        render(args.out)  # the report shows the failed check; main prints it and exits 3
        raise
    fs = res["fraction_saved"]["linear_state"]
    print(f"wrote {args.out}: removed {len(res['removed'])} of {res['value_heads']} heads, linear state "
          f"{res['state_bytes_before']['linear_state']} -> {res['state_bytes_after']['linear_state']} bytes "
          f"({fs:.1%} saved); check {res['check']['max_abs_logit_diff_vs_masked']:.2g}"
          f"{'; not exported (uneven heads per layer)' if res.get('not_exported') else ''}; report: {render(args.out)}")
    return 0


def _add_prune(sub) -> None:
    from .prune.scores import METHODS

    p = sub.add_parser(
        "prune", help="zero-shot value-head pruning (Joint Rank-Norm, Eq. 14) with surgery, export and controls",
        description="Score every linear-attention value head on calibration contexts, remove the highest-scoring "
                    "ones physically, export a stock HF checkpoint, verify it against the zero-ablated model, and "
                    "measure state bytes, decode speed and accuracy beside count-, layer- and byte-matched random "
                    "controls.",
        epilog=PRUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--method", default=None, help=f"scoring method: {', '.join(METHODS)} (default jrnp)")
    p.add_argument("--alpha", type=_FLOAT, default=None, help="JRNP weight of rank vs norm, in [0, 1] (default 0.5)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--fraction", type=_FLOAT, default=None, help="share of value heads to remove (default 0.389 = 7/18)")
    b.add_argument("--count", type=int, default=None, help="number of value heads to remove")
    b.add_argument("--bytes", type=int, default=None, help="recurrent-state bytes per sequence to free (at least)")
    p.add_argument("--ranking", default=None, choices=["global", "per_layer"],
                   help="global top-k (default) or the same count from every layer (exportable)")
    p.add_argument("--calib", default="natural", help="calibration context suite (default natural)")
    p.add_argument("--calib-tokens", type=_POS, default=512, help="tokens per calibration context (default 512)")
    p.add_argument("--calib-stride", type=_POS, default=8, help="measure the rank every N tokens (default 8)")
    p.add_argument("--eval", default="mqar,niah", help="comma-separated builtin tasks (default mqar,niah)")
    p.add_argument("--eval-n", type=_POS, default=100, help="items per task (default 100)")
    p.add_argument("--random-seeds", type=_NONNEG, default=5, help="seeds per random control (default 5)")
    p.add_argument("--state-context", type=_POS, default=2048, help="context length for state bytes (default 2048)")
    p.add_argument("--state-batch", type=_POS, default=1, help="batch size for state bytes (default 1)")
    p.add_argument("--decode-tokens", type=_POS, default=32, help="tokens for the decode-speed measurement (default 32)")
    p.add_argument("--no-export", action="store_true", help="prune in memory only (any plan; no DIR/model/)")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of scoring")
    p.add_argument("--sweep", action="store_true", help="sweep --alphas x --fractions (zero-ablated), Pareto plot")
    p.add_argument("--alphas", default=None, help="sweep: alphas (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--fractions", default=None, help="sweep: fractions (default 0.125,0.25,0.389,0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=_run_prune)


# ---- run / verify ---------------------------------------------------------------------------
def _cmd_run(a) -> int:
    from .pipeline import RunConfig, run

    overrides = list(a.set or [])
    for key, val in (("model", a.model), ("seed", a.seed), ("device", a.device), ("dtype", a.dtype),
                     ("data_dir", a.data_dir)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if a.stages:
        overrides.append(f"stages=[{a.stages}]")
    cfg = RunConfig.load(a.config, overrides)
    folder = run(cfg, a.out, progress=not a.quiet)
    report = _render_run(folder)
    _print_claims(folder)
    print(f"\nreport: {report}")
    return 0


def _render_run(folder) -> str:
    from pathlib import Path

    from .report import claims as rc, probe as rp, prune as rpr, stratify as rs

    folder = Path(folder)
    for stage, mod in (("stratify", rs), ("probe", rp), ("prune", rpr)):
        if (folder / stage / f"{stage}.json").exists():
            mod.render(folder / stage)
    return str(rc.render(folder))


def _print_claims(folder) -> None:
    """Compute and print only: verify works on a read-only run and leaves claims.json as written."""
    from .claims import claims
    from .report.claims import claims_table

    print(claims_table(claims(folder)))


def _cmd_verify(a) -> int:
    from pathlib import Path

    folder = Path(a.run)
    if not (folder / "config.json").is_file():
        from .errors import UserError

        raise UserError(f"{folder} is not a staterank run folder (no config.json)")
    _print_claims(folder)
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="the whole pipeline: stratify → probe → prune → claims report",
        description="analyze over the context suite → stratify (with the initialisation baseline) → probe "
        "(low / high / random controls) → prune (JRNP + random baselines) → report.md whose first table lists "
        "each claim of arXiv 2602.02195 with the paper's number, ours and a verdict. A killed run resumes.",
        epilog="examples:\n  staterank run --model builtin --out runs/demo\n"
        "  staterank run --model Qwen/Qwen3-Next-80B-A3B-Instruct --config run.yaml --out runs/q3n\n"
        "  staterank run --set probe.limit=16 --set stratify.max_tokens=256 --out runs/quick\n"
        "  staterank run --model negative-control --out runs/neg   # untrained, default gates: nothing should 'hold'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF id, local folder, 'builtin' (default) or 'negative-control'")
    p.add_argument("--config", default=None, help="YAML config (see staterank/pipeline.py for keys)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. probe.limit=32 (repeatable)")
    p.add_argument("--stages", default=None, help="comma-separated subset of stratify,probe,prune")
    p.add_argument("--seed", type=_NONNEG, default=None, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="torch device")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $STATERANK_DATA, else the data bundled with staterank)")
    p.add_argument("--threads", type=_POS, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=_cmd_run)

    v = sub.add_parser("verify", help="print the claims table of a run folder",
                       epilog="example:\n  staterank verify runs/demo", formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("run", help="a folder written by staterank run")
    v.set_defaults(func=_cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="staterank",
        description="Per-head recurrent-state rank dynamics of linear-attention LLMs (arXiv 2602.02195), measured with controls.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_analyze, _add_ls, _add_stratify, _add_probe, _add_prune, _add_run):
        add(sub)
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
        return int(args.func(args) or 0)
    except UserError as e:
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


if __name__ == "__main__":
    sys.exit(main())
