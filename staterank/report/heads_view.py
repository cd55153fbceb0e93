"""The interactive per-head views of report.html, from a run folder's dynamics.npz (and stratify.json
for the classes): rank and nuclear norm vs token for one head picked from a menu or by a click on the
layer × head map, and every head of every layer at once (hover names the head and its class).

Also the per-token ranks as CSV (``ranks_csv``): one row per text, layer, head and measured position.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from .. import runio

MAX_POINTS = 512  # per curve in the page; the CSV and dynamics.npz keep every measured position
CLASS_COLORS = {"low": "#1f77b4", "high": "#ff7f0e", "none": "#7f7f7f", "not stratified": "#2ca02c"}


def find_dynamics(folder: Path) -> tuple[Path | None, Path | None]:
    """(dynamics.npz, stratify.json or None) of an analyze, stratify or whole-run folder."""
    for dyn, strat in ((folder / "dynamics.npz", None), (folder / "analyze" / "dynamics.npz", folder / "stratify.json"),
                       (folder / "stratify" / "analyze" / "dynamics.npz", folder / "stratify" / "stratify.json")):
        if dyn.is_file():
            return dyn, (strat if strat is not None and strat.is_file() else None)
    return None, None


def load(folder: Path) -> dict | None:
    """Everything the views need, or None when the folder has no dynamics.

    Returns rank, nuclear [L, H, P'] (mean over texts at the positions every text reached),
    positions [P'], bound [L, P'], layers [L], labels [L][H] (class names), mean_rank [L, H],
    texts, and how many positions were dropped or thinned."""
    path, strat = find_dynamics(folder)
    if path is None:
        return None
    z = runio.read_npz(path)
    r, nuc = z["threshold_rank"], z["nuclear_norm"]  # [N, L, H, P]
    every = np.isfinite(r).all(axis=(0, 1, 2))  # a mean over texts ending at different t would step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_rank = np.nanmean(r, axis=(0, 3))  # [L, H] the same mean as heads.csv
        rank, nucm = np.nanmean(r, axis=0)[..., every], np.nanmean(nuc, axis=0)[..., every]
    pos = z["positions"][every]
    L, H, P = rank.shape
    bound = np.broadcast_to(z["bound"], (L, len(z["positions"])))[:, every]
    keep = np.unique(np.linspace(0, P - 1, min(P, MAX_POINTS)).round().astype(int)) if P else np.arange(0)
    labels = [["not stratified"] * H for _ in range(L)]
    if strat is not None:
        lab = runio.read_json(strat)["classes"]["labels"]
        labels = [list(lab.get(str(int(l)), labels[i])) for i, l in enumerate(z["layers"])]
    return {"rank": rank[..., keep], "nuclear": nucm[..., keep], "positions": pos[keep], "bound": bound[:, keep],
            "layers": [int(x) for x in z["layers"]], "labels": labels, "mean_rank": mean_rank,
            "texts": [str(t) for t in z["texts"]], "n_all": int(every.size), "n_common": int(P), "n_shown": int(len(keep)),
            "source": path, "classes_from": strat}


def _name(d: dict, li: int, h: int) -> str:
    return f"layer {d['layers'][li]} head {h} ({d['labels'][li][h]})"


def _r(x: np.ndarray) -> list:
    """Floats as JSON wants them (NaN → null), to 5 significant digits: the page, not the record."""
    return [None if not np.isfinite(v) else float(f"{v:.5g}") for v in np.asarray(x, float).ravel()]


def curve_figure(d: dict):
    """One head's threshold rank (with its bound) and nuclear norm vs token; a menu lists every head."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L, H = d["mean_rank"].shape
    x = [int(p) for p in d["positions"]]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("threshold rank (#σᵢ > ε·σ₁)", "nuclear norm (Σσᵢ)"))

    def args(li, h):
        n = _name(d, li, h)
        return [{"y": [_r(d["rank"][li, h]), _r(d["bound"][li]), _r(d["nuclear"][li, h])],
                 "name": [f"{n}: rank", f"bound min(t, K, V), layer {d['layers'][li]}", f"{n}: nuclear norm"],
                 "hovertemplate": [f"{n}<br>t = %{{x}}<br>rank %{{y}}<extra></extra>", "bound %{y}<extra></extra>",
                                   f"{n}<br>t = %{{x}}<br>nuclear norm %{{y}}<extra></extra>"]},
                {"title.text": f"{n}: state rank and nuclear norm vs token"}]

    first = args(0, 0)[0]
    fig.add_trace(go.Scatter(x=x, y=first["y"][0], name=first["name"][0], hovertemplate=first["hovertemplate"][0],
                             line={"color": "#d62728"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=first["y"][1], name=first["name"][1], hovertemplate=first["hovertemplate"][1],
                             line={"color": "black", "dash": "dash", "width": 1}), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=first["y"][2], name=first["name"][2], hovertemplate=first["hovertemplate"][2],
                             line={"color": "#9467bd"}), row=2, col=1)
    fig.update_layout(title={"text": args(0, 0)[1]["title.text"]}, height=560, legend={"orientation": "h", "y": -0.15},
                      margin={"t": 110})
    fig.update_xaxes(title_text="token t", row=2, col=1)
    fig.update_yaxes(title_text="threshold rank", row=1, col=1)
    fig.update_yaxes(title_text="nuclear norm", row=2, col=1)
    # the menu goes into the figure's dict unvalidated: plotly's per-property checks of one entry per head
    # took 19 s for Qwen3-Next's 1,152 heads (the traces and layout above are validated)
    out = fig.to_dict()
    buttons = [{"label": _name(d, li, h), "method": "update", "args": args(li, h)} for li in range(L) for h in range(H)]
    out["layout"]["updatemenus"] = [{"buttons": buttons, "active": 0, "x": 1, "xanchor": "right", "y": 1.2,
                                     "yanchor": "top", "showactive": True, "name": "head", "type": "dropdown"}]
    return out


