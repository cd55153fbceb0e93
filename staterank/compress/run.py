"""The compress stage (issue #23): per-head state precision vs pruning at equal state bytes.

    result = run_compress(load_model("builtin"), CompressConfig(), out="runs/c1")

Semantics: storing a head's state at precision P = the state an engine keeps between steps is
rounded to P each time it is stored (``store.py``): after every decode step, and in the prefill at
every ``chunk``-token boundary (rounding within a chunk is not simulated). Accuracy is greedy exact
match (tasks.evaluate) on held-out items with Wilson 95 % intervals.

Run folder (never overwritten; rerunning the same command resumes, finished pieces are skipped):
  config.json            every setting (runio.new_run_dir)
  calibration/           analyze run of the calibration suite -> per-head r̄, n̄ (prune.calibrate)
  sensitivity/*.json     per precision: per head ΔNLL of the answer (teacher-forced, that head alone
                         stored at that precision, every other head fp32) with a paired t 95 % CI, and
                         the relative round-trip error of its stored states
  evals/*.json           per plan: the plan, its bytes, per-item rows, accuracy per task (Wilson CI)
  compress.json          the summary (points of every curve, the int8-all-heads comparison, the
                         winners at each budget, the sensitivity table and its Spearman correlations
                         with rank and norm); its presence marks the run done
Curves: pruning-only and precision-only per head-ordering method (calibration statistics only, no
task) and by the planner (the knapsack on the sensitivity table restricted to drop, or to
precisions); mixed = the planner with every option. The planner's costs are measured on other items
of the same tasks, which the score orders never see: compare mixed with the planned one-axis curves
for the value of mixing, with the score orders for the value of task-measured costs. Random controls
(``random_seeds``) at the same bytes: the same per-head precisions on random heads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import progress, runio
from ..models import Loaded, weights_fingerprint
from ..stats import accuracy_ci, mcnemar, t_interval
from ..tasks import items_digest
from .config import CompressConfig
from .measure import answer_nll, plan_rows
from .planner import from_json, full_bytes, heads_of, knapsack, ladder, method_order, plan_bytes, shuffled, to_json
from .quant import head_bytes


def _key(plan: dict) -> str:
    return "fp32" if not plan else hashlib.sha256(json.dumps(to_json(plan)).encode()).hexdigest()[:12]


def _pooled(rows: dict) -> list[bool]:
    return [bool(r["correct"]) for name in sorted(rows) for r in rows[name]]


def _acc(rows: dict) -> dict:
    out = {}
    for name, rs in rows.items():
        a, lo, hi = accuracy_ci([r["correct"] for r in rs])
        out[name] = {"acc": a, "lo": lo, "hi": hi, "n": len(rs), "k": sum(bool(r["correct"]) for r in rs)}
    a, lo, hi = accuracy_ci(_pooled(rows))
    out["all"] = {"acc": a, "lo": lo, "hi": hi, "n": len(_pooled(rows)), "k": sum(_pooled(rows))}
    return out


def _retained(plan_c: list[bool], base_c: list[bool], seed: int = 0, n_boot: int = 2000) -> dict:
    """acc(plan) / acc(base) over the same items, with a paired 95 % percentile bootstrap over items."""
    a, b = np.asarray(plan_c, float), np.asarray(base_c, float)
    if b.mean() == 0:
        return {"ratio": None, "lo": None, "hi": None}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    den = b[idx].mean(1)
    ok = den > 0
    boots = a[idx].mean(1)[ok] / den[ok]
    return {"ratio": float(a.mean() / b.mean()), "lo": float(np.quantile(boots, 0.025)),
            "hi": float(np.quantile(boots, 0.975))}


def _sensitivity(loaded: Loaded, cfg: CompressConfig, heads, items: list, folder: Path, say) -> dict:
    """{precision: {"rows": [{layer, head, dnll, lo, hi, rel_error, bytes}]}}, one file per precision."""
    model, tok = loaded.model, loaded.tokenizer
    base_path = folder / "base.json"
    if not base_path.exists():
        base, _ = answer_nll(model, tok, items, [{}], cfg.chunk)
        runio.write_json(base_path, {"nll": base[0].tolist()})
    base = np.asarray(runio.read_json(base_path)["nll"])
    out = {}
    for p in cfg.sensitivity:
        path = folder / f"{p}.json"
        if not path.exists():
            say(f"sensitivity {p}")
            rows = []
            nll, err = answer_nll(model, tok, items, [{(li, h): p} for li, h, _, _ in heads], cfg.chunk)
            for (li, h, k, v), d in zip(heads, nll):
                m, lo, hi = t_interval(d - base)
                rows.append({"layer": li, "head": h, "dnll": m, "lo": lo, "hi": hi, "bytes": head_bytes(p, k, v),
                             "rel_error": 1.0 if p == "drop" else err.get((li, h), 0.0)})
            runio.write_json(path, {"precision": p, "rows": rows, "base_nll": float(base.mean()), "n_items": len(base)})
        out[p] = runio.read_json(path)
    return out


def _correlations(sens: dict, stats) -> dict:
    """Spearman ρ (and p) across heads of each precision's ΔNLL with r̄ (rank) and n̄ (nuclear norm)."""
    from scipy.stats import spearmanr

    where = {int(li): i for i, li in enumerate(stats.layers)}
    out = {}
    for p, s in sens.items():
        d = np.array([r["dnll"] for r in s["rows"]])
        rank = np.array([stats.mean_rank[where[r["layer"]], r["head"]] for r in s["rows"]])
        norm = np.array([stats.mean_nuclear[where[r["layer"]], r["head"]] for r in s["rows"]])
        out[p] = {}
        for name, x in (("rank", rank), ("norm", norm)):
            ok = np.isfinite(d) & np.isfinite(x)
            if ok.sum() < 3 or np.ptp(d[ok]) == 0 or np.ptp(x[ok]) == 0:
                out[p][name] = {"rho": None, "p": None, "n": int(ok.sum())}
                continue
            r = spearmanr(d[ok], x[ok])
            out[p][name] = {"rho": float(r.statistic), "p": float(r.pvalue), "n": int(ok.sum())}
    return out


