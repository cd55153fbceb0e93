"""report.html: one self-contained page (plotly's JS inlined once, no network at view time) beside a
folder's report.md, made from the same files: the claims table, every head's rank and nuclear-norm
curve (a menu, or a click on the layer × head map), probe and prune results with their intervals.

    render("runs/demo")   # a whole run, or one stage's folder (analyze, stratify, probe, prune)
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .. import runio
from . import heads_view
from .common import plural

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}.holds{color:#176117;font-weight:bold}.fails,.artefact{color:#a31515;font-weight:bold}
.inconclusive{color:#8a6d00;font-weight:bold}.note{color:#555;font-size:13px}nav a{margin-right:1em}
"""


def _first(folder: Path, name: str, sub: str) -> Path | None:
    for p in (folder / name, folder / sub / name):
        if p.is_file():
            return p
    return None


def _esc(x) -> str:
    return html.escape(str(x))


def _claims_section(path: Path) -> str:
    from .claims import MARK, _ours

    c = runio.read_json(path)
    rows, extra = [r for r in c["rows"] if not r.get("informational")], [r for r in c["rows"] if r.get("informational")]
    out = ["<h2 id='claims'>Claims of arXiv 2602.02195, measured</h2>",
           "<p class='note'>Every number is read from <code>claims.json</code>; its <code>source</code> names the file "
           "and statistic behind each row. Intervals are 95 %.</p>",
           "<table><tr><th>claim</th><th>paper</th><th>ours (95 % CI; controls)</th><th>verdict</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{_esc(r['claim'])}</td><td>{_esc(r['paper'])}</td><td>{_esc(_ours(r['ours']))}</td>"
                   f"<td><span class='{_esc(r['verdict'])}'>{_esc(MARK[r['verdict']])}</span> — {_esc(r['why'])}</td></tr>")
    out.append("</table>")
    if extra:
        out += ["<p>Also measured (not claims of the paper, so no verdict):</p>",
                "<table><tr><th>measurement</th><th>ours</th><th>what it asks</th></tr>"]
        out += [f"<tr><td>{_esc(r['claim'])}</td><td>{_esc(_ours(r['ours']))}</td><td>{_esc(r['why'])}</td></tr>" for r in extra]
        out.append("</table>")
    if c.get("missing_stages"):
        out.append(f"<p>Stages not run: {_esc(', '.join(c['missing_stages']))}.</p>")
    return "\n".join(out)


