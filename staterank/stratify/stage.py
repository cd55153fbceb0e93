"""The stratify stage: the only part of stratify that touches files. Analyzes the contexts on the model
and on the same architecture at initialisation (or reads finished analyze folders), then writes the
run folder: config.json, contexts.json, analyze/ and analyze_init/ (complete analyze run folders),
stratify.json, heads.csv. Rerunning the same command resumes (``runio.new_run_dir``).

    run = run_stratify(loaded, contexts, "runs/s1", StratifyConfig())
    run = stratify_from_runs(["runs/a1", "runs/a2"], "runs/s2")
    stats, cls = load_stratify(run)
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from ..dynamics import merge_dynamics
from ..errors import UserError
from ..initmodel import auto_init_gates, init_copy
from ..progress import say
from ..runio import atomic_write_text, new_run_dir, read_json, write_json
from .config import StratifyConfig
from .consistency import PAPER, delta, stratify_stats
from .heads import Classes, HeadStats


def default_positions(max_tokens: int, stride: int = 4, t_early: int = 128, t_late: int = 2048) -> tuple[int, ...]:
    """Every ``stride``-th token up to ``max_tokens``, plus 1, t_early, t_late and max_tokens (when in range)."""
    if max_tokens < 1 or stride < 1:
        raise UserError(f"max_tokens and stride must be >= 1, got {max_tokens}, {stride}")
    pos = set(range(stride, max_tokens + 1, stride)) | {1, max_tokens}
    pos |= {t for t in (t_early, t_late) if 1 <= t <= max_tokens}
    return tuple(sorted(pos))


def jsonable(o: Any) -> Any:
    """numpy arrays/scalars -> lists/floats (NaN stays float, written as null by runio.write_json)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    return o


