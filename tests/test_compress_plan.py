"""Compress planner against brute force and by hand; the stage end to end on a tiny model; CLI input."""

import itertools
import json

import numpy as np
import pytest

from staterank.adapters import get_adapter
from staterank.claims import claims
from staterank.cli import main
from staterank.compress.claim import compress_claims
from staterank.compress.config import CompressConfig
from staterank.compress.planner import full_bytes, knapsack, ladder, method_order, plan_bytes, shuffled
from staterank.compress.quant import head_bytes
from staterank.compress.run import run_compress
from staterank.errors import UserError
from staterank.models import Loaded
from staterank.report.claims import claims_table
from staterank.runio import read_json
from staterank.testing import byte_tokenizer, tiny_model

# two layers (model indices 0 and 3) of three heads, K = V = 8 (fp32 head: 256 B)
HEADS = [(li, h, 8, 8) for li in (0, 3) for h in range(3)]


def test_knapsack_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    opts = ("bf16", "int8_head", "drop")
    for _ in range(3):
        costs = {(li, h): {p: float(rng.random() * (3 if p == "drop" else 1)) for p in opts} for li, h, _, _ in HEADS}
        for share in (0.8, 0.5, 0.3, 0.1):
            budget = int(share * full_bytes(HEADS))
            plan = knapsack(costs, HEADS, budget)
            best = None
            for combo in itertools.product(("fp32", *opts), repeat=len(HEADS)):
                p = {(li, h): c for (li, h, _, _), c in zip(HEADS, combo) if c != "fp32"}
                if plan_bytes(p, HEADS) <= budget:
                    cost = sum(costs[k][c] for k, c in p.items())
                    best = cost if best is None else min(best, cost)
            assert plan_bytes(plan, HEADS) <= budget
            assert sum(costs[k][c] for k, c in plan.items()) == pytest.approx(best)
    # negative (noise) costs count as 0, and among equal costs the fewest bytes win; impossible -> None
    assert knapsack({(0, 0): {"bf16": -1.0, "int8_head": 0.5}}, HEADS, full_bytes(HEADS)) == {(0, 0): "bf16"}
    assert knapsack({}, HEADS, 100) is None


