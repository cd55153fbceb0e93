"""The probe stage: ablate head groups and measure tasks, with paired statistics and controls.

    folder = probe(loaded, tasks=["niah"], groups=["low", "high", "random", "layer_random"], out="runs/p1")

Run folder (resumable; a folder holding another config is never touched):
  config.json        the run's config and environment
  scores.json        per-head mean rank / normalised rank / mean nuclear norm the groups come from
  groups.json        every condition's heads {layer: [heads]} and state bytes
  means.npz          calibrated mean head outputs (``--mode mean`` only)
  items.jsonl        one line per (task, condition, item), appended and flushed as items finish
  probe.json         rows, per-seed and across-seed; paired comparisons; single-head costs; verdicts
  single_head.csv    per-head single-ablation costs beside mean rank and mean nuclear norm
This module alone writes the folder. The parts: ``config`` (ProbeConfig), ``scores`` (per-head
scores, measured or read), ``measure`` (conditions × tasks → item rows), ``itemlog``
(items.jsonl, resume), ``results`` (probe.json: intervals, tests, comparisons, verdicts).
Under torchrun the batches are shared out (``measure``), each rank logging to items.rank<r>.jsonl
until rank 0 merges them into items.jsonl; rank 0 alone writes the rest.
Shapes: L linear layers, H value heads.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from .. import distributed, runio
from ..errors import UserError
from ..progress import say
from ..stats import Z95, mcnemar  # re-exported
from ..stats import sign_flip_p as _sign_flip_p
from ..stats import wilson_interval as wilson
from ..tasks import items_digest
from . import groups as G
from .ablate import calibrate_means
from .config import ProbeConfig
from .itemlog import ItemLog, task_spec
from .measure import BASE, SINGLE, conditions, item_order, measure
from .results import accuracy_row, compare, perplexity_row, seed_aggregate, summarize, verdicts
from .scores import HeadScores, calibration_texts, measure_scores

_task_spec = task_spec  # the name before the split (#19)


def probe(loaded, tasks=None, groups=None, **options) -> Path:
    """Run the probe into run folder ``out`` (resumes a folder holding the same config); the
    keyword arguments are ``ProbeConfig``'s fields (``out`` required). Returns the folder.

    ``loaded``: anything with ``.model``, ``.tokenizer`` (``models.Loaded``; ``.adapter``/``.spec``
    used when present). Every input (tasks and their data, groups, the scores file, calibration
    prose) is checked before the run folder is created, so a failed start leaves no folder behind.
    """
    given = {k: v for k, v in (("tasks", tasks), ("groups", groups)) if v is not None}
    return run_probe(loaded, ProbeConfig(**given, **options))


def run_probe(loaded, cfg: ProbeConfig) -> Path:
    """``probe`` with its settings in one ``ProbeConfig``."""
    cfg.validate()
    if cfg.out is None:
        raise UserError("probe needs out= (the run folder)")
    model, tok = loaded.model, loaded.tokenizer
    from ..adapters import get_adapter

    adapter = getattr(loaded, "adapter", None) or get_adapter(model)
    space = G.HeadSpace.of(adapter.linear_layers(model))
    n = G.group_size(space, cfg.fraction, cfg.count)
    task_objects = cfg.make_tasks()
    if not task_objects and not cfg.lm_eval_tasks:
        raise UserError("no tasks given")
    config = _run_config(cfg, loaded, task_objects, n)
    # items (and lm-eval) first: a missing dataset or package fails here, before a run folder exists
    task_items = [(task, task.items(tok)) for task in task_objects]
    config["items"] = items_digest({t.name: its for t, its in task_items})  # same ids, other items: no resume
    if cfg.lm_eval_tasks:
        from .lmeval import _import_lm_eval

        _import_lm_eval()
    # an existing folder is resumed (same config) or refused now, before anything is measured
    out = Path(cfg.out)
    from ..models import weights_fingerprint

    weights = weights_fingerprint(model)
    # under torchrun rank 0 alone makes (or resumes) the folder and writes its files; the items are sharded
    folder = distributed.on_main(
        lambda: runio.new_run_dir(out, config, weights=weights) if out.exists() and any(out.iterdir()) else None)
    scores_saved = folder is not None and (folder / "scores.json").exists()

    # scores -> groups (written once; a resumed run reads them back so groups never change)
    need_scores = any(g in cfg.groups for g in ("low", "high")) or cfg.single_head
    hs: HeadScores | None = None
    need_calib = (need_scores and cfg.scores is None and not scores_saved) or (
        cfg.mode == "mean" and not (folder is not None and (folder / "means.npz").exists()))
    calib = calibration_texts(cfg.calib_texts, data_dir=cfg.data_dir) if need_calib else None
    if scores_saved:
        hs = HeadScores.from_dict(runio.read_json(folder / "scores.json"), str(folder / "scores.json"))
    elif need_scores:
        if isinstance(cfg.scores, HeadScores):
            hs = cfg.scores
        elif cfg.scores is not None:
            hs = HeadScores.read(cfg.scores)
        else:
            hs = distributed.on_main(lambda: measure_scores(model, tok, cfg.calib_texts, cfg.calib_tokens,
                                                            adapter=adapter, texts=calib))
    if hs is not None and hs.layers != list(space.layers):
        raise UserError(f"scores are for layers {hs.layers}; the model's linear layers are {list(space.layers)}")
    conds = conditions(space, cfg.groups, n, cfg.seeds, cfg.seed, None if hs is None else hs.norm_rank,
                       cfg.single_head)

    def start(folder=folder):
        if folder is None:
            folder = runio.new_run_dir(out, config, weights=weights)
        if hs is not None and not scores_saved:
            runio.write_json(folder / "scores.json", hs.to_dict())
        _write_groups(folder, space, n, conds)
        return folder

    folder = distributed.on_main(start)
    # sent on the host: a CUDA tensor would unpickle onto rank 0's GPU (ablate moves them to the model's)
    means = distributed.on_main(lambda: {k: v.cpu() for k, v in _means(folder, cfg, model, tok, adapter, calib).items()}
                                ) if cfg.mode == "mean" else None

    rank = distributed.world()
    log = ItemLog(folder / "items.jsonl", None if rank.size == 1 else folder / f"items.rank{rank.rank}.jsonl")

    def run_mine():
        measure(model, tok, task_items, conds, log, mode=cfg.mode, means=means, adapter=adapter,
                batch_size=cfg.batch_size, single_limit=cfg.single_limit)
        return log.added

    for rows in distributed.each(run_mine):  # every rank's new rows; then items.jsonl as one process writes it
        log.add(rows)
    distributed.on_main(lambda: log.consolidate(item_order(task_items, conds, cfg.single_limit)))
    lm_results = _lm_eval(folder, cfg, loaded, conds, means) if cfg.lm_eval_tasks else {}

    def finish():
        summary, csv_rows = summarize(log, task_objects, conds, hs, space, n)
        if csv_rows:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
            runio.atomic_write_text(folder / "single_head.csv", buf.getvalue())
        summary["lm_eval"] = lm_results
        runio.write_json(folder / "probe.json", summary)

    distributed.on_main(finish)
    return folder


def _run_config(cfg: ProbeConfig, loaded, task_objects, n: int) -> dict:
    """config.json's identity part: what a resumed run must share (the items digest is added later)."""
    scores = cfg.scores
    score_src = None if scores is None or isinstance(scores, HeadScores) else str(scores)
    config = {
        "model": getattr(loaded, "spec", type(loaded.model).__name__), "tasks": [task_spec(t) for t in task_objects],
        "groups": list(cfg.groups), "group_size": n, "seeds": cfg.seeds, "seed": cfg.seed, "mode": cfg.mode,
        "single_head": cfg.single_head, "single_limit": cfg.single_limit, "scores": score_src,
        "calib": [cfg.calib_texts, cfg.calib_tokens], "lm_eval": [list(cfg.lm_eval_tasks), cfg.lm_eval_limit],
    }
    if cfg.data_dir is not None:  # calibration prose comes from it (absent when not given: older runs resume)
        config["data_dir"] = str(cfg.data_dir)
    if cfg.lm_eval_include:  # local task definitions (absent when none: older runs resume)
        config["lm_eval_include"] = [str(Path(p).resolve()) for p in cfg.lm_eval_include]
    if cfg.mode == "mean":  # means were taken at the rule output before; those runs must not resume
        config["mean_site"] = "output projection input"
    return config


