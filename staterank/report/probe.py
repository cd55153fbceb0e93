"""Report of a probe run, from its folder only: report.md (Table-1 style) + figures.

  probe_accuracy.png   per task: value with 95 % interval per condition (tested groups, controls as
                       mean over seeds with the seeds' t interval)
  single_head.png      per task: each head's single-ablation cost vs its mean rank and mean nuclear norm
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import runio
from ..errors import UserError
from . import fmt_p, html
from .common import fmt_num as _f
from .common import main_rank_only, plural, pyplot, save

_p = fmt_p


def _order(conds: list[str]) -> list[str]:
    rank = {"base": 0, "low": 1, "high": 2}
    return sorted(conds, key=lambda c: (rank.get(c, 3), c))


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    nd = 3 if r["metric"] == "accuracy" else 2
    s = f"{_f(r['value'], nd)} [{_f(r['ci_low'], nd)}, {_f(r['ci_high'], nd)}]"
    if r.get("delta_vs_base") is not None:
        s += f" Δ {r['delta_vs_base']:+.{nd}f} (p {_p(r['p_value'])})"
    if r.get("seeds"):
        s += f" ×{plural(r['seeds'], 'seed')}"
    return s


def _table(pj: dict, rows: list[dict]) -> list[str]:
    tasks = pj["tasks"]
    by = {(r["task"], r["condition"]): r for r in rows}
    conds = _order(sorted({r["condition"] for r in rows}))
    out = ["| condition | " + " | ".join(f"{t} ({pj['metrics'][t]})" for t in tasks) + " |",
           "|---|" + "---|" * len(tasks)]
    for c in conds:
        out.append(f"| {c} | " + " | ".join(_cell(by.get((t, c))) for t in tasks) + " |")
    return out


def _niah_grid(run: Path, conds: list[str]) -> list[str]:
    path = run / "items.jsonl"
    if not path.exists():
        return []
    acc: dict[tuple[str, str], list[bool]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("cell") and r["condition"] in conds:
                acc.setdefault((r["condition"], r["cell"]), []).append(bool(r["correct"]))
    if not acc:
        return []
    cells = sorted({c for _, c in acc}, key=lambda s: (int(s.split("@")[0]), float(s.split("@")[1])))
    out = ["", "### NIAH accuracy by context length @ needle depth", "",
           "| condition | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for c in conds:
        vals = [acc.get((c, x)) for x in cells]
        out.append(f"| {c} | " + " | ".join("—" if not v else f"{sum(v) / len(v):.2f} ({len(v)})" for v in vals) + " |")
    return out


_COLORS = {"unablated": "0.5", "tested group (low / high)": "C3", "random control": "C0"}


def _kind(cond: str) -> str:
    return "unablated" if cond == "base" else "random control" if "random" in cond else "tested group (low / high)"


def _fig_bars(plt, run: Path, pj: dict) -> str | None:
    rows = [r for r in pj["rows"] if "/s" not in r["condition"]] + pj["aggregates"]
    if not rows:
        return None
    tasks = pj["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 1.2 * len({r['condition'] for r in rows})) * len(tasks) / 1.5, 4),
                             squeeze=False)
    for ax, t in zip(axes[0], tasks):
        rs = {r["condition"]: r for r in rows if r["task"] == t}
        names = _order(list(rs))
        vals = [rs[c]["value"] for c in names]
        lo = [v - (rs[c]["ci_low"] if rs[c]["ci_low"] is not None else v) for c, v in zip(names, vals)]
        hi = [(rs[c]["ci_high"] if rs[c]["ci_high"] is not None else v) - v for c, v in zip(names, vals)]
        ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=3,
               color=[_COLORS[_kind(c)] for c in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(t)
        ax.set_ylabel(pj["metrics"][t])
    handles = [plt.Rectangle((0, 0), 1, 1, color=v, label=k) for k, v in _COLORS.items()]
    for ax, t in zip(axes[0], tasks):
        if pj["metrics"][t] == "accuracy":  # room above 1 for the legend, so it hides no bar
            ax.set_ylim(0, 1.3)
            ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes[0][0].legend(handles=handles, loc="upper center", ncol=2, fontsize=7, framealpha=0.9)
    fig.suptitle("error bars: 95 % intervals (one accuracy: Wilson; perplexity: per-window spread;\n"
                 "random controls: mean over seeds, t interval of the seeds)", fontsize=8)
    save(plt, fig, run / "probe_accuracy.png", dpi=120)
    return "probe_accuracy.png"


def _fig_single(plt, run: Path, rows: list[dict]) -> str | None:
    if not rows:
        return None
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 3.5 * len(tasks)), squeeze=False)
    for i, t in enumerate(tasks):
        rs = [r for r in rows if r["task"] == t]
        for j, key in enumerate(("mean_rank", "mean_nuclear")):
            ax = axes[i][j]
            xs, ys = [float(r[key]) for r in rs], [float(r["cost"]) for r in rs]
            ax.scatter(xs, ys, s=14)
            # name the (at most 8) heads whose removal changed the score most; a zero-cost crowd stays unnamed
            top = [k for k in sorted(range(len(rs)), key=lambda k: -abs(ys[k])) if ys[k] != 0][:8]
            for k in top:
                ax.annotate(f"L{rs[k]['layer']}H{rs[k]['head']}", (xs[k], ys[k]), fontsize=6, xytext=(2, 2),
                            textcoords="offset points")
            ax.set_xlabel({"mean_rank": "mean threshold rank", "mean_nuclear": "mean nuclear norm"}.get(key, key))
            ax.set_ylabel(f"{t}: single-head cost")
            ax.set_title(f"{t}: one point per head ({len(rs)}); largest |cost| named LxHy = layer x, head y", fontsize=8)
            ax.axhline(0, color="0.7", lw=0.8)
    save(plt, fig, run / "single_head.png", dpi=120)
    return "single_head.png"


@main_rank_only
def render(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and figures) for the probe run in ``run_dir``; returns its path."""
    run = Path(run_dir)
    if not (run / "probe.json").exists():
        raise UserError(f"{run} holds no probe.json (not a finished probe run)")
    pj = runio.read_json(run / "probe.json")
    cfg = runio.read_json(run / "config.json")["config"] if (run / "config.json").exists() else {}
    gj = runio.read_json(run / "groups.json") if (run / "groups.json").exists() else {}
    plt = pyplot()
    L = [f"# Probe: {cfg.get('model', '?')}", ""]
    L.append(f"Mode **{cfg.get('mode', '?')}** ablation of {pj['group_size']} of {pj['total_heads']} value heads "
             f"({pj['group_size'] / max(1, pj['total_heads']):.1%}) per group; random controls over "
             f"{plural(cfg.get('seeds', '?'), 'seed')} (seed {cfg.get('seed', '?')}). Groups: `low`/`high` = the heads with the "
             "lowest/highest normalised mean rank; `random` count-matched; `layer_random.X` the same number of "
             "heads per layer as X; `byte_random.X` the same recurrent-state bytes as X.")
    L += ["", "Cells: value [95 % interval] Δ vs base (p). Accuracy: Wilson interval, exact McNemar vs base "
          "on the same items. Perplexity: interval from the per-window spread, Wilcoxon vs base. Controls "
          "(×S seeds): mean over seeds, t interval of the seeds, one-sample t test of their deltas.", ""]
    table_rows = [r for r in pj["rows"] if "/s" not in r["condition"]] + pj["aggregates"]
    if table_rows:  # an lm-eval-only run has no probe-task rows: its results are the lm-eval section below
        L += ["## Table 1", ""] + _table(pj, table_rows)
    cut = [r for r in pj["rows"] if r.get("truncated_share") and "/s" not in r["condition"]]
    if cut:  # an accuracy measured on cut-off outputs says little about skill: say how many
        L += ["", "Outputs that hit the token budget (`--max-new-tokens`) before ending: "
              + ", ".join(f"{r['task']} {r['condition']} {r['truncated_share']:.0%}" for r in cut)
              + ". Their answers may be missing for want of tokens, not of skill."]
    fig = _fig_bars(plt, run, pj)
    if fig:
        L += ["", f"![accuracy per condition]({fig})"]
    seeds = [r for r in pj["rows"] if "/s" in r["condition"]]
    if seeds:
        L += ["", "<details><summary>per seed</summary>", ""] + _table(pj, seeds) + ["", "</details>"]
    conds = [c for c in ("base", "low", "high") if any(r["condition"] == c for r in pj["rows"])]
    L += _niah_grid(run, conds)
    if pj.get("comparisons"):
        L += ["", "## Paired comparisons (accuracy of A − B on the same items)", "",
              "| task | A | B | seeds | items | acc A | acc B | A − B [95 % bootstrap over items and seeds] | p (paired sign-flip over items) | p (seed rank) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for c in pj["comparisons"]:
            L.append(f"| {c['task']} | {c['a']} | {c['b']} | {c['seeds']} | {c.get('n_items', '—')} | {_f(c['acc_a'])} | {_f(c['acc_b'])} | "
                     f"{c['diff']:+.3f} [{_f(c['diff_ci_low'])}, {_f(c['diff_ci_high'])}] | {_p(c['p_items'])} | "
                     f"{_p(c['p_seed_rank'])} |")
    if pj.get("verdicts"):
        L += ["", "## Does ablating low-rank heads hurt more than high-rank and than layer-matched random heads?", "",
              "p-values Holm-adjusted across the tasks (one claim, tested on each task). A p is the paired "
              "sign-flip test over items with the random control's seeds averaged; the interval resamples items "
              "and seeds, so it also carries which random heads were drawn. 'Worse than layer-matched' needs "
              "both: p < 0.05 and the interval below 0.", "",
              "| task | low − high (Holm p) | low − layer_random.low [interval] (Holm p) | worse than high | worse than layer-matched | both |",
              "|---|---|---|---|---|---|"]
        for t, v in pj["verdicts"].items():
            o, c = v["vs_other"], v["vs_control"]
            so = "—" if o is None else f"{o['diff']:+.3f} ({_p(v.get('p_other_holm', o['p_items']))})"
            sc = "—" if c is None else (f"{c['diff']:+.3f} [{_f(c['diff_ci_low'])}, {_f(c['diff_ci_high'])}] "
                                        f"({_p(v.get('p_control_holm', c['p_items']))})")
            L.append(f"| {t} | {so} | {sc} | {v['worse_than_other']} | {v['worse_than_control']} | {v['holds']} |")
    if pj.get("single_head"):
        L += ["", "## Single-head ablation", "", "| task | heads | cost | mean cost | max cost | Spearman ρ with mean rank (p) | "
              "Spearman ρ with mean nuclear norm (p) |", "|---|---|---|---|---|---|---|"]
        for t, s in pj["single_head"].items():
            r, n = s["spearman_rank"], s["spearman_nuclear"]
            L.append(f"| {t} | {s['n_heads']} | {s['cost']} | {s['mean_cost']:.4f} | {s['max_cost']:.4f} | "
                     f"{_f(r['rho'])} ({_p(r['p_value'])}) | {_f(n['rho'])} ({_p(n['p_value'])}) |")
        csv_rows = []
        if (run / "single_head.csv").exists():
            with open(run / "single_head.csv") as f:
                csv_rows = list(csv.DictReader(f))
        fig = _fig_single(plt, run, csv_rows)
        if fig:
            L += ["", f"![single-head cost vs rank and norm]({fig})", "", "Per head: `single_head.csv`."]
    if pj.get("lm_eval"):
        L += ["", "## lm-evaluation-harness", "", "```json", json.dumps(pj["lm_eval"], indent=1)[:20000], "```"]
    if gj:
        L += ["", f"Recurrent state of all linear heads: {gj.get('state_bytes_total')} bytes per sequence; "
              "per-condition heads and bytes in `groups.json`."]
    out = run / "report.md"
    runio.atomic_write_text(out, "\n".join(L) + "\n")
    html.render(run)
    return out