def _div(fig, div_id: str, post: str | None = None) -> str:
    """A figure (or a figure dict, already checked where it was built) as a div using the page's plotly."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, post_script=post,
                       config={"displaylogo": False, "responsive": True}, validate=not isinstance(fig, dict))


def _heads_section(d: dict) -> str:
    L, H = d["mean_rank"].shape
    thin = (f" The page shows {d['n_shown']} of those positions, evenly spaced; <code>--ranks-csv</code> (analyze, run) "
            "writes every one to ranks.csv." if d["n_shown"] < d["n_common"] else "")
    cut = (f" Only the {d['n_common']} of {d['n_all']} measured positions that every text reached are plotted."
           if d["n_common"] < d["n_all"] else "")
    cls = (f"classes from <code>{_esc(d['classes_from'].name)}</code>" if d["classes_from"] else "no stratify run here, so no classes")
    return "\n".join([
        "<h2 id='heads'>Every head: state rank and nuclear norm vs token</h2>",
        f"<p class='note'>{L} layers × {H} value heads from <code>{_esc(d['source'].parent.name)}/{_esc(d['source'].name)}</code>, "
        f"mean over {len(d['texts'])} text(s) ({_esc(', '.join(d['texts']))}); {cls}.{cut}{thin} "
        "Pick a head in the menu above the curve, or click its cell in the map or its line in the overview.</p>",
        _div(heads_view.curve_figure(d), "heads-curve"),
        _div(heads_view.heatmap_figure(d), "heads-map"),
        _div(heads_view.overview_figure(d), "heads-overview", post=heads_view.LINK_JS),
    ])


def _kind(cond: str) -> str:
    if cond == "base":
        return "unablated"
    return "random control" if "random" in cond else "tested group"


def _probe_section(path: Path) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pj = runio.read_json(path)
    rows = [r for r in pj["rows"] if "/s" not in r["condition"]] + pj.get("aggregates", [])
    if not rows:
        return "<h2 id='probe'>Probe</h2><p>No probe-task rows (lm-eval results only: see probe/report.md).</p>"
    tasks = [t for t in pj["tasks"] if any(r["task"] == t for r in rows)]
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks)
    colors = {"unablated": "#555555", "tested group": "#d62728", "random control": "#1f77b4"}
    shown = set()
    for i, t in enumerate(tasks, start=1):
        for r in sorted((r for r in rows if r["task"] == t), key=lambda r: ({"base": 0, "low": 1, "high": 2}.get(r["condition"], 3),
                                                                           r["condition"])):
            k = _kind(r["condition"])
            v, lo, hi = r["value"], r.get("ci_low"), r.get("ci_high")
            err = {"type": "data", "symmetric": False, "array": [0 if hi is None else max(0.0, hi - v)],
                   "arrayminus": [0 if lo is None else max(0.0, v - lo)]}
            what = (f"mean over {plural(r['seeds'], 'seed')}" + (", t interval over seeds" if r["seeds"] > 1 else ": no interval")
                    if r.get("seeds") else
                    "Wilson 95 % interval" if r["metric"] == "accuracy" else "95 % interval")
            fig.add_trace(go.Scatter(
                x=[r["condition"]], y=[v], error_y=err, mode="markers", marker={"color": colors[k], "size": 9},
                name=k, legendgroup=k, showlegend=k not in shown,
                hovertemplate=f"{_esc(t)} · {_esc(r['condition'])}<br>{r['metric']} %{{y:.3f}} "
                              f"[{'—' if lo is None else f'{lo:.3f}'}, {'—' if hi is None else f'{hi:.3f}'}]<br>{what}<extra></extra>"),
                row=1, col=i)
            shown.add(k)
        fig.update_yaxes(title_text=pj["metrics"][t], row=1, col=i)
        fig.update_xaxes(title_text="condition (heads ablated)", tickangle=-40, row=1, col=i)
    fig.update_layout(title={"text": "probe: task score per condition; error bars = 95 % intervals (Wilson for one "
                                     "accuracy; t interval over seeds for random controls)"}, height=460)
    out = ["<h2 id='probe'>Probe: ablating head groups</h2>",
           f"<p class='note'>{pj['group_size']} of {pj['total_heads']} value heads ablated per group. "
           "Paired tests and verdicts: <code>probe/report.md</code>.</p>", _div(fig, "probe-fig")]
    single = path.parent / "single_head.csv"
    if single.is_file():
        out.append(_div(_single_head_figure(single), "probe-single"))
    return "\n".join(out)


def _single_head_figure(path: Path):
    """Each head's single-ablation cost vs its mean rank, per task; hover names the head."""
    import csv

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = sorted({r["task"] for r in rows})
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks)
    for i, t in enumerate(tasks, start=1):
        rs = [r for r in rows if r["task"] == t]
        fig.add_trace(go.Scatter(
            x=[float(r["mean_rank"]) for r in rs], y=[float(r["cost"]) for r in rs], mode="markers", showlegend=False,
            text=[f"layer {r['layer']} head {r['head']}" for r in rs], marker={"color": "#1f77b4"},
            hovertemplate="%{text}<br>mean rank %{x:.2f}<br>cost %{y:.3f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="mean threshold rank", row=1, col=i)
        fig.update_yaxes(title_text="cost (accuracy lost, or NLL/token gained)", row=1, col=i)
    fig.update_layout(title={"text": "each head ablated alone: cost vs its mean rank (one point per head; hover names it)"},
                      height=380)
    return fig


def _prune_section(path: Path) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .prune import seed_interval

    r = runio.read_json(path)
    tasks, acc = r["tasks"]["names"], r["accuracy"]
    before, after = r["state_bytes_before"], r["state_bytes_after"]
    ctrl_bytes: dict[str, list[int]] = {}
    for p in sorted((path.parent / "baselines").glob("*.json")):
        s = runio.read_json(p)["summary"]
        ctrl_bytes.setdefault(p.stem.rsplit("_", 1)[0], []).append(
            before["linear_state"] - s["removed_state_bytes_per_sequence"] * before["batch"])
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks)
    shown = set()

    def add(i, name, x, a, lo, hi, color, symbol, what):
        err = {"type": "data", "symmetric": False, "array": [0 if hi is None else max(0.0, hi - a)],
               "arrayminus": [0 if lo is None else max(0.0, a - lo)]}
        fig.add_trace(go.Scatter(x=[x], y=[a], error_y=err, mode="markers", name=name, legendgroup=name,
                                 showlegend=name not in shown, marker={"color": color, "symbol": symbol, "size": 10},
                                 hovertemplate=f"{_esc(name)}<br>{int(x):,} B<br>accuracy %{{y:.3f}}<br>{what}<extra></extra>"),
                      row=1, col=i)
        shown.add(name)

    for i, t in enumerate(tasks, start=1):
        for key, name, x, color in (("before", "original", before["linear_state"], "black"),
                                    ("after", f"{r['method']} (pruned)", after["linear_state"], "#d62728")):
            a = acc[key][t]
            add(i, name, x, a["acc"], a["lo"], a["hi"], color, "circle", f"Wilson 95 % interval, n = {a['n']}")
        for j, (kind, c) in enumerate(acc["controls"].items()):
            s = c["summary"].get(t)
            if s and kind in ctrl_bytes:
                ci = seed_interval(s)
                add(i, f"random, {kind.replace('_', '-')}", float(np.mean(ctrl_bytes[kind])), s["mean"],
                    None if ci is None else ci[0], None if ci is None else ci[1], ["#1f77b4", "#2ca02c", "#9467bd"][j % 3],
                    ["square", "diamond", "triangle-up"][j % 3],
                    f"mean over {plural(s['n_seeds'], 'seed')}, " + ("t interval over seeds" if ci else "no interval"))
        fig.update_xaxes(title_text=f"linear recurrent state, bytes (batch {before['batch']})", tickformat="~s", row=1, col=i)
        fig.update_yaxes(title_text="accuracy", range=[-0.03, 1.03], row=1, col=i)
    fig.update_layout(title={"text": "prune: accuracy vs recurrent-state bytes, each point at its own measured bytes; "
                                     "error bars = 95 % intervals (Wilson; t over seeds for random controls)"}, height=440)
    return "\n".join(["<h2 id='prune'>Prune</h2>",
                      f"<p class='note'>{_esc(r['method'])} removed {len(r['removed'])} of {r['value_heads']} value heads. "
                      "Controls overlapping the pruned point on the bytes axis removed the same state; their markers differ. "
                      "Details: <code>prune/report.md</code>.</p>", _div(fig, "prune-fig")])


def render(folder: str | Path, title: str | None = None) -> Path:
    """Write ``folder/report.html`` from the files in ``folder`` (and its stage subfolders)."""
    from plotly.offline import get_plotlyjs

    folder = Path(folder)
    parts, nav = [], []
    claims = folder / "claims.json"
    if claims.is_file():
        parts.append(_claims_section(claims))
        nav.append(("claims", "claims"))
    d = heads_view.load(folder)
    if d is not None:
        parts.append(_heads_section(d))
        nav.append(("heads", "heads"))
    probe = _first(folder, "probe.json", "probe")
    if probe is not None:
        parts.append(_probe_section(probe))
        nav.append(("probe", "probe"))
    prune = _first(folder, "prune.json", "prune")
    if prune is not None:
        parts.append(_prune_section(prune))
        nav.append(("prune", "prune"))
    cfg = runio.read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    model = (cfg.get("config") or {}).get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict):
        model = model.get("spec")
    title = title or f"staterank — {model or folder.name}"
    page = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{_esc(title)}</title>",
            f"<style>{STYLE}</style>", f"<script type='text/javascript'>{get_plotlyjs()}</script>", "</head><body>",
            f"<h1>{_esc(title)}</h1>",
            "<nav>" + "".join(f"<a href='#{a}'>{_esc(n)}</a>" for a, n in nav) + " <a href='report.md'>report.md</a></nav>",
            *parts, "</body></html>"]
    out = folder / "report.html"
    runio.atomic_write_text(out, "\n".join(page))
    return out
