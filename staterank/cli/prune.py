"""staterank prune: score, remove, export and check value heads (staterank.prune.run.run_prune / run_sweep)."""

from __future__ import annotations

from ..errors import UserError
from .common import NONNEG, POS, SHARE, UNIT, add_common, add_parser, floats, given, load, names

EPILOG = """examples:
  staterank prune --model builtin --method jrnp --alpha 0.5 --fraction 0.389 --ranking per_layer --out runs/pr1
  staterank prune --model builtin --fraction 0.389 --out runs/pr2        # the paper's global top-k (in memory)
  staterank prune --model builtin --sweep --alphas 0,0.5,1 --fractions 0.125,0.25,0.389 --out runs/sw1
  staterank prune --model builtin --plan runs/pr1/plan.json --out runs/pr3           # apply a saved plan

rankings: global = one top-k over all heads (the paper's; heads per layer usually end up uneven, which
stock transformers cannot load, so such a plan is pruned and checked in memory, not exported); per_layer = round(fraction*H) heads from every
layer (uniform head counts: exports, and stock transformers reloads DIR/model/); key_groups = whole GVA groups
(a key head with all its value heads) from every layer: exports with a regular layout, no key head duplicated.
"""


def command(args) -> int:
    from ..prune.run import CheckFailed, PruneConfig, SweepConfig, run_prune, run_sweep
    from ..report.prune import render

    budget = {"fraction": args.fraction, "count": args.count, "bytes": args.bytes}
    # scoring options default to None so that "given" is knowable; PruneConfig's defaults apply
    d = PruneConfig()
    method = d.method if args.method is None else args.method
    alpha = d.alpha if args.alpha is None else args.alpha
    ranking = d.ranking if args.ranking is None else args.ranking
    if args.plan:
        from ..prune.plan import Plan

        # the plan fixes the heads: scoring options would be recorded in config.json but not used
        moot = given(args, "method", "alpha", "ranking", "fraction", "count", "bytes", "sweep", "alphas", "fractions")
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
        tasks=tuple(names(args.eval)), eval_n=args.eval_n,
        random_seeds=args.random_seeds, state_context=args.state_context, state_batch=args.state_batch,
        decode_tokens=args.decode_tokens, export=not args.no_export, seed=args.seed, plan_file=args.plan,
        data_dir=args.data_dir, export_dtype=args.export_dtype,
    )
    if args.no_export and args.export_dtype is not None:
        raise UserError("--export-dtype sets the exported checkpoint's dtype; with --no-export there is none")
    if args.sweep:
        # the grid is JRNP over --alphas x --fractions (+ inverse JRNP at --alpha, + random), not exported
        moot = given(args, "method", "fraction", "count", "bytes", "no_export", "export_dtype")
        if moot:
            raise UserError(f"--sweep scores JRNP over --alphas x --fractions; {', '.join(moot)} do(es) not apply")
        d_sweep = SweepConfig()
        sc = SweepConfig(base=cfg, alphas=d_sweep.alphas if args.alphas is None else floats(args.alphas),
                         fractions=d_sweep.fractions if args.fractions is None else floats(args.fractions))
        if not sc.alphas or not sc.fractions:
            raise UserError("--sweep needs at least one alpha and one fraction")
        cfg.validate()
        loaded = load(args)
        res = run_sweep(loaded, sc, args.out, progress=not args.quiet)
        print(f"wrote {args.out} ({len(res['points'])} sweep points); report: {render(args.out)}")
        return 0
    if args.alphas is not None or args.fractions is not None:
        raise UserError("--alphas and --fractions set the grid of --sweep; without it, give --alpha and --fraction")
    cfg.validate()  # bad input fails before a model loads
    loaded = load(args)
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


def add(sub) -> None:
    from ..prune.config import EXPORT_DTYPES
    from ..prune.scores import METHODS

    p = add_parser(
        sub, "prune", help="zero-shot value-head pruning (Joint Rank-Norm, Eq. 14) with surgery, export and controls",
        description="Score every linear-attention value head on calibration contexts, remove the highest-scoring "
                    "ones physically, export a stock HF checkpoint, verify it against the zero-ablated model, and "
                    "measure state bytes, decode speed and accuracy beside count-, layer- and byte-matched random "
                    "controls.",
        epilog=EPILOG,
    )
    add_common(p)
    p.add_argument("--method", default=None, help=f"scoring method: {', '.join(METHODS)} (default jrnp)")
    p.add_argument("--alpha", type=UNIT, default=None, help="JRNP weight of rank vs norm, in [0, 1] (default 0.5)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--fraction", type=SHARE, default=None, help="share of value heads to remove (default 0.389 = 7/18)")
    b.add_argument("--count", type=POS, default=None, help="number of value heads to remove")
    b.add_argument("--bytes", type=POS, default=None, help="recurrent-state bytes per sequence to free (at least)")
    p.add_argument("--ranking", default=None, choices=["global", "per_layer", "key_groups"],
                   help="global top-k (default), the same count from every layer (exportable), or whole key-head "
                        "groups from every layer (exportable, no key head duplicated: every state shrinks)")
    p.add_argument("--calib", default="natural", help="calibration context suite (default natural)")
    p.add_argument("--calib-tokens", type=POS, default=512, help="tokens per calibration context (default 512)")
    p.add_argument("--calib-stride", type=POS, default=8, help="measure the rank every N tokens (default 8)")
    p.add_argument("--eval", default="mqar,niah", help="comma-separated builtin tasks (default mqar,niah)")
    p.add_argument("--eval-n", type=POS, default=100, help="items per task (default 100)")
    p.add_argument("--random-seeds", type=NONNEG, default=5, help="seeds per random control (default 5; 0: no random controls)")
    p.add_argument("--state-context", type=POS, default=2048, help="context length for state bytes (default 2048)")
    p.add_argument("--state-batch", type=POS, default=1, help="batch size for state bytes (default 1)")
    p.add_argument("--decode-tokens", type=POS, default=32, help="tokens for the decode-speed measurement (default 32)")
    p.add_argument("--no-export", action="store_true", help="prune in memory only (any plan; no DIR/model/)")
    p.add_argument("--export-dtype", default=None, choices=EXPORT_DTYPES,
                   help="dtype of the exported checkpoint (default: the checkpoint's own, e.g. bf16 stays bf16 when pruned on CPU)")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of scoring")
    p.add_argument("--sweep", action="store_true", help="sweep --alphas x --fractions (zero-ablated), Pareto plot")
    p.add_argument("--alphas", default=None, help="sweep: alphas (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--fractions", default=None, help="sweep: fractions (default 0.125,0.25,0.389,0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
