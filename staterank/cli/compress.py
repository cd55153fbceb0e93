"""staterank compress: per-head state precision vs pruning at equal state bytes (staterank.compress.run.run_compress)."""

from __future__ import annotations

from .common import NONNEG, POS, UNIT, add_common, add_parser, floats, load, names

EPILOG = """examples:
  staterank compress --model builtin --out runs/c1
  staterank compress --model builtin --budgets 0.5,0.25 --methods jrnp,rank,norm --random-seeds 3 --out runs/c2
  staterank compress --model builtin --ladder bf16,fp8_e4m3_head --chunk 128 --out runs/c3

Storing a head's state at precision P: the state kept between steps is rounded to P each time it is
stored, after every decode step and at every --chunk boundary of the prefill (rounding inside a chunk
is not simulated). Precisions: fp32 bf16 fp16 fp8_e4m3_head fp8_e4m3_row fp8_e5m2_head fp8_e5m2_row
int8_head int8_row drop (_head / _row: one fp32 scale per head / per row of the K x V state).
Curves: pruning-only and precision-only in each --methods order, mixed = the planner on the per-head
sensitivity table, each beside random controls at the same bytes.
"""


def command(args) -> int:
    from ..compress.config import CompressConfig
    from ..compress.run import run_compress
    from ..report.compress import render

    d = CompressConfig()
    cfg = CompressConfig(
        budgets=d.budgets if args.budgets is None else floats(args.budgets),
        methods=tuple(names(args.methods)), alpha=args.alpha,
        ladder=d.ladder if args.ladder is None else tuple(names(args.ladder)),
        sensitivity=d.sensitivity if args.sensitivity is None else tuple(names(args.sensitivity)),
        all_heads=d.all_heads if args.all_heads is None else tuple(names(args.all_heads)),
        chunk=args.chunk, tasks=tuple(names(args.eval)), eval_n=args.eval_n, sens_n=args.sens_n,
        max_new_tokens=args.max_new_tokens, random_seeds=args.random_seeds, controls=tuple(names(args.controls)),
        calib_suite=args.calib,
        calib_tokens=args.calib_tokens, calib_stride=args.calib_stride, seed=args.seed, data_dir=args.data_dir,
    )
    cfg.validate()  # bad input fails before a model loads
    loaded = load(args)
    res = run_compress(loaded, cfg, args.out, progress=not args.quiet)
    lines = []
    for b in ("0.5", "0.25"):
        w = res["winners"].get(b) or {}
        top = next((c for c in w.get("curves", []) if c["curve"] == w.get("winner")), None)
        if top:
            lines.append(f"within {float(b):.0%} of the state bytes best {w['winner']} (accuracy {top['acc']:.3f} at "
                         f"{top['bytes_fraction']:.1%})")
    print(f"wrote {args.out}: unmodified accuracy {res['base']['all']['acc']:.3f}; "
          f"{'; '.join(lines) or 'no plan met the budgets'}; report: {render(args.out)}")
    return 0


def add(sub) -> None:
    p = add_parser(
        sub, "compress", help="per-head state precision (bf16 / fp8 / int8) vs pruning at equal state bytes",
        description="Simulate storing each value head's recurrent state at reduced precision (rounded at every "
                    "decode step and prefill chunk boundary), measure a per-head sensitivity table and its "
                    "correlation with rank and norm, and compare pruning-only, precision-only and planned mixed "
                    "plans at equal state bytes beside random controls; int8 of all heads vs the unmodified model.",
        epilog=EPILOG,
    )
    add_common(p)
    p.add_argument("--budgets", default=None, help="shares of the fp32 state bytes (default 0.75,0.5,0.25,0.125)")
    p.add_argument("--methods", default="jrnp", help="head orders for pruning-/precision-only: jrnp, rank, norm, inverse, ... (default jrnp)")
    p.add_argument("--alpha", type=UNIT, default=0.5, help="JRNP weight of rank vs norm (default 0.5)")
    p.add_argument("--ladder", default=None, help="precision-only rungs, coarser last (default bf16,int8_head)")
    p.add_argument("--sensitivity", default=None,
                   help="precisions of the per-head table, the planner's options (default bf16,fp8_e4m3_head,int8_head,drop)")
    p.add_argument("--all-heads", default=None, help="precisions applied to every head vs the unmodified model (default int8_head,int8_row)")
    p.add_argument("--chunk", type=POS, default=64, help="prefill tokens between stored (rounded) states (default 64)")
    p.add_argument("--eval", default="mqar,niah", help="comma-separated builtin tasks (default mqar,niah)")
    p.add_argument("--eval-n", type=POS, default=32, help="items per task for accuracy (default 32)")
    p.add_argument("--sens-n", type=POS, default=8, help="items per task for the sensitivity table (default 8)")
    p.add_argument("--max-new-tokens", type=POS, default=8, help="greedy tokens per answer (default 8)")
    p.add_argument("--random-seeds", type=NONNEG, default=2, help="random controls per plan (default 2)")
    p.add_argument("--controls", default="any",
                   help="random controls: any (same precisions on random heads: count- and byte-matched), layer "
                        "(within each layer: layer-matched too), or any,layer (default any)")
    p.add_argument("--calib", default="natural", help="calibration context suite for rank and norm (default natural)")
    p.add_argument("--calib-tokens", type=POS, default=256, help="tokens per calibration context (default 256)")
    p.add_argument("--calib-stride", type=POS, default=8, help="measure the rank every N tokens (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
