"""What the report modules share: how numbers print and how figures are drawn and written."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ..stats import fmt_num  # noqa: F401  (the one number formatter; library code such as claims uses it from stats)


def main_rank_only(render):
    """Under torchrun rank 0 alone draws a run's figures and report.md; the other ranks return
    where it goes (``run_dir/report.md``) without writing."""

    @functools.wraps(render)
    def wrapped(run_dir, *args, **kwargs):
        from ..distributed import env_rank

        if env_rank().rank != 0:
            return Path(run_dir) / "report.md"
        return render(run_dir, *args, **kwargs)

    return wrapped


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (figures go to files; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path: Path, dpi: int) -> None:
    """Lay out ``fig`` (unless it has its own layout engine, as figures with a shared colour bar do),
    write it to ``path`` and close it."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def layer_grid(plt, n: int, ylabel: str, xlabel: str = "token t", cols: int = 4):
    """One panel per layer, at most ``cols`` a row, sharing x: returns (fig, the ``n`` panels in
    order). Panels past ``n`` are hidden; the left column is labelled ``ylabel``, the bottom row
    ``xlabel``."""
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharex=True)
    panels = []
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= n:
            ax.axis("off")
            continue
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        if i // cols == rows - 1:
            ax.set_xlabel(xlabel)
        panels.append(ax)
    return fig, panels


def plural(n, word: str) -> str:
    """'1 seed', '5 seeds' (n as given, e.g. None prints as 'None seeds')."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def head_colorbar(plt, fig, panels, n_heads: int):
    """A colour bar naming the head index behind ``viridis`` line colours (``linspace(0, 1, n_heads)``)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    fig.set_layout_engine("constrained")  # tight_layout cannot place a bar shared by several panels
    cmap = ListedColormap(plt.cm.viridis(np.linspace(0, 1, n_heads)))
    norm = BoundaryNorm(np.arange(n_heads + 1) - 0.5, n_heads)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    step = max(1, n_heads // 8)
    return fig.colorbar(sm, ax=panels, ticks=range(0, n_heads, step), label="value head", fraction=0.03, pad=0.02)