def _heads_csv(cls: Classes, stats: HeadStats, per_ctx: dict, init: tuple | None) -> str:
    """One row per head: class, stability (share of contexts whose own label equals the pooled one)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["layer", "head", "class", "stability", "mean_rank", "norm_rank", "final_rank", "mean_nuclear",
            "log_decay", "rank_sd_across_contexts"]
    if init:
        cols += ["init_class", "init_mean_rank", "init_norm_rank", "init_mean_nuclear", "init_log_decay"]
    w.writerow(cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(per_ctx["mean_rank"], axis=0)
    stab = (per_ctx["labels"] == cls.labels[None]).mean(axis=0)
    f = lambda x: "" if not np.isfinite(x) else f"{x:.6g}"
    for i, layer in enumerate(stats.layers):
        for h in range(stats.mean_rank.shape[1]):
            row = [int(layer), h, cls.labels[i, h], f(stab[i, h]), f(stats.mean_rank[i, h]), f(stats.norm_rank[i, h]),
                   f(stats.final_rank[i, h]), f(stats.mean_nuclear[i, h]), f(stats.log_decay[i, h]), f(sd[i, h])]
            if init:
                icls, ist = init
                row += [icls.labels[i, h], f(ist.mean_rank[i, h]), f(ist.norm_rank[i, h]), f(ist.mean_nuclear[i, h]),
                        f(ist.log_decay[i, h])]
            w.writerow(row)
    return buf.getvalue()


def _from_analyze(folders: list) -> dict:
    """Merged dynamics of analyze run folders, which must come from one model (same weights, or
    the same model spec and source for folders without a fingerprint) and one ε."""
    from ..analyze import load_dynamics  # lazily: analyze imports torch

    ids = []
    for f in folders:
        c = read_json(Path(f) / "config.json")
        if not (isinstance(c, dict) and isinstance(c.get("config"), dict) and (Path(f) / "dynamics.npz").is_file()):
            raise UserError(f"{f} is not a finished analyze run (--from-runs takes `staterank analyze` output folders)")
        m = c["config"].get("model") or {}
        ids.append((c.get("weights_fingerprint") or (m.get("spec"), m.get("source")), c["config"].get("eps")))
    if len({i[0] for i in ids}) > 1:
        raise UserError("the analyze runs come from different models (or weights); merge runs of one model only")
    if len({i[1] for i in ids}) > 1:
        raise UserError(f"the analyze runs used different eps ({sorted({str(i[1]) for i in ids})})")
    return merge_dynamics([load_dynamics(f).arrays() for f in folders])


def summarise(run, dyn: dict, dyn_init: dict | None, cfg: StratifyConfig, meta: dict) -> dict:
    """Compute and write stratify.json and heads.csv into run folder ``run`` from the dynamics of the
    model (and of its initialisation, if measured)."""
    run = Path(run)
    names = [str(x) for x in dyn["texts"]]
    kw = dict(rule=cfg.rule, threshold=cfg.threshold, t_early=cfg.t_early, t_late=cfg.t_late)
    raw, cls, stats, per_ctx = stratify_stats(dyn, names, **kw)
    result = {**meta, **raw, "paper": PAPER, "head_stats": stats.to_dict(), "init_baseline": None, "delta": None}
    init = None
    if dyn_init is not None:
        if [str(x) for x in dyn_init["texts"]] != names:
            raise UserError("the initialisation runs measured other texts than the model runs")
        iraw, icls, istats, _ = stratify_stats(dyn_init, names, **kw)
        init = (icls, istats)
        both = np.isin(cls.labels, ("low", "high")) & np.isin(icls.labels, ("low", "high"))
        result["init_baseline"] = {**iraw, "head_stats": istats.to_dict(), "gates": meta.get("init_gates"),
                                   "gates_reason": meta.get("init_gates_reason"), "seed": cfg.init_seed}
        result["delta"] = {**delta(raw, iraw),
                           "label_match_trained_vs_init": float(np.mean(cls.labels[both] == icls.labels[both])) if both.any() else None}
    else:
        result["init_baseline_reason"] = meta.get("init_reason", "not measured")
    write_json(run / "stratify.json", jsonable(result))
    atomic_write_text(run / "heads.csv", _heads_csv(cls, stats, per_ctx, init))
    return result


def run_stratify(loaded, contexts: list, out, cfg: StratifyConfig | None = None):
    """Analyze ``contexts`` (list of ``contexts.Context``) on ``loaded`` (``models.Loaded``) and, unless
    ``cfg.init`` is off, on the same architecture at initialisation (``init_copy``); write the run folder
    ``out``: config.json, contexts.json, analyze/ and analyze_init/ (complete analyze run folders),
    stratify.json, heads.csv. Rerunning the same command resumes (finished texts are not redone)."""
    from ..analyze import analyze  # lazily: analyze, capture and models import torch
    from ..capture import Schedule
    from ..contexts import suite_hash
    from ..models import Loaded

    cfg = cfg or StratifyConfig()
    cfg.validate()
    if not contexts:
        raise UserError("no contexts to measure")
    names = [c.name for c in contexts]
    if len(set(names)) != len(names):
        raise UserError(f"context names must be unique, got {names}")
    gates, why = (cfg.init_gates, f"--init-gates {cfg.init_gates}") if cfg.init else (None, None)
    if gates == "auto":
        gates, why = auto_init_gates(loaded, cfg.init_seed)
    positions = default_positions(cfg.max_tokens, cfg.stride, cfg.t_early, cfg.t_late)
    config = {"stage": "stratify", "model": loaded.spec, "source": loaded.source, "model_config": loaded.config,
              "contexts": names, "contexts_hash": suite_hash(contexts), **cfg.record(), "init_gates_used": gates}

    def make():  # rank 0 alone makes the folder (under torchrun); analyze shards the contexts over the ranks
        d = new_run_dir(out, config)
        write_json(d / "contexts.json", [c.to_dict() for c in contexts])
        return d

    run = distributed.on_main(make)
    texts = {c.name: c.text for c in contexts}
    kw = dict(max_tokens=cfg.max_tokens, schedule=Schedule(positions=positions), eps=cfg.eps)
    t0 = time.time()
    dyn = analyze(loaded, texts, out=run / "analyze", **kw).arrays()
    say(f"stratify: model: {len(texts)} contexts analysed in {time.time() - t0:.0f}s")
    dyn_init = None
    if cfg.init:
        t0 = time.time()
        model0 = init_copy(loaded.model, cfg.init_seed, gates)
        loaded0 = Loaded(model=model0, tokenizer=loaded.tokenizer, adapter=loaded.adapter,
                         spec=f"{loaded.spec}@init(gates={gates},seed={cfg.init_seed})", source=loaded.source,
                         config=loaded.config)
        dyn_init = analyze(loaded0, texts, out=run / "analyze_init", **kw).arrays()
        del loaded0, model0
        say(f"stratify: initialisation ({gates} gates): {len(texts)} contexts analysed in {time.time() - t0:.0f}s")
    meta = {"model": loaded.spec, "suite_hash": config["contexts_hash"], "max_tokens": cfg.max_tokens,
            "rule": cfg.rule, "init_gates": gates, "init_gates_reason": why}
    if not cfg.init:
        meta["init_reason"] = "--no-init"
    distributed.on_main(lambda: summarise(run, dyn, dyn_init, cfg, meta))
    return Path(run)


def stratify_from_runs(folders: list, out, cfg: StratifyConfig | None = None, init_folders: list | None = None):
    """stratify.json + heads.csv from existing analyze run folders (their texts are the contexts);
    ``init_folders``: analyze runs of the same texts on the model at initialisation, if any."""
    cfg = cfg or StratifyConfig()
    cfg.validate()
    folders = [Path(f) for f in folders]
    for label, fs in (("--from-runs", folders), ("--init-runs", [Path(f) for f in init_folders or []])):
        if len({f.resolve() for f in fs}) != len(fs):  # a context twice would pair with itself
            raise UserError(f"{label}: a folder is given twice")
    config = {"stage": "stratify", "from_runs": [str(f.resolve()) for f in folders],
              "init_runs": [str(Path(f).resolve()) for f in init_folders or []], **cfg.record()}
    dyn = _from_analyze(folders)
    names = [str(x) for x in dyn["texts"]]
    if len(set(names)) != len(names):
        raise UserError(f"--from-runs: the folders hold the same text twice ({names})")
    dyn_init = _from_analyze(init_folders) if init_folders else None
    if dyn_init is not None and [str(x) for x in dyn_init["texts"]] != names:
        raise UserError("the initialisation runs measured other texts than the model runs")
    run = distributed.on_main(lambda: new_run_dir(out, config))
    meta = {"model": None, "from_runs": config["from_runs"], "rule": cfg.rule,
            "init_gates": "from --init-runs" if init_folders else None,
            "init_reason": "--from-runs without --init-runs: no initialisation baseline"}
    distributed.on_main(lambda: summarise(run, dyn, dyn_init, cfg, meta))
    return Path(run)


def load_stratify(run_dir) -> tuple[HeadStats, Classes]:
    """(HeadStats, Classes) of the model from a finished stratify run folder."""
    path = Path(run_dir) / "stratify.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished stratify run (no stratify.json)")
    s = read_json(path)
    return HeadStats.from_dict(s["head_stats"]), Classes.from_dict(s["classes"])
