"""Does a retrained model reproduce the shipped one? Accuracies side by side with Wilson 95 % CIs.

    python -m staterank.builtin.compare runs/builtin-model/stage2/final [--against staterank/builtin/model]
        [--out reproduction.json]

Reads both folders' ``eval_results.json`` (written by ``train --evaluate`` / ``builtin.evaluate``).
Two runs reproduce when no accuracy differs significantly: Fisher's exact test (two-sided) on each
row's correct/incorrect counts, p >= 0.05 for every row. Whether the new accuracy lies inside the
reference's confidence interval is printed too; it is a stricter check than it looks, since both
numbers carry sampling noise (two runs with the same true accuracy miss it ~17 % of the time per
row). Bits per character has no CI: both values and their difference are shown. The last line is
the verdict. ``--out`` writes the same as JSON; a ``reproduction.json`` in a model folder becomes
the "Reproduction" section of its card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import fisher_exact

from staterank.builtin import BUILTIN_DIR
from staterank.builtin.evaluate import fmt_acc
from staterank.runio import write_json

ALPHA = 0.05


def _cells(res: dict) -> dict[str, dict]:
    cells = {f"task {k}": v for k, v in res.get("tasks", {}).items()}
    cells.update({f"NIAH {k} tokens (grid)": v for k, v in res.get("niah_by_length", {}).items()})
    if "arith_training_split" in res:
        cells["addition, training split (diagnostic)"] = res["arith_training_split"]
    return cells


def compare(new: dict, ref: dict) -> tuple[list[dict], bool]:
    """Rows for every accuracy both results have; ``ok`` when no row differs at p < ``ALPHA`` (Fisher)."""
    a, b = _cells(new), _cells(ref)
    rows = []
    for name in [k for k in b if k in a]:
        n, r = a[name], b[name]
        kn, kr = round(n["acc"] * n["n"]), round(r["acc"] * r["n"])
        p = float(fisher_exact([[kn, n["n"] - kn], [kr, r["n"] - kr]])[1])
        rows.append({"name": name, "new": n, "ref": r, "p_fisher": p, "differs": p < ALPHA,
                     "new_in_ref_ci": r["lo"] <= n["acc"] <= r["hi"],
                     "ref_in_new_ci": n["lo"] <= r["acc"] <= n["hi"]})
    return rows, bool(rows) and not any(x["differs"] for x in rows)


def _training_summary(folder: Path) -> dict:
    """Steps, tokens and minutes of every stage of the run in ``folder`` (training_state.json)."""
    f = folder / "training_state.json"
    if not f.is_file():
        return {}
    st, stages = json.loads(f.read_text()), []
    while st:
        stages.insert(0, {k: st.get(k) for k in ("step", "steps_planned", "tokens")}
                          | {"minutes": round(st.get("train_seconds", 0) / 60, 1)})
        st = st.get("previous")
    return {"stages": stages}


def _load(folder: Path) -> dict:
    f = folder / "eval_results.json"
    if not f.is_file():
        raise SystemExit(f"error: {f} not found (evaluate the model first: python -m staterank.builtin.evaluate "
                         f"--model {folder} --n 64)")
    return json.loads(f.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="example: python -m staterank.builtin.compare runs/b/stage2/final")
    p.add_argument("model", type=Path, help="folder of the retrained model (holds eval_results.json)")
    p.add_argument("--against", type=Path, default=BUILTIN_DIR, help="reference folder (default: the shipped model)")
    p.add_argument("--out", type=Path, help="also write the comparison as JSON (e.g. REFERENCE/reproduction.json)")
    a = p.parse_args(argv)
    new, ref = _load(a.model), _load(a.against)
    if new.get("args", {}).get("n") != ref.get("args", {}).get("n"):
        print(f"note: evaluated with different --n ({new.get('args', {}).get('n')} vs {ref.get('args', {}).get('n')})")
    rows, ok = compare(new, ref)
    f = lambda c: f"{fmt_acc(c)} n={c['n']}"  # noqa: E731
    print(f"{'':38s} {'new':28s} {'reference':28s} Fisher p   new in ref CI / ref in new CI")
    for x in rows:
        print(f"{x['name']:38s} {f(x['new']):28s} {f(x['ref']):28s} {x['p_fisher']:<10.3g} "
              f"{'yes' if x['new_in_ref_ci'] else 'no'} / {'yes' if x['ref_in_new_ci'] else 'no'}")
    if "bits_per_char" in new and "bits_per_char" in ref:
        print(f"{'bits per character (held-out prose)':38s} {new['bits_per_char']:<28.3f} {ref['bits_per_char']:<28.3f} "
              f"difference {new['bits_per_char'] - ref['bits_per_char']:+.3f}")
    if a.out:
        write_json(a.out, {
            "new": str(a.model), "reference": str(a.against), "reproduces": ok, "rows": rows,
            "bits_per_char": {"new": new.get("bits_per_char"), "reference": ref.get("bits_per_char")},
            "new_training": _training_summary(a.model)})
    differs = [x["name"] for x in rows if x["differs"]]
    inside = sum(x["new_in_ref_ci"] for x in rows)
    print(f"reproduces: no accuracy differs significantly (Fisher exact, p >= {ALPHA}); {inside} of {len(rows)} "
          f"inside the reference's 95 % CI" if ok else
          "does NOT reproduce: " + (", ".join(differs) + f" differ significantly (Fisher exact, p < {ALPHA})"
                                    if differs else "no accuracy in common"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
