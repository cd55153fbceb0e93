"""The prune stage end to end on a tiny model: files, numbers that must hold, resume, sweep, CLI."""

import json

import numpy as np
import pytest
import torch

from staterank.adapters import get_adapter
from staterank.cli import main
from staterank.errors import UserError
from staterank.models import Loaded
from staterank.prune.export import reload
from staterank.prune.run import PruneConfig, SweepConfig, run_prune, run_sweep
from staterank.report.prune import pareto_front, render
from staterank.runio import read_json
from staterank.testing import byte_tokenizer, tiny_model


def _loaded(family="qwen3_next", **kw):
    m = tiny_model(family, vocab=262, **kw)
    return Loaded(model=m, tokenizer=byte_tokenizer(), adapter=get_adapter(m), spec=f"tiny-{family}", source="tiny")


def _cfg(**kw):
    base = dict(fraction=0.25, ranking="per_layer", calib_tokens=48, calib_stride=8, tasks=("mqar",), eval_n=3,
                random_seeds=2, state_context=24, state_batch=2, decode_tokens=3, max_new_tokens=3)
    return PruneConfig(**{**base, **kw})


def test_run_prune_per_layer_exports_and_checks(tmp_path):
    loaded = _loaded()
    r = run_prune(loaded, _cfg(), tmp_path / "run")
    for f in ("plan.json", "prune.json", "before.json", "model/config.json", "model/prune_plan.json",
              "calibration/dynamics.npz", "baselines/layer_matched_0.json", "baselines/byte_matched_1.json"):
        assert (tmp_path / "run" / f).exists(), f
    assert r["removed_per_layer"] == [1, 1, 1]  # round(0.25 * 4) from each of 3 layers
    assert r["check"]["passed"] and r["check"]["max_abs_logit_diff_vs_masked"] <= 1e-4
    b, a = r["state_bytes_before"], r["state_bytes_after"]
    assert a["linear_state"] * 4 == b["linear_state"] * 3
    assert r["fraction_saved"]["linear_state"] == pytest.approx(0.25)
    assert b["batch"] == 2 and b["context"] == 24
    assert a["attention_kv"] == b["attention_kv"] > 0
    acc = r["accuracy"]
    for key in ("before", "masked", "after"):
        m = acc[key]["mqar"]  # (Wilson's lower bound at acc = 0 comes out as ~1e-17 in floating point)
        assert 0 <= m["lo"] <= m["acc"] + 1e-12 and m["acc"] <= m["hi"] <= 1 and m["n"] == 3
    assert set(acc["controls"]) == {"count_matched", "layer_matched", "byte_matched"}
    assert acc["controls"]["layer_matched"]["summary"]["mqar"]["n_seeds"] == 2
    # controls match the plan: same heads per layer / same bytes
    plan = read_json(tmp_path / "run" / "plan.json")
    for i in range(2):
        lm = read_json(tmp_path / "run" / "baselines" / f"layer_matched_{i}.json")
        bm = read_json(tmp_path / "run" / "baselines" / f"byte_matched_{i}.json")
        assert lm["summary"]["per_layer"] == plan["summary"]["per_layer"]
        assert bm["summary"]["removed_state_bytes_per_sequence"] == plan["summary"]["removed_state_bytes_per_sequence"]
    cfg = reload(tmp_path / "run" / "model").config
    assert cfg.linear_num_value_heads == 3
    # resume: the finished run is read back, not redone
    assert run_prune(_loaded(), _cfg(), tmp_path / "run") == json.loads((tmp_path / "run" / "prune.json").read_text())
    report = render(tmp_path / "run")
    assert "Wilson" in report.read_text() and (tmp_path / "run" / "prune_accuracy.png").exists()


