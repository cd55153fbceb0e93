"""Report of an analyze run, from its folder only: figures + report.md.

  rank_dynamics.png   per layer: threshold rank vs token for every head, bound dashed black
                      (the paper's Figure 1 style); with several texts, the mean over the texts
                      measured at each position
  rank_heatmap.png    layer × head mean threshold rank
  rank_hist.png       histogram of the mean threshold rank of all heads
  report.md           what was run and the numbers behind the figures
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import runio
from ..analyze import head_table, load_dynamics
from . import html
from .common import head_colorbar, layer_grid, main_rank_only, pyplot, save


def _layouts(layouts: list[dict]) -> str:
    """[{'h_k': 4, 'h_v': 8, 'k': 32, 'v': 32}] -> 'H_k = 4, H_v = 8, K = 32, V = 32'."""
    one = lambda d: f"H_k = {d['h_k']}, H_v = {d['h_v']}, K = {d['k']}, V = {d['v']}"  # noqa: E731
    return one(layouts[0]) if len(layouts) == 1 else "layouts " + "; ".join(one(d) for d in layouts)


def _schedule(sc: dict) -> str:
    if sc.get("positions"):
        return f"at {len(sc['positions'])} given positions"
    if sc.get("log"):
        return "at t = 1, 2, 4, 8, …"
    return "at every token" if sc.get("stride", 1) == 1 else f"every {sc['stride']}th token"


def _mean_over_texts(x: np.ndarray) -> np.ndarray:
    """[N, ...] -> [...], NaN-aware (positions no text reached stay NaN, quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


@main_rank_only
def render(run_dir: str | Path) -> Path:
    """Write the figures and report.md into ``run_dir``; returns the report path."""
    run_dir = Path(run_dir)
    dyn = load_dynamics(run_dir)
    cfg = runio.read_json(run_dir / "config.json")
    c = cfg["config"]
    plt = pyplot()
    per_text = dyn.stats["threshold_rank"]  # [N, L, H, P]
    # a mean over texts that end at different t would step where one ends: plot only positions
    # every text reached
    every = np.isfinite(per_text).all(axis=(0, 1, 2))
    rank = _mean_over_texts(per_text)  # [L, H, P]
    L, H, P = rank.shape
    rank = np.where(every, rank, np.nan)
    pos = dyn.positions
    n_texts = per_text.shape[0]
    over = "" if n_texts == 1 else (f"; mean over {n_texts} texts" + (
        f", up to t = {int(pos[every].max())} (the shortest)" if not every.all() and every.any() else ""))
    bound = dyn.layer_bound()
    log_x = bool(c["schedule"].get("log"))

    fig, panels = layer_grid(plt, L, "threshold rank")
    colors = plt.cm.viridis(np.linspace(0, 1, H))
    for li, ax in enumerate(panels):
        for h in range(H):
            ax.plot(pos, rank[li, h], color=colors[h], lw=1)
        ax.plot(pos, bound[li], "k--", lw=1.2, label="min(t, K, V)")
        ax.set_title(f"layer {dyn.layers[li]}", fontsize=9)
        if log_x:
            ax.set_xscale("log", base=2)
    panels[0].legend(fontsize=7, loc="lower right")
    head_colorbar(plt, fig, panels, H)
    fig.suptitle(f"state rank (ε = {c['eps']:g}) of every value head; colour = head index (bar){over}", fontsize=10)
    save(plt, fig, run_dir / "rank_dynamics.png", dpi=120)

    table = head_table(dyn)
    mean_rank = np.array([r["mean_threshold_rank"] for r in table]).reshape(L, H)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * H + 2), max(3, 0.35 * L + 1.5)))
    im = ax.imshow(mean_rank, aspect="auto", cmap="viridis", vmin=0, vmax=float(bound.max()))
    ax.set_yticks(range(L), [str(x) for x in dyn.layers])
    ax.set_xticks(range(H), [str(h) for h in range(H)], fontsize=8 if H <= 16 else 5)  # every head, not every other
    ax.set_xlabel("value head")
    ax.set_ylabel("layer")
    ax.set_title("mean threshold rank (over texts and positions)")
    fig.colorbar(im, ax=ax, label="mean threshold rank")
    save(plt, fig, run_dir / "rank_heatmap.png", dpi=120)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(mean_rank.ravel(), bins=min(40, max(10, L * H // 4)), color="0.3")
    ax.set_xlabel("mean threshold rank of a head")
    ax.set_ylabel("heads")
    ax.set_title(f"{L * H} heads, {L} layers")
    save(plt, fig, run_dir / "rank_hist.png", dpi=120)

    m = c["model"]
    order = np.argsort(mean_rank.ravel(), kind="stable")
    flat = [(int(dyn.layers[i // H]), int(i % H), float(mean_rank.ravel()[i])) for i in order]
    fmt = lambda hs: ", ".join(f"L{l}H{h} ({r:.1f})" for l, h, r in hs)  # noqa: E731
    worst_out = max(t.max_output_err for t in dyn.texts)
    worst_state = max(t.max_state_err for t in dyn.texts)
    lines = [
        "# analyze", "",
        f"Model `{m['spec']}` ({m['architecture']}, {m['model_type']}): {L} linear-attention layers "
        f"{list(map(int, dyn.layers))}, {H} value heads each, {_layouts(m['layouts'])}, {m['dtype']} on {m['device']}.",
        f"Threshold rank = #σᵢ > ε·σ₁ with ε = {c['eps']:g}, measured {_schedule(c['schedule'])}; "
        f"max tokens {c['max_tokens'] if c['max_tokens'] is not None else 'all'}.", "",
        "| text | tokens | positions | max output err | max state err |", "|---|---|---|---|---|",
        *[f"| {t.name} | {t.n_tokens} | {t.n_positions} | {t.max_output_err:.2g} | {t.max_state_err:.2g} |"
          for t in dyn.texts],
        "",
        f"Capture verification (replayed recurrence vs the model's own rule outputs / final states): "
        f"worst {worst_out:.2g} / {worst_state:.2g}.", "",
        "| layer | mean rank (heads: min / median / max) | bound at last position |", "|---|---|---|",
        *[f"| {int(dyn.layers[li])} | {mean_rank[li].min():.2f} / {np.median(mean_rank[li]):.2f} / "
          f"{mean_rank[li].max():.2f} | {int(bound[li, -1])} |" for li in range(L)],
        "",
        f"Lowest mean rank: {fmt(flat[:5])}.  ",
        f"Highest mean rank: {fmt(flat[::-1][:5])}.", "",
        "Means are over texts and measured positions; `heads.csv` has every head. "
        "Nothing here says whether a head matters: that needs the probe stage and its controls.", "",
        "![rank dynamics](rank_dynamics.png)", "", "![mean rank](rank_heatmap.png)", "", "![histogram](rank_hist.png)", "",
    ]
    path = run_dir / "report.md"
    runio.atomic_write_text(path, "\n".join(lines))
    html.render(run_dir)
    return path
