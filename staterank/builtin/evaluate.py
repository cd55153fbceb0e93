"""Measure a model on the built-in tasks: accuracy with Wilson 95 % CIs, NIAH grid, held-out perplexity.

    python -m staterank.builtin.evaluate --model DIR --n 64 [--out results.json]

All items come from evaluation seeds (>= 10**9) and held-out material, disjoint from training seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from .. import runio
from ..data import prose_files
from ..tasks import EVAL_SEED_BASE, TASKS, niah_grid
from ..tasks.evaluate import accuracy_ci, evaluate, perplexity, perplexity_ids
from ..tasks.prose import prose_texts
from . import BUILTIN_DIR, load_builtin


def _cell(rows: list[dict]) -> dict:
    acc, lo, hi = accuracy_ci([r["correct"] for r in rows])
    return {"n": len(rows), "acc": acc, "lo": lo, "hi": hi}


def run(model_dir, n: int = 64, seed: int = EVAL_SEED_BASE, niah_lengths=(256, 512, 1024),
        niah_depths=(0.0, 0.25, 0.5, 0.75, 1.0), niah_n: int | None = None, ppl_tokens: int = 4096,
        batch_size: int = 16) -> dict:
    model, tok = load_builtin(model_dir)
    t0 = time.time()
    res: dict = {"model": str(model_dir), "seed": seed, "tasks": {}, "niah_grid": [], "perplexity": {}}
    for name, task in TASKS.items():
        params = dict(task.default_params)
        if name == "niah":
            params["tokenizer"] = tok
        items = task.generate(n, seed, **params)
        rows = evaluate(model, tok, items, batch_size=batch_size)
        shown = {k: v for k, v in params.items() if k != "tokenizer"}
        res["tasks"][name] = {**_cell(rows), "params": shown, "chance": task.chance,
                              "examples": rows[:3]}
    # Diagnostic, not a held-out score: addition on training-split problems (which the model may have
    # seen); the gap to the held-out row separates memorised sums from learned addition.
    rows = evaluate(model, tok, TASKS["arith"].generate(n, seed=123457, **TASKS["arith"].default_params),
                    batch_size=batch_size)
    res["arith_training_split"] = _cell(rows)
    items = niah_grid(niah_lengths, niah_depths, niah_n or max(8, n // 4), seed + 1, tokenizer=tok)
    rows = evaluate(model, tok, items, batch_size=batch_size)
    for L in niah_lengths:
        for d in niah_depths:
            sel = [r for r, it in zip(rows, items) if it.meta["context_tokens"] == L and it.meta["depth"] == d]
            res["niah_grid"].append({"context_tokens": L, "depth": d, **_cell(sel)})
        res["niah_by_length"] = res.get("niah_by_length", {})
        res["niah_by_length"][str(L)] = _cell([r for r, it in zip(rows, items) if it.meta["context_tokens"] == L])
    logs, bpc, cpt = [], [], []
    for f, text in zip(prose_files(), prose_texts("heldout")):
        p = perplexity(model, tok, text, max_tokens=ppl_tokens, window=512)
        res["perplexity"][f.name] = p
        logs.append(math.log(p))
        # bits per character: comparable across tokenizers, unlike per-token perplexity
        ids = perplexity_ids(tok, text, ppl_tokens)
        cpt.append(len(tok.decode(ids)) / len(ids))
        bpc.append(math.log2(p) / cpt[-1])
    res["perplexity"]["geomean"] = math.exp(sum(logs) / len(logs))
    res["bits_per_char"] = sum(bpc) / len(bpc)
    res["chars_per_token"] = sum(cpt) / len(cpt)
    res["perplexity_setup"] = {"split": "held-out last 10 % of each file", "max_tokens_per_file": ppl_tokens,
                               "window": 512}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _rank_summary(hs) -> dict:
    from ..stratify import bimodality_coefficient

    nr = hs.norm_rank  # [L, H] mean rank / bound
    return {
        "per_layer": [{"layer": int(l), "bound": float(b), "min": float(r.min()), "median": float(np.median(r)),
                       "max": float(r.max())} for l, b, r in zip(hs.layers, hs.bound, hs.mean_rank)],
        "norm_rank": nr.round(4).tolist(),
        "share_below_quarter": float((nr < 0.25).mean()),
        "share_above_three_quarters": float((nr > 0.75).mean()),
        "bimodality_coefficient": bimodality_coefficient(nr)["value"],
    }


def analysis_summary(model_dir, tokens: int = 1024, seed: int = 0) -> dict:
    """Per-head threshold ranks of the model on held-out prose (``staterank analyze``), and of the same
    architecture at initialisation (fresh weights, same gate init) as the control the card compares to."""
    from ..analyze import analyze
    from ..models import load_model
    from ..stratify import head_stats
    from .train import fla_gate_init

    texts = {f.stem: t for f, t in zip(prose_files(), prose_texts("heldout")) if f.stem in ("kjv", "emma")}
    loaded = load_model(str(model_dir), dtype="float32")
    out = {"tokens": tokens, "texts": sorted(texts), "eps": 1e-4}

    def ranks(ld) -> dict:
        return _rank_summary(head_stats(analyze(ld, texts, max_tokens=tokens).arrays()))

    out["trained"] = ranks(loaded)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(loaded.model.config).eval()
    fla_gate_init(fresh, torch.Generator().manual_seed(seed))
    out["init"] = ranks(dataclasses.replace(loaded, model=fresh))
    return out


def fmt_acc(c: dict) -> str:
    """An accuracy cell (``acc``, ``lo``, ``hi``) as ``0.750 [0.632, 0.840]``."""
    return f"{c['acc']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def to_markdown(res: dict) -> str:
    out = ["| task | params | n | accuracy [Wilson 95 % CI] | chance |", "|---|---|---|---|---|"]
    for name, c in res["tasks"].items():
        out.append(f"| {name} | {c['params']} | {c['n']} | {fmt_acc(c)} | {c['chance']:.4f} |")
    lengths = sorted({c["context_tokens"] for c in res["niah_grid"]})
    depths = sorted({c["depth"] for c in res["niah_grid"]})
    out += ["", "NIAH accuracy by context length (rows, tokens) x needle depth (columns); n per cell = "
            f"{res['niah_grid'][0]['n']}", "",
            "| tokens | " + " | ".join(f"depth {d:g}" for d in depths) + " | all depths [95 % CI] |",
            "|---" * (len(depths) + 2) + "|"]
    for L in lengths:
        cells = {c["depth"]: c for c in res["niah_grid"] if c["context_tokens"] == L}
        out.append(f"| {L} | " + " | ".join(f"{cells[d]['acc']:.2f}" for d in depths)
                   + f" | {fmt_acc(res['niah_by_length'][str(L)])} (n={res['niah_by_length'][str(L)]['n']}) |")
    out += ["", "Held-out prose perplexity per token (" + ", ".join(f"{k} {v:.1f}" for k, v in res["perplexity"].items())
            + ")" + (f"; {res['bits_per_char']:.2f} bits per character (mean over files)" if "bits_per_char" in res else "")]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(BUILTIN_DIR), help="HF model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=64, help="items per task")
    ap.add_argument("--niah-n", type=int, default=None, help="items per NIAH grid cell (default n/4, >= 8)")
    ap.add_argument("--niah-lengths", type=int, nargs="+", default=[256, 512, 1024], help="NIAH context tokens")
    ap.add_argument("--niah-depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="depths")
    ap.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="evaluation seed (>= 10**9: held out)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--ranks", default=None, metavar="FILE", help="also write the state-rank summary (trained vs "
                    "at initialisation, held-out prose) to FILE, as the model card reads it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.model, args.n, args.seed, tuple(args.niah_lengths), tuple(args.niah_depths), args.niah_n)
    res["args"] = vars(args)
    print(to_markdown(res))
    if args.out:
        runio.write_json(args.out, res)
    if args.ranks:
        runio.write_json(args.ranks, analysis_summary(args.model))


if __name__ == "__main__":
    main()
