"""staterank compress: per-head state precision vs pruning at equal state bytes (staterank.compress.run.run_compress)."""

from __future__ import annotations

from .common import add_common, add_options, add_parser, config_from, load

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

    cfg = config_from(CompressConfig, args, seed=args.seed, data_dir=args.data_dir)
    cfg.validate()  # bad input fails before a model loads
    res = run_compress(load(args), cfg, args.out)
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
    from ..compress.config import CompressConfig

    p = add_parser(
        sub, "compress", help="per-head state precision (bf16 / fp8 / int8) vs pruning at equal state bytes",
        description="Simulate storing each value head's recurrent state at reduced precision (rounded at every "
                    "decode step and prefill chunk boundary), measure a per-head sensitivity table and its "
                    "correlation with rank and norm, and compare pruning-only, precision-only and planned mixed "
                    "plans at equal state bytes beside random controls; int8 of all heads vs the unmodified model.",
        epilog=EPILOG,
    )
    add_common(p)
    add_options(p, CompressConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
