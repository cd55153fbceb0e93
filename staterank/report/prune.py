"""Report of a prune run or sweep, from its folder only: report.md + figures.

  prune_accuracy.png  (prune run) per task: accuracy with Wilson 95 % CI vs linear recurrent-state
                      bytes — original, pruned, and the random controls (mean, t interval over seeds),
                      each at its own bytes
  pareto.png          (sweep) per task: accuracy vs linear recurrent-state bytes for every α ×
                      fraction point, the inverse and random baselines on the same axes, and the
                      Pareto front (no other JRNP point has fewer bytes and higher accuracy)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import runio
from ..errors import UserError
from . import html
from .common import main_rank_only, plural, pyplot, save


def _mean_std(s: dict) -> str:
    """A control's accuracy over its seeds: mean ± std, or just the value for one seed (no spread)."""
    if s["n_seeds"] == 1:
        return f"{s['mean']:.3f} (1 seed: no spread)"
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['n_seeds']} seeds)"



def seed_interval(s: dict) -> tuple[float, float] | None:
    """t 95 % interval of a control's mean accuracy over its seeds, clipped to [0, 1]; None for one seed."""
    from scipy import stats

    n = s.get("n_seeds", 0)
    if n < 2:
        return None
    half = float(stats.t.ppf(0.975, n - 1)) * s["std"] / np.sqrt(n)
    return max(0.0, s["mean"] - half), min(1.0, s["mean"] + half)


def _fmt_acc(a: dict) -> str:
    return f"{a['acc']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] (n={a['n']})"


def _mib(b) -> str:
    return "—" if b is None else f"{b:,} B ({b / 2**20:.3f} MiB)"


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points not dominated (another point with x <= and y >= and one strict), by x."""
    idx = []
    for i in range(len(x)):
        dom = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        if not dom.any():
            idx.append(i)
    return np.array(sorted(idx, key=lambda i: x[i]), dtype=int)


def _state_axes(ax, task: str, batch: int) -> None:
    """A task's panel of accuracy against linear recurrent-state bytes (both figures)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(task)
    ax.set_xlabel(f"linear recurrent state, KiB (batch {batch})")
    lo, hi = ax.get_xlim()  # a few round KiB ticks, called after the points: full byte counts ran together
    kib = [v for v in MaxNLocator(4).tick_values(lo / 1024, hi / 1024) if lo <= v * 1024 <= hi]
    ax.set_xticks([v * 1024 for v in kib], [f"{v:,g}" for v in kib])
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)