def _write_groups(folder: Path, space: G.HeadSpace, n: int, conds: dict) -> None:
    runio.write_json(folder / "groups.json", {
        "group_size": n, "total_heads": space.total, "fraction": n / space.total,
        "state_bytes_total": space.bytes_of({li: list(range(h)) for li, h in zip(space.layers, space.heads)}),
        "conditions": {c: {"heads": {str(k): v for k, v in g.items()}, "n_heads": G.size(g),
                           "state_bytes": space.bytes_of(g)} for c, g in conds.items()},
    })


def _means(folder: Path, cfg: ProbeConfig, model, tok, adapter, calib) -> dict:
    """Mean head outputs for ``--mode mean``: means.npz when a resumed run has it, else calibrated
    on ``calib`` and written."""
    mp = folder / "means.npz"
    if mp.exists():
        return {int(k[1:]): torch.from_numpy(v) for k, v in runio.read_npz(mp).items()}
    from ..models import tokenize_texts

    means = calibrate_means(model, tokenize_texts(tok, calib, cfg.calib_tokens), adapter)
    runio.write_npz(mp, **{f"L{k}": v.cpu().numpy() for k, v in means.items()})
    return means


def _lm_eval(folder: Path, cfg: ProbeConfig, loaded, conds: dict, means) -> dict:
    """lm-evaluation-harness results per non-single-head condition, one file each under lm_eval/
    (a resumed run reads the finished ones back), its per-item records beside it (.samples.jsonl)."""
    from .lmeval import lm_eval_probe

    names = [c for c in conds if not c.startswith(SINGLE)]

    def mine():  # under torchrun condition i is rank i % world size's
        out = {}
        for i, cond in enumerate(names):
            if not distributed.owns(i):
                continue
            f = folder / "lm_eval" / (cond.replace("/", "__") + ".json")
            if not f.exists():
                say(f"probe: lm-eval {','.join(cfg.lm_eval_tasks)} / {cond}")
                res = lm_eval_probe(loaded, cfg.lm_eval_tasks, conds[cond], mode=cfg.mode, means=means,
                                    limit=cfg.lm_eval_limit, data_dir=cfg.data_dir, include=cfg.lm_eval_include,
                                    batch_size=cfg.lm_eval_batch_size, samples_path=f.with_suffix(".samples.jsonl"))
                runio.write_json(f, res)  # last: a run killed before it redoes this condition, samples too
            out[cond] = runio.read_json(f)
        return out

    got = {k: v for part in distributed.each(mine) for k, v in part.items()}
    return {c: got[c] for c in names}


__all__ = ["BASE", "SINGLE", "Z95", "HeadScores", "ItemLog", "ProbeConfig", "accuracy_row", "calibration_texts",
           "compare", "mcnemar", "measure_scores", "perplexity_row", "probe", "run_probe", "seed_aggregate",
           "summarize", "verdicts", "wilson", "_sign_flip_p", "_task_spec"]