def run_compress(loaded: Loaded, cfg: CompressConfig, out: str | Path) -> dict:
    """Run (or resume) the compress stage into ``out``; returns compress.json's content."""
    from ..prune.calibrate import calibrate
    from ..prune.config import PruneConfig
    from ..prune.evaluate import task_items
    from ..prune.scores import get_method

    cfg.validate()
    model, tok = loaded.model, loaded.tokenizer
    layers = loaded.adapter.linear_layers(model)
    heads = heads_of(layers)
    total = full_bytes(heads)
    items = task_items(cfg.tasks, cfg.eval_n, cfg.eval_seed, tok)
    sens_items = [it for its in task_items(cfg.tasks, cfg.sens_n, cfg.sens_seed, tok).values() for it in its]
    run_dir = runio.new_run_dir(out, {"stage": "compress", "model": loaded.spec, **asdict(cfg),
                                      "items": items_digest(items)}, weights=weights_fingerprint(model))
    if (run_dir / "compress.json").exists():
        return runio.read_json(run_dir / "compress.json")
    say = lambda m: progress.say(f"compress: {m}")  # noqa: E731

    say("calibrating")
    pc = PruneConfig(calib_suite=cfg.calib_suite, calib_tokens=cfg.calib_tokens, calib_stride=cfg.calib_stride,
                     seed=cfg.seed, data_dir=cfg.data_dir)
    stats, _, calib = calibrate(loaded, pc, run_dir / "calibration")
    sens = _sensitivity(loaded, cfg, heads, sens_items, run_dir / "sensitivity", say)
    costs: dict = {}
    for p, s in sens.items():
        for r in s["rows"]:
            costs.setdefault((r["layer"], r["head"]), {})[p] = r["dnll"]

    # plans: (curve, method, budget, seed) -> plan
    h_v = [l.layout.h_v for l in layers]
    specs: list[tuple[str, str, float | None, int | None, dict]] = [("base", "fp32", None, None, {})]
    for p in cfg.all_heads:
        specs.append(("all_heads", p, None, None, {(li, h): p for li, h, _, _ in heads}))
    for b in cfg.budgets:
        cap = int(b * total)
        for mi, m in enumerate(cfg.methods):
            order = method_order(get_method(m, alpha=cfg.alpha, seed=cfg.seed).score(stats), stats.layers, h_v)
            for curve, rungs in (("pruning", ("drop",)), ("precision", cfg.ladder)):
                plan = ladder(order, heads, rungs, cap)
                if plan is None:
                    continue
                specs.append((curve, m, b, None, plan))
                if mi == 0:  # random controls of the first method's plans
                    specs += _controls(curve, m, b, plan, heads, cfg, 1000)
        # the planner with only drop, or only precisions: the same information as mixed, one axis
        for curve, keep in (("pruning", lambda q: q == "drop"), ("precision", lambda q: q != "drop")):
            plan = knapsack({hd: {q: x for q, x in c.items() if keep(q)} for hd, c in costs.items()}, heads, cap)
            if plan is not None:
                specs.append((curve, "planner", b, None, plan))
        plan = knapsack(costs, heads, cap)
        if plan is not None:
            specs.append(("mixed", "planner", b, None, plan))
            specs += _controls("mixed", "planner", b, plan, heads, cfg, 2000)

    ev = run_dir / "evals"
    rows_of: dict[str, dict] = {}
    points = []
    for curve, method, b, seed, plan in specs:
        key = _key(plan)
        if key not in rows_of:
            path = ev / f"{key}.json"
            if not path.exists():
                say(f"evaluating {curve} {method} budget {b} seed {seed}")
                rows = plan_rows(model, tok, items, plan, cfg.chunk, cfg.max_new_tokens)
                runio.write_json(path, {"plan": to_json(plan), "bytes": plan_bytes(plan, heads), "rows": rows})
            saved = runio.read_json(path)
            assert from_json(saved["plan"]) == plan, f"{path} holds another plan"
            rows_of[key] = saved["rows"]
        nb = plan_bytes(plan, heads)
        counts: dict[str, int] = {}
        for p in plan.values():
            counts[p] = counts.get(p, 0) + 1
        points.append({"curve": curve, "method": method, "budget": b, "seed": seed, "plan": key, "bytes": nb,
                       "bytes_fraction": nb / total, "precisions": counts, "accuracy": _acc(rows_of[key])})
    base_c = _pooled(rows_of["fp32"])
    for pt in points:
        pt["retained"] = _retained(_pooled(rows_of[pt["plan"]]), base_c)

    all_heads = {}
    for pt in points:
        if pt["curve"] == "all_heads":
            c = _pooled(rows_of[pt["plan"]])
            d = np.asarray(c, float) - np.asarray(base_c, float)
            m, lo, hi = t_interval(d)
            all_heads[pt["method"]] = {"bytes_fraction": pt["bytes_fraction"], "accuracy": pt["accuracy"],
                                       "retained": pt["retained"], "diff_vs_base": {"mean": m, "lo": lo, "hi": hi},
                                       "mcnemar_vs_base": mcnemar(c, base_c)}
    winners = {str(b): _winner(points, b, rows_of) for b in sorted({*cfg.budgets, 0.5, 0.25}, reverse=True)}
    result = {
        "model": loaded.spec, "state_bytes_fp32": total, "heads": len(heads),
        "head_layout": [{"layer": l.index, "h_v": l.layout.h_v, "k": l.layout.k, "v": l.layout.v} for l in layers],
        "bytes_per_head": {p: head_bytes(p, heads[0][2], heads[0][3]) for p in
                           ("fp32", *cfg.ladder, *cfg.sensitivity, *cfg.all_heads)},
        "tasks": {"names": list(cfg.tasks), "n": cfg.eval_n, "seed": cfg.eval_seed},
        "base": points[0]["accuracy"], "all_heads": all_heads, "points": points, "winners": winners,
        "sensitivity": {p: s["rows"] for p, s in sens.items()},
        "sensitivity_items": {"n": len(sens_items), "seed": cfg.sens_seed,
                              "base_nll": next(iter(sens.values()))["base_nll"] if sens else None},
        "correlations": _correlations(sens, stats), "calibration": calib, "chunk": cfg.chunk,
        "semantics": "each stored state is rounded to its head's precision after every decode step and at every "
                     f"{cfg.chunk}-token chunk boundary of the prefill; rounding within a prefill chunk is not simulated",
    }
    runio.write_json(run_dir / "compress.json", result)
    return result