def _render_run(run_dir: Path, r: dict) -> list[str]:
    plt = pyplot()
    before, after = r["state_bytes_before"], r["state_bytes_after"]
    tasks = r["tasks"]["names"]
    acc = r["accuracy"]
    # controls' bytes from their plans: measured original minus K·V·4 per removed head per sequence
    batch = before["batch"]
    ctrl_bytes = {}
    for p in sorted((run_dir / "baselines").glob("*.json")):
        kind = p.stem.rsplit("_", 1)[0]
        s = runio.read_json(p)["summary"]
        ctrl_bytes.setdefault(kind, []).append(before["linear_state"] - s["removed_state_bytes_per_sequence"] * batch)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        def pt(x, a, label, ax=ax, **kw):
            # clamp: Wilson's bound at acc 0 or 1 can sit 1e-17 on the wrong side in floating point
            err = [[max(0.0, a["acc"] - a["lo"])], [max(0.0, a["hi"] - a["acc"])]]
            ax.errorbar([x], [a["acc"]], yerr=err, fmt="o", capsize=3,
                        label=label, **kw)

        pt(before["linear_state"], acc["before"][t], "original", color="black")
        pt(after["linear_state"], acc["after"][t], f"{r['method']} (pruned)", color="C3")
        for i, (kind, c) in enumerate(acc["controls"].items()):
            s = c["summary"].get(t)
            if s and kind in ctrl_bytes:
                # at the bytes its heads really hold (no offset): controls that remove as much state as the
                # plan sit on the pruned point's x, told apart by marker, not by a shift that reads as more state
                ci = seed_interval(s)
                err = None if ci is None else [[max(0.0, s["mean"] - ci[0])], [max(0.0, ci[1] - s["mean"])]]
                what = "1 seed: no interval" if ci is None else f"mean, t 95 % interval over {s['n_seeds']} seeds"
                ax.errorbar([float(np.mean(ctrl_bytes[kind]))], [s["mean"]], yerr=err, fmt="sD^v"[i % 4], mfc="none",
                            ms=7 + 2 * i, capsize=3, color=f"C{i}", label=f"random, {kind.replace('_', '-')} ({what})")
        _state_axes(ax, t, batch)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("error bars: Wilson 95 % (original, pruned); controls: see legend", fontsize=8)
    save(plt, fig, run_dir / "prune_accuracy.png", dpi=120)

    ms = r["state_measured_at"]
    lines = [
        f"# Prune: {r['method']}{_params(r['params'])} on {r['model']}", "",
        f"Ranking **{r['ranking']}**, budget {_budget(r['budget'])}: removed {len(r['removed'])} of {r['value_heads']} value "
        f"heads ({r['head_fraction_removed']:.1%}); per layer {r['removed_per_layer']}.", "",
        f"## Recurrent state (measured from the cache: {ms['context']} tokens × batch {ms['batch']}, {ms['dtype']})", "",
        "| part | before | after | saved |", "|---|---|---|---|",
    ]
    for k in ("linear_state", "conv_state", "attention_kv", "total"):
        fs = r["fraction_saved"][k]
        lines.append(f"| {k} | {_mib(before[k])} | {_mib(after[k])} | {'—' if fs is None else f'{fs:.1%}'} |")
    ex = r.get("export")
    if ex:
        lines += ["", f"Exported to `{ex['path']}`: H_k {ex['key_heads_before'] // max(1, len(r['removed_per_layer']))}"
                  f" → {ex['h_k']}, H_v {r['value_heads'] // max(1, len(r['removed_per_layer']))} → {ex['h_v']} per layer "
                  f"(GVA ratio {ex['group']}); "
                  f"{ex['key_heads_duplicated']} key heads duplicated to keep the GVA mapping exact "
                  "(they add conv state, not recurrent state)."]
    if r.get("not_exported"):
        lines += ["", f"Not exported: {r['not_exported']}."]
    c = r["check"]
    lines += ["", f"Check: max |logit(pruned) − logit(masked)| = {c['max_abs_logit_diff_vs_masked']:.3g} "
              f"(tolerance {c['tolerance']:g}; {c['reloaded_with']}) → **{'passed' if c['passed'] else 'FAILED'}**.", "",
              "## Accuracy (Wilson 95 % CI)", "",
              "| task | original | masked | pruned | " + " | ".join(f"random {k.replace('_', '-')} (mean ± std)"
                                                           for k in acc["controls"]) + " |",
              "|---" * (4 + len(acc["controls"])) + "|"]
    for t in tasks:
        ctrl = " | ".join(_mean_std(c["summary"][t]) if t in c["summary"] else "—" for c in acc["controls"].values())
        lines.append(f"| {t} | {_fmt_acc(acc['before'][t])} | {_fmt_acc(acc['masked'][t])} | {_fmt_acc(acc['after'][t])} | {ctrl} |")
    d = r["decode"]
    pa = r.get("parameters", {})
    lines += ["", f"Parameters: {pa.get('before', 0):,} → {pa.get('after', 0):,}.",
              "", f"Decode (greedy, batch {d['before']['batch']}, {d['before']['new_tokens']} tokens after a "
              f"{d['before']['prompt']}-token prompt whose prefill is not timed, median of {len(d['before']['repeats'])}): "
              f"{d['before']['tokens_per_s']:.1f} → {d['after']['tokens_per_s']:.1f} tokens/s "
              "(a short measurement on a possibly shared machine, not a benchmark).", "",
              "Controls are zero-ablated random heads matched to what the plan removed, each kind from its own "
              "random seeds: count-matched (as many heads, drawn over all layers), layer-matched (as many in "
              "each layer), byte-matched (at least as many recurrent-state bytes, over all layers)."
              + "".join(f" Note: {n}." for n in r.get("control_notes") or []), "",
              "![accuracy vs state](prune_accuracy.png)", ""]
    return lines


def _params(p: dict | None) -> str:
    names = {"alpha": "α"}
    return f" ({', '.join(f'{names.get(k, k)} = {v:g}' if isinstance(v, float) else f'{names.get(k, k)} = {v}' for k, v in p.items())})" if p else ""


