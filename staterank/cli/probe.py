"""staterank probe: ablate head groups beside matched random controls and measure tasks (staterank.probes.run.probe)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_common, add_options, add_parser, config_from, load

EPILOG = """examples:
  staterank probe --model builtin --tasks niah --groups low,high,random,layer_random --out runs/p1
  staterank probe --model builtin --tasks niah,mqar,ppl --groups low,high,random,layer_random,byte_random \\
      --fraction 0.389 --seeds 5 --limit 60 --out runs/p2
  staterank probe --model builtin --tasks mqar --groups low,high,layer_random --single-head --single-limit 50 --out runs/p3
  staterank probe --model Qwen/Qwen3-Next-80B-A3B-Instruct --tasks niah,gsm8k --niah-lengths 4096,16384 \\
      --mode mean --limit 100 --out runs/p4
  staterank probe --model builtin --tasks niah --lm-eval gsm8k_local --lm-eval-limit 50 --out runs/p5   # needs the eval extra
  staterank probe --model builtin --tasks niah --lm-eval my_ppl --lm-eval-include tasks/ --lm-eval-batch-size 8 --out runs/p6

tasks: niah (context length x needle depth grid), mqar, multihop, arith (built-in generators),
gsm8k (chat template when the tokenizer has one, final-number exact match), ppl (held-out prose).
groups: low / high (lowest / highest normalised mean rank), random (count-matched), layer_random
(same heads per layer as low / high), byte_random (same recurrent-state bytes as low / high).
Writes one run folder: config.json, scores.json, groups.json, items.jsonl, probe.json,
single_head.csv, figures and report.md. Rerun the same command to resume; finished items are kept.
"""


def command(args) -> int:
    from ..probes.config import ProbeConfig
    from ..probes.run import run_probe
    from ..report.probe import render

    cfg = config_from(ProbeConfig, args, out=args.out, seed=args.seed, data_dir=args.data_dir)
    cfg.validate()  # cheap inputs are checked before a model loads
    if args.single_limit is not None and not args.single_head:
        raise UserError("--single-limit applies only with --single-head")
    folder = run_probe(load(args), cfg)
    print(f"wrote {folder}; report: {render(folder)}")
    return 0


def add(sub) -> None:
    from ..probes.config import ProbeConfig

    p = add_parser(
        sub, "probe", help="ablate low-/high-rank heads and count-, layer- and byte-matched random controls; measure tasks",
        description="Remove groups of value heads from the in-memory model (zero: the head never writes its state; "
                    "mean: what it feeds the output projection is replaced by its mean over calibration text) and measure tasks on the same "
                    "items as the unablated model, with Wilson intervals and exact paired tests.",
        epilog=EPILOG,
    )
    add_common(p)
    add_options(p, ProbeConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