def _controls(curve: str, method: str, b: float, plan: dict, heads, cfg: CompressConfig, base: int) -> list[tuple]:
    """Random controls of one plan: per kind in cfg.controls and seed, (curve_random or
    curve_layer_random, method, budget, seed, shuffled plan); each kind and budget its own seeds."""
    out = []
    for kind in cfg.controls:
        name, off = (f"{curve}_random", 0) if kind == "any" else (f"{curve}_layer_random", 50_000)
        out += [(name, method, b, s, shuffled(plan, heads, base + off + 100 * s + int(b * 1000), within_layer=kind == "layer"))
                for s in range(cfg.random_seeds)]
    return out


def _winner(points: list[dict], budget: float, rows_of: dict) -> dict:
    """Best curve at ``budget``: per curve (random controls averaged over seeds), the highest pooled
    accuracy among its points with bytes <= budget × fp32 (ties: fewer bytes); the winner (the best
    point estimate among non-random curves) vs the runner-up by exact McNemar on the same items."""
    best: dict[str, dict] = {}
    for pt in points:
        if pt["curve"] in ("base", "all_heads") or pt["budget"] is None or pt["bytes_fraction"] > budget + 1e-12:
            continue
        name = pt["curve"] if pt["curve"].endswith("_random") or pt["curve"] == "mixed" else f"{pt['curve']}/{pt['method']}"
        best.setdefault(name, {}).setdefault(pt["budget"], []).append(pt)
    table = []
    for name, by_b in best.items():
        cands = [(float(np.mean([p["accuracy"]["all"]["acc"] for p in pts])), b, pts) for b, pts in by_b.items()]
        acc, b, pts = max(cands, key=lambda c: (c[0], -c[1]))  # ties: the smaller budget
        table.append({"curve": name, "acc": acc, "at_budget": b, "bytes_fraction": max(p["bytes_fraction"] for p in pts),
                      "seeds": len(pts), "accuracy": pts[0]["accuracy"]["all"] if len(pts) == 1 else None,
                      "retained": pts[0]["retained"] if len(pts) == 1 else None, "plan": pts[0]["plan"]})
    table.sort(key=lambda r: (-r["acc"], r["bytes_fraction"]))  # equal accuracy: fewer bytes first
    out = {"budget": budget, "curves": table, "winner": None, "vs_runner_up": None}
    planned = [r for r in table if not r["curve"].endswith("_random")]
    if planned:
        out["winner"] = planned[0]["curve"]
        if len(planned) > 1:
            a, b = _pooled(rows_of[planned[0]["plan"]]), _pooled(rows_of[planned[1]["plan"]])
            out["vs_runner_up"] = {"runner_up": planned[1]["curve"], **mcnemar(a, b)}
    return out