def _budget(b: dict) -> str:
    """{'kind': 'fraction', 'value': 0.3888…} -> 'a fraction 0.389 of all value heads'."""
    kind, v = b.get("kind"), b.get("value")
    if kind == "fraction":
        return f"a fraction {v:.3f} of all value heads"
    if kind == "count":
        return f"{v} value heads"
    if kind == "bytes":
        return f"at least {int(v):,} B of recurrent state"
    if kind == "layer_counts":
        return f"heads per layer {list(v)}"
    return str(b)


def _render_sweep(run_dir: Path, s: dict) -> list[str]:
    plt = pyplot()
    tasks = s["tasks"]["names"]
    pts = s["points"]
    sb = s["state_bytes_before"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    front_rows = []
    for ax, t in zip(axes[0], tasks):
        jr = [p for p in pts if p["method"] == "jrnp"]
        alphas = sorted({p["alpha"] for p in jr})
        cmap = plt.get_cmap("viridis")
        for i, a in enumerate(alphas):
            ps = sorted([p for p in jr if p["alpha"] == a], key=lambda p: p["linear_state_bytes"])
            ax.plot([p["linear_state_bytes"] for p in ps], [p["accuracy"][t]["acc"] for p in ps], "o-",
                    color=cmap(i / max(1, len(alphas) - 1)), label=f"JRNP α={a:g}", ms=4)
        for m, mk in (("inverse", "v--"), ):
            ps = sorted([p for p in pts if p["method"] == m], key=lambda p: p["linear_state_bytes"])
            if ps:
                ax.plot([p["linear_state_bytes"] for p in ps], [p["accuracy"][t]["acc"] for p in ps], mk,
                        color="C3", label=f"{m} (α={ps[0]['alpha']:g})", ms=4)
        rnd = [p for p in pts if p["method"] == "random"]
        if rnd:
            fr = sorted({p["fraction"] for p in rnd})
            xs = [np.mean([p["linear_state_bytes"] for p in rnd if p["fraction"] == f]) for f in fr]
            ys = [[p["accuracy"][t]["acc"] for p in rnd if p["fraction"] == f] for f in fr]
            ax.errorbar(xs, [np.mean(y) for y in ys], yerr=[np.std(y, ddof=1) if len(y) > 1 else 0 for y in ys],
                        fmt="s:", color="grey", capsize=3, label=f"random (±std, {plural(len(ys[0]), 'seed')})" if len(ys[0]) > 1 else "random (1 seed: no spread)")
        ax.plot([sb["linear_state"]], [s["accuracy_before"][t]["acc"]], "*", color="black", ms=10, label="original")
        if jr:
            x = np.array([p["linear_state_bytes"] for p in jr], float)
            y = np.array([p["accuracy"][t]["acc"] for p in jr])
            f = pareto_front(x, y)
            ax.step(x[f], y[f], where="post", color="black", lw=0.8, alpha=0.6, label="JRNP Pareto front")
            front_rows += [f"| {t} | {jr[i]['alpha']:g} | {jr[i]['fraction']:g} | {_mib(int(x[i]))} | {y[i]:.3f} |"
                           for i in f]
        _state_axes(ax, t, sb["batch"])
    axes[0][0].legend(fontsize=7)
    save(plt, fig, run_dir / "pareto.png", dpi=120)
    return ["# Prune sweep: accuracy vs recurrent state", "",
            f"Model {s['model']}, ranking **{s['ranking']}**, {len(pts)} points, tasks {tasks} "
            f"(n = {s['tasks']['n']} each). {s['note']}.", "",
            "## JRNP Pareto front", "", "| task | α | fraction | linear state | accuracy |", "|---|---|---|---|---|",
            *front_rows, "", "![pareto](pareto.png)", ""]


@main_rank_only
def render(run_dir: str | Path) -> Path:
    """Write figures and report.md for a prune run and/or sweep in ``run_dir``; returns report.md."""
    run_dir = Path(run_dir)
    lines: list[str] = []
    if (run_dir / "prune.json").exists():
        lines += _render_run(run_dir, runio.read_json(run_dir / "prune.json"))
    if (run_dir / "sweep.json").exists():
        lines += _render_sweep(run_dir, runio.read_json(run_dir / "sweep.json"))
    if not lines:
        raise UserError(f"{run_dir} holds no finished prune run or sweep (no prune.json / sweep.json)")
    out = run_dir / "report.md"
    runio.atomic_write_text(out, "\n".join(lines))
    html.render(run_dir)
    return out
