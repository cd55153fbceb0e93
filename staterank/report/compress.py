"""Report of a compress run (compress.json only): the Pareto plot of accuracy vs state bytes, the winners
at each budget, int8 of all heads vs the unmodified model, and the per-head sensitivity table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import runio
from ..errors import UserError
from .common import fmt_num, plural, pyplot, save

_STYLE = {"pruning": ("o-", "C0"), "precision": ("s-", "C1"), "mixed": ("D-", "C2")}


def _ci(a: dict) -> str:
    return f"{a['acc']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] (n = {a['n']})"


def _ret(r: dict | None) -> str:
    if not r or r.get("ratio") is None:
        return "—"
    return f"{r['ratio']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}]"


def _fig_pareto(plt, run: Path, c: dict) -> str:
    pts = [p for p in c["points"] if p["budget"] is not None]
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    groups: dict[str, list] = {}
    for p in pts:
        name = p["curve"] if p["curve"] in ("mixed",) or p["curve"].endswith("_random") else f"{p['curve']}/{p['method']}"
        groups.setdefault(name, []).append(p)
    for i, (name, ps) in enumerate(sorted(groups.items())):
        base = name.split("/")[0].replace("_random", "")
        mk, col = _STYLE.get(base, ("o-", f"C{i + 3}"))
        if name.endswith("_random"):
            bs = sorted({p["budget"] for p in ps})
            xs = [np.mean([p["bytes_fraction"] for p in ps if p["budget"] == b]) for b in bs]
            ys = [[p["accuracy"]["all"]["acc"] for p in ps if p["budget"] == b] for b in bs]
            ax.errorbar(xs, [np.mean(y) for y in ys], yerr=[np.std(y, ddof=1) if len(y) > 1 else 0 for y in ys],
                        fmt=mk[0] + ":", color=col, alpha=0.5, capsize=3, mfc="none",
                        label=f"{name} (mean ± std, {plural(len(ys[0]), 'seed')})")
            continue
        ps = sorted(ps, key=lambda p: p["bytes_fraction"])
        x = [p["bytes_fraction"] for p in ps]
        y = [p["accuracy"]["all"]["acc"] for p in ps]
        err = [[p["accuracy"]["all"]["acc"] - p["accuracy"]["all"]["lo"] for p in ps],
               [p["accuracy"]["all"]["hi"] - p["accuracy"]["all"]["acc"] for p in ps]]
        style = mk if base in _STYLE else "^-"
        if name.endswith("/planner"):
            style = style[0] + "--"
        ax.errorbar(x, y, yerr=err, fmt=style, color=col, capsize=2, ms=5, mfc="white" if name.endswith("/planner") else col,
                    label=f"{name} (Wilson 95 %)")
    b = c["base"]["all"]
    ax.errorbar([1.0], [b["acc"]], yerr=[[b["acc"] - b["lo"]], [b["hi"] - b["acc"]]], fmt="*", color="black", ms=11,
                capsize=3, label="unmodified (fp32)")
    for i, (name, a) in enumerate(c["all_heads"].items()):
        ax.plot([a["bytes_fraction"]], [a["accuracy"]["all"]["acc"]], "P", ms=9, color=f"C{4 + i}", label=f"{name}, all heads")
    for x in (0.5, 0.25):
        ax.axvline(x, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("recurrent state bytes (share of fp32)")
    ax.set_ylabel(f"accuracy ({', '.join(c['tasks']['names'])} pooled)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(0, 1.05)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(plt, fig, run / "pareto.png", dpi=120)
    return "pareto.png"


def _fig_sensitivity(plt, run: Path, c: dict) -> str | None:
    sens = c["sensitivity"]
    if not sens:
        return None
    precs = list(sens)
    rows = sens[precs[0]]
    mat = np.array([[r["dnll"] for r in sens[p]] for p in precs])
    fig, ax = plt.subplots(figsize=(0.32 * len(rows) + 2.5, 0.4 * len(precs) + 1.6))
    lim = max(1e-6, float(np.nanmax(np.abs(mat))))
    im = ax.imshow(np.sign(mat) * np.log10(1 + np.abs(mat) / 1e-3), cmap="RdBu_r", aspect="auto",
                   vmin=-np.log10(1 + lim / 1e-3), vmax=np.log10(1 + lim / 1e-3))
    ax.set_yticks(range(len(precs)), precs, fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{r['layer']}.{r['head']}" for r in rows], fontsize=6, rotation=90)
    ax.set_xlabel("layer.head")
    fig.colorbar(im, ax=ax, label="sign · log10(1 + |ΔNLL| / 1e-3)")
    save(plt, fig, run / "sensitivity.png", dpi=120)
    return "sensitivity.png"


def render(run_dir: str | Path) -> Path:
    """Write pareto.png, sensitivity.png and report.md for a compress run; returns report.md."""
    run = Path(run_dir)
    if not (run / "compress.json").exists():
        raise UserError(f"{run} holds no finished compress run (no compress.json)")
    c = runio.read_json(run / "compress.json")
    plt = pyplot()
    pareto = _fig_pareto(plt, run, c)
    sfig = _fig_sensitivity(plt, run, c)
    t = c["tasks"]
    L = [f"# State precision vs pruning at equal bytes: {c['model']}", "",
         f"{c['heads']} value heads, {c['state_bytes_fp32']:,} B of fp32 recurrent state per sequence; bytes per "
         "head: " + ", ".join(f"{p} {b:,}" for p, b in c["bytes_per_head"].items()) + " (K·V·bytes + fp32 scales).", "",
         f"Semantics: {c['semantics']}. Accuracy: greedy exact match on {t['names']} (n = {t['n']} each, held-out "
         "seeds), pooled over tasks, Wilson 95 % intervals; retained = accuracy / unmodified accuracy with a paired "
         "bootstrap 95 % interval over items.", "",
         f"Unmodified model: {_ci(c['base']['all'])}.", "",
         "Curves: `pruning/<method>` and `precision/<method>` order heads by calibration statistics only "
         "(prune.scores; higher score compressed first); `*/planner` and `mixed` choose per head by the sensitivity "
         "table below, measured on other items of the same tasks (so they know the tasks; compare `mixed` with "
         "`pruning/planner` and `precision/planner` for the value of mixing); `*_random`: the same per-head "
         "precisions on random heads. A curve's entry at a budget is its best point at or below it.", "",
         "## Which method wins", ""]
    for b, w in c["winners"].items():
        L.append(f"### Within {float(b):.1%} of the state bytes")
        L.append("")
        if not w["curves"]:
            L += ["No plan met this budget.", ""]
            continue
        L += ["| curve | best point (budget) | bytes | accuracy [95 % CI] | retained |", "|---|---|---|---|---|"]
        for r in w["curves"]:
            acc = _ci(r["accuracy"]) if r["accuracy"] else f"{r['acc']:.3f} (mean of {plural(r['seeds'], 'seed')})"
            L.append(f"| {r['curve']} | {r['at_budget']:g} | {r['bytes_fraction']:.1%} | {acc} | {_ret(r['retained'])} |")
        L.append("")
        if w["winner"]:
            v = w["vs_runner_up"]
            if v and v["p_value"] >= 0.05:
                head = f"**Best point estimate: {w['winner']}**, not distinguishable from {v['runner_up']}"
            else:
                head = f"**Winner: {w['winner']}**" + (f", ahead of {v['runner_up']}" if v else "")
            L.append(head + (f" (exact McNemar p = {fmt_num(v['p_value'])}: {v['a_only']} items only the first gets "
                             f"right, {v['b_only']} only the second)" if v else "") + ".")
            L.append("")
    missing = [p for p in ("precision",) if not any(pt["curve"] == p and pt["bytes_fraction"] <= 0.25 for pt in c["points"])]
    if missing:
        L += ["Precision-only has no point at or below 25 %: its coarsest rung on every head needs "
              f"{min(a['bytes_fraction'] for a in c['all_heads'].values()) if c['all_heads'] else float('nan'):.1%} "
              "of the bytes (the scales), so at 25 % only plans that remove heads compete.", ""]
    L += ["## All heads at one precision vs the unmodified model", "",
          "| precision | bytes | accuracy [95 % CI] | retained | Δ accuracy [95 % t CI] | McNemar p |", "|---|---|---|---|---|---|"]
    for name, a in c["all_heads"].items():
        d = a["diff_vs_base"]
        L.append(f"| {name} | {a['bytes_fraction']:.1%} | {_ci(a['accuracy']['all'])} | {_ret(a['retained'])} | "
                 f"{fmt_num(d['mean'])} [{fmt_num(d['lo'])}, {fmt_num(d['hi'])}] | {fmt_num(a['mcnemar_vs_base']['p_value'])} |")
    L += ["", f"![pareto]({pareto})", "", "## Per-head sensitivity", "",
          f"ΔNLL of the answer (teacher-forced, nats per item, {c['sensitivity_items']['n']} items, other held-out "
          "seeds) when one head alone is stored at the precision; the planner's costs. Spearman ρ across heads with "
          "the head's time-mean rank r̄ and nuclear norm n̄ (calibration suite):", "",
          "| precision | mean ΔNLL | max ΔNLL (head) | rel. state error (mean) | ρ with rank (p) | ρ with norm (p) |",
          "|---|---|---|---|---|---|"]
    for p, rows in c["sensitivity"].items():
        d = np.array([r["dnll"] for r in rows])
        j = int(np.argmax(d))
        cr = c["correlations"][p]

        def rho(x):
            return "—" if x["rho"] is None else f"{x['rho']:+.2f} ({fmt_num(x['p'])})"
        L.append(f"| {p} | {d.mean():.4f} | {d[j]:.4f} ({rows[j]['layer']}.{rows[j]['head']}) | "
                 f"{np.mean([r['rel_error'] for r in rows]):.2e} | {rho(cr['rank'])} | {rho(cr['norm'])} |")
    if sfig:
        L += ["", f"![sensitivity]({sfig})"]
    L += ["", "## Every point", "", "| curve | method | budget | seed | bytes | precisions | accuracy [95 % CI] |",
          "|---|---|---|---|---|---|---|"]
    for p in c["points"]:
        L.append(f"| {p['curve']} | {p['method']} | {'—' if p['budget'] is None else p['budget']} | "
                 f"{'—' if p['seed'] is None else p['seed']} | {p['bytes_fraction']:.1%} | "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(p['precisions'].items())) or 'all fp32'} | {_ci(p['accuracy']['all'])} |")
    out = run / "report.md"
    runio.atomic_write_text(out, "\n".join(L) + "\n")
    return out
