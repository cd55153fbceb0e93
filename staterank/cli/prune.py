"""staterank prune: score, remove, export and check value heads (staterank.prune.run.run_prune / run_sweep)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_common, add_options, add_parser, config_from, given, load

EPILOG = """examples:
  staterank prune --model builtin --method jrnp --alpha 0.5 --fraction 0.389 --ranking per_layer --out runs/pr1
  staterank prune --model builtin --fraction 0.389 --ranking global --out runs/pr2   # the paper's top-k (in memory)
  staterank prune --model builtin --sweep --alphas 0,0.5,1 --fractions 0.125,0.25,0.389 --out runs/sw1
  staterank prune --model builtin --plan runs/pr1/plan.json --out runs/pr3           # apply a saved plan

rankings: key_groups (default) = whole GVA groups (a key head with all its value heads), round(fraction*H_k)
from every layer: exports with a regular layout, no key head duplicated, every cache smaller, decodes faster;
per_layer = round(fraction*H) value heads from every layer (exports; splitting a group duplicates its key head,
so the conv state can grow); global = one top-k over all heads (the paper's; heads per layer usually end up
uneven, which stock transformers cannot load, so such a plan is pruned and checked in memory, not exported).
prune.json's "layout" says what a plan implies: key heads before/after, duplicates, engine compatibility.
"""


def command(args) -> int:
    from ..prune.run import CheckFailed, PruneConfig, SweepConfig, run_prune, run_sweep
    from ..report.prune import render

    fixed = dict(seed=args.seed, data_dir=args.data_dir)
    if given(args, "fraction", "count", "bytes"):  # one budget replaces the default one
        fixed.update(fraction=args.fraction, count=args.count, bytes=args.bytes)
    if args.plan:
        from ..prune.plan import Plan

        # the plan fixes the heads: scoring options would be recorded in config.json but not used
        moot = given(args, "method", "alpha", "ranking", "fraction", "count", "bytes", "sweep", "alphas", "fractions")
        if moot:
            raise UserError(f"--plan fixes the heads to remove; {', '.join(moot)} do(es) not apply")
        plan = Plan.load(args.plan)
        fixed.update(method=plan.method, alpha=plan.params.get("alpha", PruneConfig.alpha), ranking=plan.ranking,
                     fraction=None, count=len(plan.removed), bytes=None)
    cfg = config_from(PruneConfig, args, **fixed)
    if args.no_export and args.export_dtype is not None:
        raise UserError("--export-dtype sets the exported checkpoint's dtype; with --no-export there is none")
    if args.sweep:
        # the grid is JRNP over --alphas x --fractions (+ inverse JRNP at --alpha, + random), not exported
        moot = given(args, "method", "fraction", "count", "bytes", "no_export", "export_dtype")
        if moot:
            raise UserError(f"--sweep scores JRNP over --alphas x --fractions; {', '.join(moot)} do(es) not apply")
        sc = config_from(SweepConfig, args, base=cfg)
        sc.validate()
        res = run_sweep(load(args), sc, args.out)
        print(f"wrote {args.out} ({len(res['points'])} sweep points); report: {render(args.out)}")
        return 0
    if args.alphas is not None or args.fractions is not None:
        raise UserError("--alphas and --fractions set the grid of --sweep; without it, give --alpha and --fraction")
    cfg.validate()  # bad input fails before a model loads
    loaded = load(args)
    try:
        res = run_prune(loaded, cfg, args.out)
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
    from ..prune.config import PruneConfig, SweepConfig

    p = add_parser(
        sub, "prune", help="zero-shot value-head pruning (Joint Rank-Norm, Eq. 14) with surgery, export and controls",
        description="Score every linear-attention value head on calibration contexts, remove the highest-scoring "
                    "ones physically, export a stock HF checkpoint, verify it against the zero-ablated model, and "
                    "measure state bytes, decode speed and accuracy beside count-, layer- and byte-matched random "
                    "controls.",
        epilog=EPILOG,
    )
    add_common(p)
    add_options(p, PruneConfig)
    p.add_argument("--sweep", action="store_true", help="sweep --alphas x --fractions (zero-ablated), Pareto plot")
    add_options(p, SweepConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