def heatmap_figure(d: dict):
    """Layer × head mean threshold rank; every head labelled; a click shows that head's curve."""
    import plotly.graph_objects as go

    L, H = d["mean_rank"].shape
    idx = np.arange(L * H).reshape(L, H)
    text = [[_name(d, li, h) for h in range(H)] for li in range(L)]
    fig = go.Figure(go.Heatmap(
        z=[_r(row) for row in d["mean_rank"]], x=list(range(H)), y=[str(l) for l in d["layers"]],
        customdata=idx.tolist(), text=text, colorscale="Viridis", zmin=0,
        colorbar={"title": {"text": "mean<br>threshold<br>rank"}},
        hovertemplate="%{text}<br>mean threshold rank %{z}<br>(click: its curve)<extra></extra>"))
    fig.update_layout(title={"text": "mean threshold rank per head (mean over texts and measured positions); click a cell"},
                      height=max(260, 40 * L + 160))
    fig.update_xaxes(title_text="value head", tickmode="array", tickvals=list(range(H)), ticktext=[str(h) for h in range(H)])
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    return fig


def overview_figure(d: dict):
    """Every head's rank vs token, one panel per layer, coloured by class (legend), hover names each."""
    from plotly.subplots import make_subplots

    L, H = d["mean_rank"].shape
    cols = min(L, 4)
    rows = -(-L // cols)
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, subplot_titles=[f"layer {l}" for l in d["layers"]])
    x = [int(p) for p in d["positions"]]
    shown = set()
    data = []  # trace dicts, unvalidated (as the curve menu): one per head, 1,152 for Qwen3-Next
    for li in range(L):
        r, c = li // cols + 1, li % cols + 1
        sp = fig.get_subplot(r, c)
        ref = {"xaxis": sp.xaxis.plotly_name.replace("axis", ""), "yaxis": sp.yaxis.plotly_name.replace("axis", "")}
        for h in range(H):
            k = d["labels"][li][h]
            data.append({"type": "scatter", **ref, "x": x, "y": _r(d["rank"][li, h]), "mode": "lines",
                         "line": {"color": CLASS_COLORS.get(k, "black"), "width": 1}, "name": f"class: {k}",
                         "legendgroup": k, "showlegend": k not in shown, "meta": li * H + h,
                         "hovertemplate": f"{_name(d, li, h)}<br>t = %{{x}}<br>rank %{{y}}<extra></extra>"})
            shown.add(k)
        data.append({"type": "scatter", **ref, "x": x, "y": _r(d["bound"][li]), "mode": "lines",
                     "line": {"color": "black", "dash": "dash", "width": 1}, "name": "bound min(t, K, V)",
                     "legendgroup": "bound", "showlegend": li == 0, "hovertemplate": "bound %{y}<extra></extra>"})
        fig.update_xaxes(title_text="token t", row=r, col=c)
        fig.update_yaxes(title_text="threshold rank", row=r, col=c)
    fig.update_layout(title={"text": "threshold rank vs token of every value head (mean over texts); colour = class; click a line"},
                      height=320 * rows + 80)
    out = fig.to_dict()
    out["data"] = data
    return out


# The one piece of glue plotly has no declarative form for: a click on the map (or on a line of the
# overview) applies the menu entry of that head to the curve figure, exactly as choosing it would.
LINK_JS = """
(function () {
  var curve = document.getElementById('heads-curve');
  function pick(e) {
    var p = e.points[0];
    var i = (p.customdata !== undefined && p.customdata !== null) ? p.customdata : p.data.meta;
    var b = curve.layout.updatemenus[0].buttons[i];
    Plotly.update(curve, b.args[0], Object.assign({'updatemenus[0].active': i}, b.args[1]));
  }
  ['heads-map', 'heads-overview'].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { el.on('plotly_click', pick); }
  });
})();
"""


def ranks_csv(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write every measured per-token statistic of every head as CSV (default ``folder/ranks.csv``):
    columns text, layer, head, class, position, then one column per statistic in dynamics.npz."""
    from ..errors import UserError
    from ..spectra import stat_names

    folder = Path(folder)
    path, strat = find_dynamics(folder)
    if path is None:
        raise UserError(f"{folder} holds no dynamics.npz (an analyze, stratify or run folder is needed)")
    z = runio.read_npz(path)
    stats = [s for s in stat_names() if s in z]
    arr = np.stack([z[s] for s in stats], axis=-1)  # [N, L, H, P, S]
    N, L, H, P, _ = arr.shape
    labels = runio.read_json(strat)["classes"]["labels"] if strat else {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "layer", "head", "class", "position", *stats])
    for n in range(N):
        for li in range(L):
            layer = int(z["layers"][li])
            for h in range(H):
                k = labels[str(layer)][h] if str(layer) in labels else ""
                for p in np.flatnonzero(np.isfinite(arr[n, li, h, :, 0])):
                    w.writerow([str(z["texts"][n]), layer, h, k, int(z["positions"][p]),
                                *(f"{v:.9g}" for v in arr[n, li, h, p])])
    out = Path(out) if out is not None else folder / "ranks.csv"
    runio.atomic_write_text(out, buf.getvalue())
    return out
