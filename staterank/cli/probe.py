"""staterank probe: ablate head groups beside matched random controls and measure tasks (staterank.probes.run.probe)."""

from __future__ import annotations

from ..errors import UserError
from .common import NONNEG, POS, SHARE1, add_common, add_parser, floats, load, names

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
    from ..probes.run import probe
    from ..report.probe import render

    tasks = names(args.tasks)
    groups = names(args.groups)
    lm_tasks = names(args.lm_eval) if args.lm_eval else []
    # check cheap inputs before a model loads
    from ..probes.groups import check_kinds
    from ..probes.tasks import make_task

    if not tasks and not lm_tasks:
        raise UserError("--tasks is empty")
    if not groups:
        raise UserError("--groups is empty: nothing would be ablated")
    niah_lengths = [int(x) if x.is_integer() else x for x in floats(args.niah_lengths)] if args.niah_lengths else None
    niah_depths = list(floats(args.niah_depths)) if args.niah_depths else None
    for t in tasks:
        make_task(t, limit=args.limit, seed=args.seed, data_dir=args.data_dir, niah_lengths=niah_lengths,
                  niah_depths=niah_depths)
    check_kinds(groups, args.seeds)
    if args.single_limit is not None and not args.single_head:
        raise UserError("--single-limit applies only with --single-head")
    loaded = load(args)
    folder = probe(
        loaded, tasks, groups, out=args.out, fraction=args.fraction, count=args.count, seeds=args.seeds,
        seed=args.seed, limit=args.limit, mode=args.mode, single_head=args.single_head,
        single_limit=args.single_limit, scores=args.scores, batch_size=args.batch_size, data_dir=args.data_dir,
        niah_lengths=niah_lengths, niah_depths=niah_depths,
        max_new_tokens=args.max_new_tokens, n_shot=args.n_shot, calib_texts=args.calib_texts,
        calib_tokens=args.calib_tokens, progress=not args.quiet, lm_eval_tasks=lm_tasks,
        lm_eval_limit=args.lm_eval_limit, lm_eval_include=args.lm_eval_include or (),
        lm_eval_batch_size=args.lm_eval_batch_size,
    )
    print(f"wrote {folder}; report: {render(folder)}")
    return 0


def add(sub) -> None:
    p = add_parser(
        sub, "probe", help="ablate low-/high-rank heads and count-, layer- and byte-matched random controls; measure tasks",
        description="Remove groups of value heads from the in-memory model (zero: the head never writes its state; "
                    "mean: what it feeds the output projection is replaced by its mean over calibration text) and measure tasks on the same "
                    "items as the unablated model, with Wilson intervals and exact paired tests.",
        epilog=EPILOG,
    )
    add_common(p)
    p.add_argument("--tasks", default="niah", help="comma-separated: niah, mqar, multihop, arith, gsm8k, ppl (default niah)")
    p.add_argument("--groups", default="low,high,random,layer_random",
                   help="comma-separated: low, high, random, layer_random, byte_random (default low,high,random,layer_random)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=SHARE1, default=None, help="group size as a fraction of all value heads (default 7/18)")
    size.add_argument("--count", type=POS, default=None, help="group size in heads")
    p.add_argument("--seeds", type=POS, default=5, help="random draws per control (default 5)")
    p.add_argument("--limit", type=POS, default=None,
                   help="items per task, exactly (defaults: niah 60 spread over the grid — fewer than its cells measures "
                        "that many cells spread over it —, others 100, ppl 32 windows)")
    p.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode (default zero)")
    p.add_argument("--single-head", action="store_true", help="also ablate every head alone (per-head costs, correlated with rank and nuclear norm)")
    p.add_argument("--single-limit", type=POS, default=None, help="items per task for single-head ablations (default: all)")
    p.add_argument("--scores", default=None, metavar="JSON",
                   help="per-head mean_rank / mean_nuclear (stratify HeadStats JSON) instead of measuring them on prose")
    p.add_argument("--niah-lengths", default=None, help="NIAH context lengths in tokens, e.g. 256,512,1024 (default)")
    p.add_argument("--niah-depths", default=None, help="NIAH needle depths in [0,1], e.g. 0,0.25,0.5,0.75,1 (default)")
    p.add_argument("--max-new-tokens", type=POS, default=None, help="generation budget (defaults: 8; gsm8k 256, or 1024 with a chat template — Thinking models may "
                        "need thousands; the report gives the share of outputs cut at the budget)")
    p.add_argument("--n-shot", type=NONNEG, default=0, help="GSM8K few-shot examples for prompts without a chat template")
    p.add_argument("--batch-size", type=POS, default=16, help="items per batch (equal-length prompts batch without padding)")
    p.add_argument("--calib-texts", type=POS, default=8, help="prose segments for scores / mean calibration (default 8)")
    p.add_argument("--calib-tokens", type=POS, default=512, help="tokens per calibration segment (default 512)")
    p.add_argument("--lm-eval", default=None, metavar="TASKS",
                   help="also run these lm-evaluation-harness tasks per condition (gsm8k_local runs offline)")
    p.add_argument("--lm-eval-limit", type=POS, default=None, help="lm-eval --limit per task")
    p.add_argument("--lm-eval-include", action="append", default=None, metavar="DIR",
                   help="a folder of local lm-eval task YAMLs (lm-eval's --include_path; repeatable); local data runs offline")
    p.add_argument("--lm-eval-batch-size", type=POS, default=1,
                   help="lm-eval batch size (default 1; checked exact for log-likelihood tasks only, see staterank.probes.lmeval)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)