def test_global_plan_is_not_exported_but_pruned_and_checked_in_memory(tmp_path):
    # 5 heads over 3 layers can never be uniform: stock transformers could not load an export
    kw = dict(ranking="global", fraction=None, count=5, method="random", seed=3)
    r = run_prune(_loaded("kimi_linear"), _cfg(**kw), tmp_path / "a")
    assert r["export"] is None and "stock transformers loads only equal counts" in r["not_exported"]
    assert not (tmp_path / "a" / "model").exists()
    assert r["check"]["passed"] and r["check"]["reloaded_with"] == "in-memory surgery"
    assert len(r["removed"]) == 5 and r["fraction_saved"]["linear_state"] == pytest.approx(5 / 12)
    assert "Not exported: the plan keeps" in render(tmp_path / "a").read_text()
    b = run_prune(_loaded("kimi_linear"), _cfg(**kw, export=False), tmp_path / "b")
    assert b["not_exported"] is None and b["removed"] == r["removed"]  # asked not to: nothing to explain


def test_sweep_and_pareto(tmp_path):
    sc = SweepConfig(base=_cfg(random_seeds=1), alphas=(0.0, 1.0), fractions=(0.25, 0.5))
    s = run_sweep(_loaded("qwen3_5"), sc, tmp_path / "sw")
    assert len(s["points"]) == 2 * 2 + 2 + 2  # jrnp grid, inverse, random
    lin = s["state_bytes_before"]["linear_state"]
    assert {p["linear_state_bytes"] for p in s["points"]} == {lin * 3 // 4, lin // 2}
    render(tmp_path / "sw")
    assert (tmp_path / "sw" / "pareto.png").exists()
    x, y = np.array([1.0, 2.0, 3.0, 2.0]), np.array([0.5, 0.7, 0.6, 0.4])
    assert pareto_front(x, y).tolist() == [0, 1]


def test_cli_end_to_end(tmp_path, capsys):
    loaded = _loaded("qwen3_next", h_k=2, h_v=8)
    loaded.model.save_pretrained(tmp_path / "src")
    loaded.tokenizer.save_pretrained(tmp_path / "src")
    args = ["prune", "--model", str(tmp_path / "src"), "--fraction", "0.25", "--ranking", "per_layer",
            "--calib-tokens", "48", "--eval", "mqar", "--eval-n", "2", "--random-seeds", "1",
            "--state-context", "16", "--decode-tokens", "2", "--quiet", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "25.0% saved" in capsys.readouterr().out
    from staterank.tasks import TASKS, items_digest

    items = {"mqar": TASKS["mqar"].generate(2, PruneConfig().eval_seed, **TASKS["mqar"].default_params)}
    assert read_json(tmp_path / "run" / "config.json")["config"]["items"] == items_digest(items)  # resume key
    assert reload(tmp_path / "run" / "model").config.linear_num_value_heads == 6
    # a plan for another model: one line, exit 2
    other = _loaded("qwen3_next", h_k=2, h_v=4)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    assert main(["prune", "--model", str(tmp_path / "other"), "--plan", str(tmp_path / "run" / "plan.json"),
                 "--quiet", "--out", str(tmp_path / "run2")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and err[0].startswith("staterank: error:") and "another model" in err[0]
    for bad in (["--alpha", "1.5"], ["--fraction", "1.0"], ["--method", "jrpn"], ["--count", "999"]):
        try:
            rc = main(["prune", "--model", str(tmp_path / "src"), *bad, "--quiet", "--out", str(tmp_path / "x")])
        except SystemExit as e:  # out-of-range numbers are refused while parsing (issue #22)
            rc = e.code
        assert rc == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
        assert len(err) == 1 and err[0].startswith(("staterank: error:", "staterank prune: error:"))


def test_check_catches_wrong_surgery(tmp_path, monkeypatch):
    """The built-in check is live: surgery that removes other heads than the plan fails it."""
    import staterank.prune.run as run_mod
    from staterank.prune.run import CheckFailed

    real = run_mod.prune_heads
    monkeypatch.setattr(run_mod, "prune_heads",
                        lambda model, removed: real(model, {li: [(h + 1) % 4 for h in hs] for li, hs in removed.items()}))
    with pytest.raises(CheckFailed):
        run_prune(_loaded(), _cfg(export=False, random_seeds=0), tmp_path / "run")
    r = read_json(tmp_path / "run" / "prune.json")
    assert not r["check"]["passed"] and r["check"]["max_abs_logit_diff_vs_masked"] > 1e-4
    with pytest.raises(CheckFailed):  # a resumed failed run stays failed
        run_prune(_loaded(), _cfg(export=False, random_seeds=0), tmp_path / "run")


def test_budget_the_model_cannot_meet_fails_before_a_run_folder_exists(tmp_path):
    with pytest.raises(UserError, match="cannot free"):
        run_prune(_loaded(), _cfg(fraction=None, bytes=10**9), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_states_budget_and_params_in_words():
    from staterank.report.prune import _budget, _params

    assert _budget({"kind": "fraction", "value": 7 / 18}) == "a fraction 0.389 of all value heads"
    assert _budget({"kind": "bytes", "value": 12288}) == "at least 12,288 B of recurrent state"
    assert _budget({"kind": "layer_counts", "value": [1, 2]}) == "heads per layer [1, 2]"
    assert _params({"alpha": 0.5}) == " (α = 0.5)" and _params({}) == ""


def test_run_prune_on_olmo_hybrid(tmp_path):
    r = run_prune(_loaded("olmo_hybrid"), _cfg(), tmp_path / "run")
    assert r["removed_per_layer"] == [1, 1, 1]
    assert r["check"]["passed"] and r["check"]["reloaded_with"].startswith("AutoModelForCausalLM")
    assert r["fraction_saved"]["linear_state"] == pytest.approx(0.25)


def test_cli_failed_check_renders_the_report_then_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
    from staterank import models
    from staterank.prune import run as prune_run
    from staterank.report import prune as report

    def fail(*a, **k):
        raise prune_run.CheckFailed("pruned model differs from the masked model by 0.5 > 0.0001")

    rendered = []
    monkeypatch.setattr(models, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(prune_run, "run_prune", fail)
    monkeypatch.setattr(report, "render", rendered.append)
    assert main(["prune", "--out", str(tmp_path / "r"), "--quiet"]) == 3
    assert rendered == [str(tmp_path / "r")]
    assert capsys.readouterr().err.strip().splitlines() == [
        "staterank: check failed: pruned model differs from the masked model by 0.5 > 0.0001"]


# ---- mutation-audit additions --------------------------------------------------------------------

def _plan(removed, layouts=((2, 4, 8, 16), (2, 4, 8, 16), (1, 2, 4, 6))):
    from staterank.prune.plan import Plan

    return Plan(model_id="m", fingerprint="f", method="jrnp", params={}, ranking="global",
                budget={"kind": "count", "value": len(removed)}, scores=[[0.0] * 4] * 3, removed=list(removed),
                facts={"linear_layers": [0, 1, 3], "layouts": [list(lo) for lo in layouts]})


def test_plan_summary_numbers_by_hand():
    p = _plan([(0, 3), (3, 1), (0, 0)])
    p.validate()
    # K·V·4 bytes per head: layer 0 8·16·4 = 512 (twice), layer 3 4·6·4 = 96
    assert p.removed_state_bytes() == 2 * 512 + 96
    assert p.removed_state_bytes(dtype_bytes=2) == 2 * 256 + 48
    assert p.fraction == pytest.approx(3 / 10)  # of all 4 + 4 + 2 value heads
    assert p.counts() == [2, 0, 1] and p.kept_h_v() == [2, 4, 1]
    assert p.by_layer() == {0: [0, 3], 1: [], 3: [1]}
    s = p.to_dict()["summary"]
    assert s == {"removed": 3, "value_heads": 10, "fraction": pytest.approx(0.3), "per_layer": [2, 0, 1],
                 "removed_state_bytes_per_sequence": 1120}


@pytest.mark.parametrize("removed, match", [
    ([(0, 4)], "head 4 of layer 0"),            # layer 0 has heads 0..3
    ([(3, 2)], "head 2 of layer 3"),
    ([(0, -1)], "head -1"),
    ([(2, 0)], "layer 2"),                       # not a linear layer
    ([(0, 1), (1, 2), (0, 1)], "twice"),
    ([(3, 0), (3, 1)], "every value head of layer 3"),
    ([(0, 0), (0, 1), (0, 2), (0, 3)], "every value head of layer 0"),
])
def test_plan_validate_refuses_impossible_plans(removed, match):
    from dataclasses import asdict

    from staterank.prune.plan import FORMAT, Plan

    with pytest.raises(UserError, match=match):
        _plan(removed).validate()
    d = {"format": FORMAT, **asdict(_plan(removed))}  # (to_dict's summary needs a valid plan)
    with pytest.raises(UserError, match=match):  # a hand-edited plan.json is refused on load too
        Plan.from_dict(d)


def test_plan_check_model_sees_every_layout_fact():
    from staterank.prune.plan import fingerprint, make_plan

    base = tiny_model("qwen3_next", h_v=4, k=8, v=12)
    plan = make_plan(base, [(0, 1)], model_id="base", method="jrnp", params={}, ranking="global",
                     budget={"kind": "count", "value": 1})
    plan.check_model(tiny_model("qwen3_next", h_v=4, k=8, v=12, seed=1))  # other weights, same architecture
    for kw in (dict(h_v=4, k=8, v=16), dict(h_v=4, k=16, v=12), dict(h_v=8, k=8, v=12)):
        other = tiny_model("qwen3_next", **kw)
        assert fingerprint(other) != plan.fingerprint, kw
        with pytest.raises(UserError, match="another model"):
            plan.check_model(other)


def test_check_tolerance_is_relative_to_the_logit_scale(tmp_path, monkeypatch):
    """fp32: the check allows max(check_tol, 3e-5 · max |logit|); a pruned model off by ~1e-3 of the
    logit scale fails it (a surgery bug can be small), one that is exact passes."""
    import staterank.prune.run as run_mod
    from staterank.prune.run import CheckFailed
    from staterank.runio import read_npz

    real = run_mod.prune_heads

    def off_by_a_little(model, removed):
        out = real(model, removed)
        with torch.no_grad():
            model.lm_head.weight.mul_(1 + 1e-3)
        return out

    monkeypatch.setattr(run_mod, "prune_heads", off_by_a_little)
    cfg = _cfg(export=False, random_seeds=0, check_tol=1e-9)
    with pytest.raises(CheckFailed):
        run_prune(_loaded(), cfg, tmp_path / "run")
    r = read_json(tmp_path / "run" / "prune.json")
    scale = float(np.abs(read_npz(tmp_path / "run" / "masked_logits.npz")["logits"]).max())
    assert r["check"]["tolerance"] == pytest.approx(3e-5 * scale)
    assert r["check"]["max_abs_logit_diff_vs_masked"] > r["check"]["tolerance"]
    assert not r["check"]["passed"]


def test_cli_sweep_grid_and_defaults(tmp_path, monkeypatch):
    loaded = _loaded("qwen3_next", h_k=2, h_v=8)
    loaded.model.save_pretrained(tmp_path / "src")
    loaded.tokenizer.save_pretrained(tmp_path / "src")
    common = ["prune", "--model", str(tmp_path / "src"), "--sweep", "--calib-tokens", "48", "--eval", "mqar",
              "--eval-n", "2", "--random-seeds", "0", "--state-context", "16", "--quiet"]
    assert main(common + ["--alphas", "0,1", "--fractions", "0.25", "--alpha", "0.3", "--out", str(tmp_path / "sw")]) == 0
    points = read_json(tmp_path / "sw" / "sweep.json")["points"]
    assert sorted((p["method"], p["alpha"]) for p in points) == [("inverse", 0.3), ("jrnp", 0.0), ("jrnp", 1.0)]
    assert {p["fraction"] for p in points} == {0.25}
    # no grid given: SweepConfig's own grid and PruneConfig's alpha, never None
    import staterank.prune.run as run_mod
    import staterank.report.prune as report_mod

    seen = []
    monkeypatch.setattr(run_mod, "run_sweep", lambda loaded, sc, out: seen.append(sc) or {"points": []})
    monkeypatch.setattr(report_mod, "render", lambda out: str(out))
    assert main(common + ["--out", str(tmp_path / "sw2")]) == 0
    assert seen[0].alphas == SweepConfig().alphas and seen[0].fractions == SweepConfig().fractions
    assert seen[0].base.alpha == PruneConfig().alpha and seen[0].base.method == PruneConfig().method


def test_a_bf16_checkpoint_pruned_on_cpu_exports_in_bf16_with_a_card(tmp_path, capsys):
    """Issue #21: the export keeps the checkpoint's dtype (the CPU computes in fp32), reloads equal to
    the masked model within the half-precision tolerance, carries a model card, and a tokenizer
    config a serving stack can use; --export-dtype overrides the dtype."""
    from safetensors import safe_open

    loaded = _loaded("qwen3_next", h_k=2, h_v=8)
    loaded.model.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    loaded.tokenizer.save_pretrained(tmp_path / "src")
    args = ["prune", "--model", str(tmp_path / "src"), "--fraction", "0.25", "--ranking", "per_layer",
            "--calib-tokens", "48", "--eval", "mqar", "--eval-n", "2", "--random-seeds", "1",
            "--state-context", "16", "--decode-tokens", "2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    model_dir = tmp_path / "run" / "model"
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    r = read_json(tmp_path / "run" / "prune.json")
    assert r["export"]["dtype"] == "bfloat16" and r["state_measured_at"]["dtype"] == "torch.float32"
    scale = float(np.abs(np.load(tmp_path / "run" / "masked_logits.npz")["logits"]).max())
    # bf16 weights computed in fp32 and written back in bf16: exact, so the fp32 tolerance applies
    assert r["check"]["max_abs_logit_diff_vs_masked"] == 0 and r["check"]["tolerance"] == pytest.approx(max(1e-4, 3e-5 * scale))
    card = (model_dir / "README.md").read_text()
    assert "value heads removed" in card and "AutoModelForCausalLM.from_pretrained" in card
    assert f"| mqar | {r['accuracy']['before']['mqar']['acc']:.3f} |" in card
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_cfg and tok_cfg["padding_side"] == "left"
    assert main(args + ["--export-dtype", "float32", "--out", str(tmp_path / "run32")]) == 0
    with safe_open(str(tmp_path / "run32" / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert main(args + ["--export-dtype", "float16", "--out", str(tmp_path / "run16")]) == 0  # rounds: half tolerance
    r16 = read_json(tmp_path / "run16" / "prune.json")
    assert r16["check"]["passed"] and r16["check"]["tolerance"] == pytest.approx(max(1e-4, 1e-2 * scale))


def test_key_groups_exports_a_regular_layout_and_every_state_shrinks(tmp_path):
    """Issue #21: per_layer can split GVA groups, so the export duplicates key heads and the conv
    state grows; key_groups removes whole groups: fewer key heads, none duplicated, every cache smaller."""
    r = run_prune(_loaded("qwen3_next", h_k=4, h_v=8), _cfg(ranking="key_groups", random_seeds=1), tmp_path / "run")
    assert r["removed_per_layer"] == [2, 2, 2] and r["check"]["passed"]
    e = r["export"]
    assert (e["h_k"], e["h_v"], e["group"]) == (3, 6, 2) and e["key_heads_duplicated"] == 0
    assert e["key_heads_after"] < e["key_heads_before"]
    b, a = r["state_bytes_before"], r["state_bytes_after"]
    assert a["linear_state"] < b["linear_state"] and a["conv_state"] < b["conv_state"]
    plan = read_json(tmp_path / "run" / "plan.json")
    for li, j in plan["removed"]:  # every removed head's group partner is removed too
        assert [li, j ^ 1] in plan["removed"]
    lay = r["layout"]
    assert lay["engine_compatible"] and lay["key_heads"] == [12, 9] and lay["key_heads_duplicated"] == 0
    # the group-matched control removes random whole groups, as many per layer: the plan's layout exactly
    assert "group_matched" in r["accuracy"]["controls"]
    ctrl = read_json(tmp_path / "run" / "baselines" / "group_matched_0.json")
    assert ctrl["summary"]["per_layer"] == plan["summary"]["per_layer"] and ctrl["ranking"] == "key_groups"
    for li, j in ctrl["removed"]:
        assert [li, j ^ 1] in ctrl["removed"]
