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
Statistics: Wilson 95 % intervals; exact McNemar (two-sided sign test on discordant items,
``scipy.stats.binomtest``) against the base on the same items; across random seeds a t interval
of the seeds' accuracies. Perplexity: exp(token-mean NLL), interval from the per-window spread,
Wilcoxon signed-rank test on per-window mean NLL against the base.
Shapes: L linear layers, H value heads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats as sst

from .. import runio
from ..data import check_given
from ..errors import UserError
from . import groups as G
from .ablate import MODES, ablate, calibrate_means
from ..tasks import items_digest
from .tasks import ProbeTask, check_seed, make_task

BASE = "base"
SINGLE = "head/"  # single-head conditions: "head/L{layer}.H{head}"
Z95 = 1.959963984540054


# ---------------------------------------------------------------- scores and calibration text

def calibration_texts(n: int = 8, chars: int = 6000, data_dir=None) -> list[str]:
    """``n`` deterministic segments of training-split prose (evenly spaced over all files) from
    ``data_dir`` (default: ``staterank.data``'s resolution order)."""
    from ..tasks.prose import prose_texts

    texts = prose_texts("train", None if data_dir is None else str(data_dir))
    allt = "\n".join(texts)
    step = max(1, (len(allt) - chars) // max(1, n))
    out = []
    for i in range(n):
        s = allt.find("\n", i * step) + 1
        out.append(allt[s:s + chars])
    return out


@dataclass
class HeadScores:
    """Per-head [L, H] arrays the groups are chosen from; ``layers`` [L] model layer indices."""

    layers: list[int]
    mean_rank: np.ndarray
    norm_rank: np.ndarray
    mean_nuclear: np.ndarray
    source: str

    def to_dict(self) -> dict:
        return {"layers": self.layers, "mean_rank": self.mean_rank, "norm_rank": self.norm_rank,
                "mean_nuclear": self.mean_nuclear, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "HeadScores":
        """From ``HeadStats.to_dict()`` (stratify) or our own scores.json; looks inside a
        ``head_stats`` / ``stats`` block too. Arrays are [L, H] (null / NaN where a layer has
        fewer heads), ``layers`` [L]; anything else is a one-line UserError."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: scores must be a JSON object, got {type(d).__name__}")
        for k in ("head_stats", "stats"):
            if k in d and isinstance(d[k], dict) and "mean_rank" in d[k]:
                d = d[k]
        need = f"{source}: scores need layers [L], and mean_rank and mean_nuclear [L, H] arrays"
        try:
            mr = np.asarray(d["mean_rank"], dtype=float)
            nuc = np.asarray(d.get("mean_nuclear", d.get("nuclear_norm")), dtype=float)
            layers = [int(x) for x in d["layers"]]
            if "norm_rank" in d:
                nr = np.asarray(d["norm_rank"], dtype=float)
            elif "bound" in d:
                bound = np.asarray(d["bound"], dtype=float)
                if bound.shape != mr.shape[:1]:
                    raise ValueError
                nr = mr / bound[:, None]
            else:  # raw ranks would rank heads of layers with different bounds on different scales
                raise UserError(f"{source}: scores need norm_rank (or bound, the rank bound per layer) to pick "
                                "low- and high-rank heads")
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(need) from None
        if mr.ndim != 2 or nuc.shape != mr.shape or nr.shape != mr.shape or len(layers) != mr.shape[0]:
            raise UserError(f"{need}; got layers {len(layers)}, mean_rank {list(mr.shape)}, "
                            f"norm_rank {list(nr.shape)}, mean_nuclear {list(nuc.shape)}")
        return cls(layers, mr, nr, nuc, source)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "HeadScores":
        """From a JSON file (``--scores``); a missing, unreadable or malformed file is a one-line UserError."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--scores {path}: {'not a file' if p.exists() else 'no such file'}")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise UserError(f"--scores {path}: cannot read ({e.strerror or type(e).__name__})") from None
        except UnicodeDecodeError:
            raise UserError(f"--scores {path}: not a JSON file (not UTF-8 text)") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--scores {path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except RecursionError:
            raise UserError(f"--scores {path}: JSON nested too deeply") from None
        return cls.from_dict(d, str(path))


def measure_scores(model, tokenizer, n_texts: int = 8, max_tokens: int = 512, eps: float = 1e-4,
                   adapter=None, data_dir=None, texts: Sequence[str] | None = None) -> HeadScores:
    """Mean rank (time average of Eq. 6), normalised rank and mean nuclear norm per head, averaged
    over ``n_texts`` prose segments of ``max_tokens`` tokens (``capture`` + ``stratify.head_stats``);
    the segments are ``calibration_texts(n_texts, data_dir=data_dir)`` unless ``texts`` are given."""
    from ..capture import Schedule, capture
    from ..models import tokenize_texts
    from ..spectra import STAT_NAMES
    from ..stratify import default_positions, head_stats

    sched = Schedule(positions=default_positions(max_tokens, stride=8))
    dev = next(model.parameters()).device
    runs = []
    if texts is None:
        texts = calibration_texts(n_texts, data_dir=data_dir)
    for ids in tokenize_texts(tokenizer, texts, max_tokens=max_tokens):
        with torch.no_grad(), capture(model, adapter, schedule=sched, eps=eps) as tr:
            model(ids.to(dev), use_cache=False)
        runs.append(tr.dynamics())
    # texts may end at different lengths: align on the union of positions, NaN where absent
    pos = np.array(sorted(set().union(*(r["positions"].tolist() for r in runs))), dtype=np.int64)
    dyn: dict[str, Any] = {}
    for name in STAT_NAMES:
        arr = np.full((len(runs),) + runs[0][name].shape[1:3] + (len(pos),), np.nan)
        for i, r in enumerate(runs):
            arr[i][..., np.searchsorted(pos, r["positions"])] = r[name][0]
        dyn[name] = arr
    ks = [min(l.layout.k, l.layout.v) for l in (adapter or tr.adapter).linear_layers(model)]
    b = np.stack([np.minimum(pos, k) for k in ks])
    dyn.update(positions=pos, layers=runs[0]["layers"], bound=b[0] if (b == b[0]).all() else b,
               log_decay=np.stack([r["log_decay"][0] for r in runs]))
    hs = head_stats(dyn)
    return HeadScores([int(x) for x in hs.layers], hs.mean_rank, hs.norm_rank, hs.mean_nuclear,
                      f"measured: {n_texts} prose segments x {max_tokens} tokens, eps={eps}")


# ---------------------------------------------------------------- items.jsonl (resumable)

class ItemLog:
    """Append-only per-item results; (task, condition, id) is done once it is on disk."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[str, str, str], dict] = {}
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a line torn by a kill: drop it (its item is redone)
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # unreadable line: its item is redone
                        continue
                    self.rows.setdefault((r["task"], r["condition"], r["id"]), r)

    def done(self, task: str, condition: str) -> set[str]:
        return {i for (t, c, i) in self.rows if t == task and c == condition}

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in rows:
                key = (r["task"], r["condition"], r["id"])
                if key in self.rows:
                    continue
                self.rows[key] = r
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def results(self, task: str, condition: str) -> dict[str, dict]:
        return {i: r for (t, c, i), r in self.rows.items() if t == task and c == condition}


# ---------------------------------------------------------------- statistics

# the intervals and tests live in staterank.stats (moved there, #19); imported back under the
# names this module and its callers use
from ..stats import holm as _holm, mcnemar, one_sample_t_p, paired_bootstrap_ci, ratio_mean_se  # noqa: E402
from ..stats import sign_flip_p as _sign_flip_p, t_interval, wilcoxon_p, wilson_interval as wilson  # noqa: E402


def _paired(task_rows: dict[str, dict], base_rows: dict[str, dict]) -> list[str]:
    return sorted(set(task_rows) & set(base_rows))


def accuracy_row(task: str, cond: str, rows: dict[str, dict], base: dict[str, dict]) -> dict:
    ids = sorted(rows)
    k = sum(bool(rows[i]["correct"]) for i in ids)
    n = len(ids)
    lo, hi = wilson(k, n)
    row = {"task": task, "condition": cond, "group": G.family(cond), "metric": "accuracy", "n": n,
           "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
           "delta_vs_base": None, "p_value": None}
    if any("truncated" in rows[i] for i in ids):  # generative tasks: share of outputs cut at the token budget
        row["truncated_share"] = sum(bool(rows[i].get("truncated")) for i in ids) / n
    pair = _paired(rows, base)
    if cond != BASE and pair:
        mc = mcnemar([base[i]["correct"] for i in pair], [rows[i]["correct"] for i in pair])
        acc_b = np.mean([bool(base[i]["correct"]) for i in pair])
        acc_c = np.mean([bool(rows[i]["correct"]) for i in pair])
        row.update(delta_vs_base=float(acc_c - acc_b), p_value=mc["p_value"], n_paired=len(pair),
                   base_only=mc["a_only"], cond_only=mc["b_only"])
    row["value"] = row["accuracy"]
    return row


def perplexity_row(task: str, cond: str, rows: dict[str, dict], base: dict[str, dict]) -> dict:
    ids = sorted(rows)
    nll = np.array([rows[i]["nll"] for i in ids])
    tok = np.array([rows[i]["tokens"] for i in ids])
    # standard error of the token-weighted mean (a ratio estimator), not of the per-window means
    mean, se = ratio_mean_se(nll, tok)
    row = {"task": task, "condition": cond, "group": G.family(cond), "metric": "perplexity", "n": len(ids),
           "accuracy": None, "value": float(math.exp(mean)), "ci_low": float(math.exp(mean - Z95 * se)),
           "ci_high": float(math.exp(mean + Z95 * se)), "delta_vs_base": None, "p_value": None}
    pair = _paired(rows, base)
    if cond != BASE and pair:
        pb = np.array([base[i]["nll"] / base[i]["tokens"] for i in pair])
        pc = np.array([rows[i]["nll"] / rows[i]["tokens"] for i in pair])
        tb = sum(base[i]["tokens"] for i in pair)
        row["delta_vs_base"] = float(math.exp(sum(rows[i]["nll"] for i in pair) / tb)
                                     - math.exp(sum(base[i]["nll"] for i in pair) / tb))
        row["p_value"] = wilcoxon_p(pc, pb)
        row["n_paired"] = len(pair)
    return row


def seed_aggregate(rows: list[dict]) -> list[dict]:
    """Across seeds of each random control family: mean, t interval of the seeds' values, mean
    delta, and a one-sample t test of the seeds' deltas (p_value; None under 2 seeds)."""
    out = []
    fams: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if "/s" in r["condition"]:
            fams.setdefault((r["task"], r["group"]), []).append(r)
    for (task, fam), rs in sorted(fams.items()):
        vals = [r["value"] for r in rs]
        m, lo, hi = t_interval(vals)
        # keep the interval inside the metric's range (accuracy in [0, 1], perplexity > 0)
        lo = max(lo, 0.0) if np.isfinite(lo) else lo
        hi = min(hi, 1.0) if np.isfinite(hi) and rs[0]["metric"] == "accuracy" else hi
        deltas = [r["delta_vs_base"] for r in rs if r["delta_vs_base"] is not None]
        p = one_sample_t_p(deltas)  # None under 2 seeds or for identical non-zero deltas (undefined)
        out.append({"task": task, "condition": fam, "group": fam, "metric": rs[0]["metric"], "seeds": len(rs),
                    "n": int(sum(r["n"] for r in rs)), "value": m,
                    "accuracy": m if rs[0]["metric"] == "accuracy" else None,
                    "ci_low": lo, "ci_high": hi, "seed_values": vals,
                    "delta_vs_base": float(np.mean(deltas)) if deltas else None, "p_value": p,
                    "test": "one-sample t test of per-seed deltas"})
    return out


def compare(log: ItemLog, task: str, a: str, b_conds: list[str], n_boot: int = 2000) -> dict | None:
    """Accuracy of condition ``a`` minus condition(s) ``b_conds`` (one condition, or the seeds of
    a random control) on the items every one of them answered.

    Items are the unit of inference: d_i = a_i − mean_s b_{s,i}. ``p_items``: paired sign-flip
    test of mean d (with one condition, the exact McNemar test; never the items counted once per
    seed). ``diff_ci_*``: percentile bootstrap over items AND seeds, so both which items were
    drawn and which random heads were drawn widen it. ``seed_diffs``: each seed's difference;
    ``p_seed_rank``: share of seeds at or below ``a``, (1+k)/(S+1)."""
    ra = log.results(task, a)
    rbs = [log.results(task, c) for c in b_conds]
    rbs = [rb for rb in rbs if rb]
    if not ra or not rbs:
        return None
    ids = sorted(set(ra).intersection(*rbs))
    if not ids:
        return None
    A = np.array([bool(ra[i]["correct"]) for i in ids], dtype=float)  # [n]
    B = np.array([[bool(rb[i]["correct"]) for i in ids] for rb in rbs], dtype=float)  # [S, n]
    S, n = B.shape
    d = A - B.mean(0)
    lo, hi = paired_bootstrap_ci(A, B, n_boot, seed=0)
    acc_a, acc_b = float(A.mean()), B.mean(1)
    out = {"task": task, "a": a, "b": G.family(b_conds[0]), "seeds": S, "n_items": n,
           "acc_a": acc_a, "acc_b": float(acc_b.mean()), "diff": float(d.mean()),
           "diff_ci_low": lo, "diff_ci_high": hi,
           "p_items": _sign_flip_p(d), "seed_diffs": [float(acc_a - x) for x in acc_b],
           "p_seed_rank": (1 + int((acc_b <= acc_a).sum())) / (S + 1) if S > 1 else None,
           "test": "paired sign-flip test over items; bootstrap over items and seeds"}
    if S == 1:
        mc = mcnemar(A.astype(bool), B[0].astype(bool))
        out.update(a_only=mc["a_only"], b_only=mc["b_only"])
    return out


def verdicts(probe_json: dict, tasks: list[str], tested: str = "low", other: str = "high",
             control: str | None = None, alpha: float = 0.05) -> dict[str, dict]:
    """Numbers for the paper's claim on each task: ablating ``tested`` (low-rank) heads hurts more
    than ``other`` (high-rank) AND more than the layer-matched random control.

    One claim tested on several tasks: each comparison's p is Holm-adjusted across the tasks.
    worse_than_other: diff < 0 and adjusted p < alpha. worse_than_control: diff < 0, adjusted p
    < alpha, and the bootstrap interval's upper end < 0. ``holds`` needs both; None when a piece
    is missing."""
    control = control or f"layer_random.{tested}"
    comps = {(c["task"], c["a"], c["b"]): c for c in probe_json.get("comparisons", [])}
    vs_o = {t: comps.get((t, tested, other)) for t in tasks}
    vs_c = {t: comps.get((t, tested, control)) for t in tasks}
    adj_o = _holm({t: c and c["p_items"] for t, c in vs_o.items()})
    adj_c = _holm({t: c and c["p_items"] for t, c in vs_c.items()})
    out = {}
    for t in tasks:
        o, c = vs_o[t], vs_c[t]
        v: dict[str, Any] = {"task": t, "tested": tested, "other": other, "control": control, "alpha": alpha,
                             "vs_other": o, "vs_control": c, "p_other_holm": adj_o[t], "p_control_holm": adj_c[t],
                             "holm_family": len(tasks)}
        v["worse_than_other"] = None if o is None else bool(o["diff"] < 0 and adj_o[t] < alpha)
        v["worse_than_control"] = None if c is None else bool(
            c["diff"] < 0 and adj_c[t] < alpha and c["diff_ci_high"] is not None and c["diff_ci_high"] < 0)
        parts = (v["worse_than_other"], v["worse_than_control"])
        v["holds"] = None if None in parts else all(parts)
        out[t] = v
    return out


# ---------------------------------------------------------------- the stage

def _task_spec(task: ProbeTask) -> dict:
    """What defines a task's items and scoring: its class and plain fields (batch size only
    changes speed, so it is left out and may differ on resume)."""
    from dataclasses import fields, is_dataclass

    simple = (str, int, float, bool, type(None), tuple, list)
    d = {f.name: getattr(task, f.name) for f in fields(task)} if is_dataclass(task) else {}
    # a Path too; absent when not given, so runs from before tasks took a data_dir still resume
    d = {k: (str(v) if k == "data_dir" else v) for k, v in d.items() if not (k == "data_dir" and v is None)}
    d = {k: v for k, v in d.items() if k != "batch_size" and not k.startswith("_") and isinstance(v, simple)}
    return {"class": type(task).__name__, "repr": None if is_dataclass(task) else repr(task), **d}


def _single_head_conditions(space: G.HeadSpace) -> dict[str, G.Group]:
    return {f"{SINGLE}L{li}.H{h}": {li: [h]} for li, h in space.flat()}


def probe(
    loaded,
    tasks: Sequence[str] = ("niah",),
    groups: Sequence[str] = ("low", "high", "random", "layer_random"),
    *,
    out: str | os.PathLike,
    fraction: float | None = None,
    count: int | None = None,
    seeds: int = 5,
    seed: int = 0,
    limit: int | None = None,
    mode: str = "zero",
    single_head: bool = False,
    single_limit: int | None = None,
    scores: HeadScores | str | os.PathLike | None = None,
    batch_size: int = 16,
    data_dir: str | None = None,
    niah_lengths: Sequence[int] | None = None,
    niah_depths: Sequence[float] | None = None,
    max_new_tokens: int | None = None,
    n_shot: int = 0,
    calib_texts: int = 8,
    calib_tokens: int = 512,
    progress: bool = True,
    task_objects: Sequence[ProbeTask] | None = None,
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_limit: int | None = None,
) -> Path:
    """Run the probe into run folder ``out`` (resumes a folder holding the same config).

    ``loaded``: anything with ``.model``, ``.tokenizer`` (``models.Loaded``; ``.adapter``/``.spec``
    used when present). ``task_objects`` replaces ``tasks`` by ready ProbeTask objects (tests,
    custom tasks). ``scores``: HeadScores or a JSON file of them (stratify ``HeadStats``); measured
    on prose when None and low/high groups are asked for. ``lm_eval_tasks``: lm-evaluation-harness
    tasks run on every non-single-head condition (``lmeval.lm_eval_probe``), one file per condition
    under ``lm_eval/``. ``data_dir``: where niah / ppl / calibration prose and gsm8k data are read
    (must exist when given; default: ``staterank.data``'s resolution order). ``seed`` >= 0.

    Every input (tasks and their data, groups, the scores file, calibration prose) is checked
    before the run folder is created, so a failed start leaves no folder behind.
    """
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    check_seed(seed)
    check_given(data_dir)
    G.check_kinds(groups, seeds)
    model, tok = loaded.model, loaded.tokenizer
    from ..adapters import get_adapter

    adapter = getattr(loaded, "adapter", None) or get_adapter(model)
    layers = adapter.linear_layers(model)
    space = G.HeadSpace.of(layers)
    n = G.group_size(space, fraction, count)
    if task_objects is None:
        task_objects = [make_task(t, limit=limit, seed=seed, batch_size=batch_size, data_dir=data_dir,
                                  niah_lengths=niah_lengths, niah_depths=niah_depths,
                                  max_new_tokens=max_new_tokens, n_shot=n_shot) for t in tasks]
    if not task_objects and not lm_eval_tasks:
        raise UserError("no tasks given")
    score_src = None if scores is None or isinstance(scores, HeadScores) else str(scores)
    config = {
        "model": getattr(loaded, "spec", type(model).__name__), "tasks": [_task_spec(t) for t in task_objects],
        "groups": list(groups), "group_size": n, "seeds": seeds, "seed": seed, "mode": mode,
        "single_head": single_head, "single_limit": single_limit, "scores": score_src,
        "calib": [calib_texts, calib_tokens], "lm_eval": [list(lm_eval_tasks), lm_eval_limit],
    }
    if data_dir is not None:  # calibration prose comes from it (absent when not given: older runs resume)
        config["data_dir"] = str(data_dir)
    if mode == "mean":  # means were taken at the rule output before; those runs must not resume
        config["mean_site"] = "output projection input"
    # items (and lm-eval) first: a missing dataset or package fails here, before a run folder exists
    task_items = [(task, task.items(tok)) for task in task_objects]
    config["items"] = items_digest({t.name: its for t, its in task_items})  # same ids, other items: no resume
    if lm_eval_tasks:
        from .lmeval import _import_lm_eval

        _import_lm_eval()
    # an existing folder is resumed (same config) or refused now, before anything is measured
    out = Path(out)
    from ..models import weights_fingerprint

    weights = weights_fingerprint(model)
    folder = runio.new_run_dir(out, config, weights=weights) if out.exists() and any(out.iterdir()) else None
    scores_saved = folder is not None and (folder / "scores.json").exists()

    # scores -> groups (written once; a resumed run reads them back so groups never change)
    need_scores = any(g in groups for g in ("low", "high")) or single_head
    hs: HeadScores | None = None
    need_calib = (need_scores and scores is None and not scores_saved) or (
        mode == "mean" and not (folder is not None and (folder / "means.npz").exists()))
    calib = calibration_texts(calib_texts, data_dir=data_dir) if need_calib else None
    if scores_saved:
        hs = HeadScores.from_dict(runio.read_json(folder / "scores.json"), str(folder / "scores.json"))
    elif need_scores:
        if isinstance(scores, HeadScores):
            hs = scores
        elif scores is not None:
            hs = HeadScores.read(scores)
        else:
            hs = measure_scores(model, tok, calib_texts, calib_tokens, adapter=adapter, texts=calib)
    if hs is not None and hs.layers != list(space.layers):
        raise UserError(f"scores are for layers {hs.layers}; the model's linear layers are {list(space.layers)}")
    conds = {BASE: {}}
    conds.update(G.make_groups(space, groups, n, seeds, seed, None if hs is None else hs.norm_rank))
    if single_head:
        conds.update(_single_head_conditions(space))

    if folder is None:
        folder = runio.new_run_dir(out, config, weights=weights)
    if hs is not None and not scores_saved:
        runio.write_json(folder / "scores.json", hs.to_dict())
    runio.write_json(folder / "groups.json", {
        "group_size": n, "total_heads": space.total, "fraction": n / space.total,
        "state_bytes_total": space.bytes_of({li: list(range(h)) for li, h in zip(space.layers, space.heads)}),
        "conditions": {c: {"heads": {str(k): v for k, v in g.items()}, "n_heads": G.size(g),
                           "state_bytes": space.bytes_of(g)} for c, g in conds.items()},
    })

    means = None
    if mode == "mean":
        mp = folder / "means.npz"
        if mp.exists():
            means = {int(k[1:]): torch.from_numpy(v) for k, v in runio.read_npz(mp).items()}
        else:
            from ..models import tokenize_texts

            means = calibrate_means(model, tokenize_texts(tok, calib, calib_tokens), adapter)
            runio.write_npz(mp, **{f"L{k}": v.numpy() for k, v in means.items()})

    log = ItemLog(folder / "items.jsonl")
    for task, items in task_items:
        for cond, group in conds.items():
            if cond.startswith(SINGLE):
                todo_items = items[: single_limit] if single_limit else items
            else:
                todo_items = items
            done = log.done(task.name, cond)
            todo = [it for it in todo_items if it.id not in done]
            if not todo:
                continue
            if progress:
                print(f"[probe] {task.name} / {cond}: {len(todo)} items", flush=True)
            step = max(1, batch_size)
            with ablate(model, group, mode, means=means, adapter=adapter):
                for s in range(0, len(todo), step):
                    batch = todo[s:s + step]
                    res = task.run(model, tok, batch)
                    log.append([{"task": task.name, "condition": cond, **r} for r in res])
    lm_results = {}
    if lm_eval_tasks:
        from .lmeval import lm_eval_probe

        for cond, group in conds.items():
            if cond.startswith(SINGLE):
                continue
            f = folder / "lm_eval" / (cond.replace("/", "__") + ".json")
            if not f.exists():
                if progress:
                    print(f"[probe] lm-eval {','.join(lm_eval_tasks)} / {cond}", flush=True)
                runio.write_json(f, lm_eval_probe(loaded, lm_eval_tasks, group, mode=mode, means=means,
                                                  limit=lm_eval_limit, data_dir=data_dir))
            lm_results[cond] = runio.read_json(f)
    summary = summarize(folder, log, task_objects, conds, hs, space, n)
    summary["lm_eval"] = lm_results
    runio.write_json(folder / "probe.json", summary)
    return folder


def summarize(folder: Path, log: ItemLog, task_objects, conds: dict, hs: HeadScores | None,
              space: G.HeadSpace, n: int) -> dict:
    """probe.json from the item log (only finished items count)."""
    rows: list[dict] = []
    comparisons: list[dict] = []
    single: dict[str, Any] = {}
    csv_rows: list[dict] = []
    for task in task_objects:
        base = log.results(task.name, BASE)
        mk = accuracy_row if task.metric == "accuracy" else perplexity_row
        task_rows = {}
        for cond in conds:
            r = log.results(task.name, cond)
            if r and not cond.startswith(SINGLE):
                task_rows[cond] = mk(task.name, cond, r, base)
        rows += task_rows.values()
        if task.metric == "accuracy":
            names = set(task_rows)
            pairs = [("low", ["high"])]
            for t in ("low", "high"):
                for fam in ("random", f"layer_random.{t}", f"byte_random.{t}"):
                    pairs.append((t, sorted(c for c in names if G.family(c) == fam)))
            for a, bs in pairs:
                if a in names and bs and all(b in names for b in bs):
                    c = compare(log, task.name, a, bs)
                    if c:
                        comparisons.append(c)
        if hs is not None:
            heads = [c for c in conds if c.startswith(SINGLE) and log.results(task.name, c)]
            if heads and base:
                single[task.name] = _single_head(task, log, heads, conds, base, hs, space, csv_rows)
    rows_agg = seed_aggregate(rows)
    summary = {"rows": rows, "aggregates": rows_agg, "comparisons": comparisons, "single_head": single,
               "group_size": n,
               "total_heads": space.total, "tasks": [t.name for t in task_objects],
               "metrics": {t.name: t.metric for t in task_objects}}
    summary["verdicts"] = verdicts(summary, [t.name for t in task_objects if t.metric == "accuracy"])
    if csv_rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
        runio.atomic_write_text(folder / "single_head.csv", buf.getvalue())
    return summary


def _single_head(task, log, heads, conds, base, hs: HeadScores, space, csv_rows) -> dict:
    """Cost of each head alone (accuracy: base − ablated on the same items; perplexity: ablated −
    base log-perplexity) and its Spearman ρ with mean rank and mean nuclear norm."""
    li_pos = {li: i for i, li in enumerate(space.layers)}
    costs, ranks, nucs = [], [], []
    for c in heads:
        (li, hl), = conds[c].items()
        h = hl[0]
        r = log.results(task.name, c)
        ids = sorted(set(r) & set(base))
        if task.metric == "accuracy":
            cost = float(np.mean([bool(base[i]["correct"]) for i in ids]) - np.mean([bool(r[i]["correct"]) for i in ids]))
            value = float(np.mean([bool(r[i]["correct"]) for i in ids]))
        else:
            tb = sum(base[i]["tokens"] for i in ids)
            cost = (sum(r[i]["nll"] for i in ids) - sum(base[i]["nll"] for i in ids)) / tb
            value = math.exp(sum(r[i]["nll"] for i in ids) / tb)
        mr, nn_ = float(hs.mean_rank[li_pos[li], h]), float(hs.mean_nuclear[li_pos[li], h])
        costs.append(cost)
        ranks.append(mr)
        nucs.append(nn_)
        csv_rows.append({"task": task.name, "layer": li, "head": h, "n": len(ids), "value": value, "cost": cost,
                         "mean_rank": mr, "norm_rank": float(hs.norm_rank[li_pos[li], h]), "mean_nuclear": nn_})

    def rho(x, y):
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return {"rho": None, "p_value": None}
        res = sst.spearmanr(x, y)
        return {"rho": float(res.statistic), "p_value": float(res.pvalue)}

    return {"n_heads": len(costs), "cost": "base - ablated accuracy" if task.metric == "accuracy"
            else "ablated - base mean NLL per token", "mean_cost": float(np.mean(costs)),
            "max_cost": float(np.max(costs)), "spearman_rank": rho(costs, ranks), "spearman_nuclear": rho(costs, nucs)}
