"""report.md of a whole run: the claims table first, then each stage's numbers and figures.
Reads ``claims.json`` and the stage folders only."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from .. import runio
from . import fmt_p, html
from .common import fmt_num, main_rank_only, plural

MARK = {"holds": "holds", "artefact": "ARTEFACT", "fails": "FAILS", "inconclusive": "inconclusive",
        "informational": "informational"}


_f = partial(fmt_num, str_nonfloat=True)  # counts and names print as they are


def _p(p) -> str:
    return f"p={fmt_p(p)}"


def _ours(o: dict) -> str:
    if "value" in o:
        ci = o.get("ci") or [None, None]
        s = f"{_f(o['value'])} [{_f(ci[0])}, {_f(ci[1])}]"
        if "init" in o:
            s += f"; at init{' (' + o['init_gates'] + ' gates)' if o.get('init_gates') else ''} {_f(o['init'])}"
        return s
    if "low" in o and "high" in o:
        s = f"base {_f(o.get('base'))} → low-rank removed {_f(o.get('low'))}, high-rank removed {_f(o.get('high'))} (n={o.get('n')})"
        lr = o.get("vs_layer_random") or {}
        if lr.get("diff") is not None:
            s += f"; low − layer-matched random {lr['diff']:+.3f}"
            if lr.get("diff_ci_low") is not None:
                s += f" [{lr['diff_ci_low']:+.3f}, {lr['diff_ci_high']:+.3f}] ({plural(lr.get('seeds'), 'seed')})"
            # the p treats the seeds' mean as fixed, the interval resamples seeds too: say so, or a
            # small p beside an interval straddling 0 reads as a contradiction
            s += f" (sign-flip over items, seeds averaged: {_p(lr.get('p_holm', lr.get('p_items')))}, Holm across tasks)"
        return s
    if "state_saved" in o:
        rc = o.get("random_controls") or {}
        ctrl = ", ".join(f"{k} {_f(v)}" for k, v in rc.items() if v is not None)
        if o.get("layer_matched_seed_ci"):
            which = (o.get("matched_control") or "layer_matched").replace("_", "-")
            ctrl += " ({} over seeds [{}, {}])".format(which, *(_f(x) for x in o["layer_matched_seed_ci"]))
        return (f"state −{_f(100 * o['state_saved'], 1) if o.get('state_saved') is not None else '—'} %; acc {_f(o.get('before'))} → "
                f"{_f(o.get('after'))} [{_f((o.get('after_ci') or [None])[0])}, {_f((o.get('after_ci') or [None, None])[1])}]; random: {ctrl}")
    return ", ".join(f"{k} {_f(v)}" for k, v in o.items() if not isinstance(v, (list, dict)))


def claims_table(c: dict) -> str:
    """The paper's claims with verdicts; then, apart, what was measured beside them (no verdict)."""
    lines = ["| claim | paper | ours (95 % CI — Spearman: weakest layer, Bonferroni; controls) | verdict |",
             "|---|---|---|---|"]
    for r in c["rows"]:
        if not r.get("informational"):
            lines.append(f"| {r['claim']} | {r['paper']} | {_ours(r['ours'])} | **{MARK[r['verdict']]}** — {r['why']} |")
    extra = [r for r in c["rows"] if r.get("informational")]
    if extra:
        lines += ["", "Also measured (not claims of the paper, so no verdict):", "",
                  "| measurement | ours | what it asks |", "|---|---|---|"]
        lines += [f"| {r['claim']} | {_ours(r['ours'])} | {r['why']} |" for r in extra]
    if c.get("missing_stages"):
        lines.append(f"\nStages not run: {', '.join(c['missing_stages'])}.")
    return "\n".join(lines)


def _rules(text: str) -> list[str]:
    """claims.py's docstring bullets -> a markdown list."""
    items = [" ".join(b.split()).replace("``", "`") for b in re.split(r"(?m)^\s*\* ", text) if b.strip()]
    return ["Verdict rules:", "", *[f"- {i}" for i in items]] if items else []


@main_rank_only
def render(folder: str | Path) -> Path:
    folder = Path(folder)
    c = runio.read_json(folder / "claims.json")
    cfg = runio.read_json(folder / "config.json")
    out = [f"# staterank run — {cfg['config'].get('model')}", "",
           "Every number below is read from a file in this folder; `claims.json` holds them all and names "
           "the file and the statistic behind each row (its `source`). Every head's curve, interactively: "
           "[report.html](report.html).", "", "## Claims of arXiv 2602.02195, measured", "", claims_table(c), "",
           *_rules(c.get("verdict_rules", "")), ""]
    for stage in ("stratify", "probe", "prune"):
        rep = folder / stage / "report.md"
        if rep.is_file():
            out += [f"## {stage}", "", f"Details: [{stage}/report.md]({stage}/report.md)", ""]
            for png in sorted((folder / stage).glob("*.png")):
                out.append(f"![{png.stem}]({stage}/{png.name})")
            out.append("")
    path = folder / "report.md"
    runio.atomic_write_text(path, "\n".join(out) + "\n")
    html.render(folder)
    return path