def test_ladder_walks_the_order_and_reports_what_cannot_fit():
    order = [(3, 1), (0, 0), (3, 0), (0, 2), (0, 1), (3, 2)]
    total = full_bytes(HEADS)
    plan = ladder(order, HEADS, ("bf16", "int8_head"), total // 2)
    assert plan == {hd: "bf16" for hd in order}  # every head bf16 is exactly half
    plan = ladder(order, HEADS, ("bf16", "int8_head"), int(0.4 * total))
    assert plan_bytes(plan, HEADS) <= 0.4 * total
    # all bf16 is 768 B of 1536; each int8_head instead saves 128 - 68 = 60 B: 3 heads, the first in order
    assert [hd for hd in order if plan[hd] == "int8_head"] == order[:3]
    # int8 with a per-head scale is (64 + 4) / 256 of fp32: 25 % is out of reach
    assert head_bytes("int8_head", 8, 8) == 68 and ladder(order, HEADS, ("bf16", "int8_head"), total // 4) is None
    pr = ladder(order, HEADS, ("drop",), total // 3)
    assert pr == {hd: "drop" for hd in order[:4]}  # one head left in each layer
    assert ladder(order, HEADS, ("drop",), total // 6) is None  # never the last head of a layer
    assert method_order(np.array([[0.1, 0.9, 0.5], [0.9, 0.2, 0.3]]), [0, 3], [3, 3]) == \
        [(0, 1), (3, 0), (0, 2), (3, 2), (3, 1), (0, 0)]


def test_random_control_has_the_same_precisions_and_keeps_every_layer():
    plan = {(0, 0): "drop", (0, 1): "drop", (3, 0): "drop", (3, 1): "int8_head", (3, 2): "bf16"}
    seen = set()
    for s in range(20):
        r = shuffled(plan, HEADS, s)
        assert sorted(r.values()) == sorted(plan.values()) and plan_bytes(r, HEADS) == plan_bytes(plan, HEADS)
        assert all(any(r.get((li, h)) != "drop" for h in range(3)) for li in (0, 3))
        seen.add(json.dumps(sorted(r.items())))
    assert len(seen) > 5
    for s in range(5):  # layer-matched: every layer keeps its own precisions
        r = shuffled(plan, HEADS, s, within_layer=True)
        for li in (0, 3):
            assert sorted(p for (l, _), p in r.items() if l == li) == sorted(p for (l, _), p in plan.items() if l == li)


def _loaded():
    m = tiny_model("qwen3_next", vocab=262, h_k=2, h_v=4)
    return Loaded(model=m, tokenizer=byte_tokenizer(), adapter=get_adapter(m), spec="tiny-qwen3_next", source="tiny")


def _cfg(**kw):
    base = dict(budgets=(0.5, 0.25), tasks=("mqar",), eval_n=3, sens_n=2, max_new_tokens=3, random_seeds=1,
                controls=("any", "layer"),
                sensitivity=("bf16", "int8_head", "drop"), calib_tokens=48, chunk=16)
    return CompressConfig(**{**base, **kw})


def test_run_compress_end_to_end_and_resume(tmp_path):
    loaded = _loaded()
    res = run_compress(loaded, _cfg(), tmp_path / "r" / "compress")
    heads = 3 * 4
    assert res["state_bytes_fp32"] == heads * 8 * 12 * 4 and res["heads"] == heads
    curves = {p["curve"] for p in res["points"]}
    assert {"base", "all_heads", "pruning", "pruning_random", "precision", "precision_random", "mixed",
            "mixed_random", "mixed_layer_random", "pruning_layer_random"} <= curves
    for p in res["points"]:
        if p["budget"] is not None:
            assert p["bytes_fraction"] <= p["budget"] + 1e-12
        assert p["accuracy"]["all"]["n"] == 3
    assert not any(p["curve"] == "precision" and p["budget"] == 0.25 for p in res["points"])  # int8 + scale > 25 %
    planned = {(p["curve"], p["budget"]): p["precisions"] for p in res["points"] if p["method"] == "planner"}
    assert set(planned[("pruning", 0.25)]) <= {"drop"} and "drop" not in planned[("precision", 0.5)]
    assert ("mixed", 0.25) in planned and ("precision", 0.25) not in planned
    assert set(res["all_heads"]) == {"int8_head", "int8_row"}
    assert res["winners"]["0.5"]["winner"] in ("pruning/jrnp", "precision/jrnp", "pruning/planner", "precision/planner", "mixed")
    for p, rows in res["sensitivity"].items():
        assert len(rows) == heads and all(np.isfinite(r["dnll"]) for r in rows)
        if p == "bf16":
            assert all(0 < r["rel_error"] < 1e-2 for r in rows)
    # every eval file holds the plan its point names
    for p in res["points"]:
        assert (tmp_path / "r" / "compress" / "evals" / f"{p['plan']}.json").exists()
    again = run_compress(loaded, _cfg(), tmp_path / "r" / "compress")  # resume: the finished run is read back
    assert again == read_json(tmp_path / "r" / "compress" / "compress.json")
    with pytest.raises(UserError):
        run_compress(loaded, _cfg(eval_n=4), tmp_path / "r" / "compress")  # another config in the same folder
    # the claims table lists the result apart from the paper's claims (no verdict), with its interval
    rows = [r for r in claims(tmp_path / "r")["rows"] if r["source"] == "compress/compress.json"]
    assert [r["ours"]["budget"] for r in rows] == [0.5, 0.25] and all(r["informational"] for r in rows)
    assert "best storage plan" in claims_table(claims(tmp_path / "r"))
    # on a hand-made result: "at 50 % the winner keeps Y % [CI]"
    fake = {"base": {"all": {"acc": 0.8}}, "winners": {"0.5": {"winner": "mixed", "curves": [
        {"curve": "mixed", "bytes_fraction": 0.45, "accuracy": {"acc": 0.72},
         "retained": {"ratio": 0.9, "lo": 0.8, "hi": 1.0}}]}}}
    (row,) = compress_claims(fake)
    assert row["ours"]["value"] == 0.9 and row["ours"]["ci"] == [0.8, 1.0] and "keeps 90.0% [80.0%, 100.0%]" in row["why"]


def test_cli_end_to_end_and_bad_input(tmp_path, capsys):
    loaded = _loaded()
    loaded.model.save_pretrained(tmp_path / "src")
    loaded.tokenizer.save_pretrained(tmp_path / "src")
    args = ["compress", "--model", str(tmp_path / "src"), "--budgets", "0.5", "--eval", "mqar", "--eval-n", "2",
            "--sens-n", "1", "--sensitivity", "int8_head,drop", "--all-heads", "int8_head", "--random-seeds", "1",
            "--calib-tokens", "48", "--chunk", "16", "--max-new-tokens", "2", "--quiet", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "within 50% of the state bytes best" in out and (tmp_path / "run" / "report.md").exists()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Which method wins" in report and (tmp_path / "run" / "pareto.png").exists()
    for bad in (["--controls", "layers"], ["--budgets", "1.5"], ["--ladder", "int4"], ["--methods", "jrpn"], ["--sensitivity", "fp32"],
                ["--ladder", "bf16,drop"]):
        rc = main(["compress", "--model", str(tmp_path / "src"), *bad, "--quiet", "--out", str(tmp_path / "x")])
        assert rc == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
        assert len(err) == 1 and err[0].startswith("staterank: error:")
        assert not (tmp_path / "x").exists()


def test_winner_on_equal_accuracy_takes_the_smaller_budget():
    """Two points of one curve with the same accuracy: the one using fewer bytes is reported."""
    from staterank.compress.run import _winner

    pts = [{"curve": "precision", "method": "int8_row", "budget": b, "bytes_fraction": f, "plan": f"p{b}",
            "accuracy": {"all": {"acc": 0.7}}, "retained": None} for b, f in ((0.75, 0.74), (0.5, 0.49))]
    (row,) = _winner(pts, 0.75, {})["curves"]
    assert (row["at_budget"], row["bytes_fraction"]) == (0.5, 0.49)
