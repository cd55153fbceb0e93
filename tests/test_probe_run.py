"""The probe stage on a tiny model with a stand-in task: rows and statistics, controls, single-head
costs, verdict numbers, and kill-and-resume losing and repeating nothing."""

import csv
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from staterank.adapters import get_adapter
from staterank.errors import UserError
from staterank.probes.run import HeadScores, ItemLog, compare, mcnemar, probe, verdicts, wilson
from staterank.probes.tasks import ProbeTask
from staterank.tasks import Item
from staterank.testing import byte_tokenizer, tiny_model


@dataclass
class NextToken(ProbeTask):
    """Stand-in: is the greedy next token the one the unablated model predicts? (base = 100 %).
    ``_fail_after``: raise after that many items (a simulated kill); ``_calls`` lists items run."""

    model: object = None
    name: str = "next"
    n: int = 10
    _fail_after: int | None = None  # leading underscore: not part of the run config
    _calls: list = field(default_factory=list)

    def __post_init__(self):
        g = torch.Generator().manual_seed(5)
        self._ids = [torch.randint(3, 97, (1, 12), generator=g) for _ in range(self.n)]
        with torch.no_grad():
            self._ans = [int(self.model(x).logits[0, -1].argmax()) for x in self._ids]

    def items(self, tokenizer):
        return [Item(f"x{i}", "", str(a), {"i": i}) for i, a in enumerate(self._ans)]

    def run(self, model, tokenizer, items):
        out = []
        for it in items:
            if self._fail_after is not None and len(self._calls) >= self._fail_after:
                raise KeyboardInterrupt("simulated kill")
            self._calls.append(it.id)
            with torch.no_grad():
                p = int(model(self._ids[it.meta["i"]]).logits[0, -1].argmax())
            out.append({"id": it.id, "pred": str(p), "answer": it.answer, "correct": str(p) == it.answer})
        return out

    def __repr__(self):  # the run config: what defines the items
        return f"NextToken(n={self.n})"


def _setup(family="qwen3_next"):
    model = tiny_model(family, h_v=4)
    layers = get_adapter(model).linear_layers(model)
    # random tiny models barely read their linear-attention heads; amplify them so ablations matter
    with torch.no_grad():
        for l in layers:
            l.module.out_proj.weight.mul_(10)
    rng = np.random.default_rng(0)
    L, H = len(layers), layers[0].layout.h_v
    mr = rng.uniform(1, 8, (L, H))
    hs = HeadScores([l.index for l in layers], mr, mr / 8, rng.uniform(0, 5, (L, H)), "test")
    return SimpleNamespace(model=model, tokenizer=None, spec="tiny"), hs


def _lines(folder):
    return [json.loads(l) for l in (folder / "items.jsonl").read_text().splitlines()]


def test_probe_rows_controls_and_single_head(tmp_path):
    loaded, hs = _setup()
    task = NextToken(loaded.model)
    folder = probe(loaded, groups=["low", "high", "random", "layer_random", "byte_random"], out=tmp_path / "p",
                   count=3, seeds=2, scores=hs, single_head=True, task_objects=[task], batch_size=4)
    pj = json.loads((folder / "probe.json").read_text())
    rows = {r["condition"]: r for r in pj["rows"]}
    assert rows["base"]["accuracy"] == 1.0 and rows["base"]["n"] == 10
    expect = {"base", "low", "high", "random/s0", "random/s1", "layer_random.low/s0", "layer_random.low/s1",
              "layer_random.high/s0", "layer_random.high/s1", "byte_random.low/s0", "byte_random.low/s1",
              "byte_random.high/s0", "byte_random.high/s1"}
    assert set(rows) == expect
    for c, r in rows.items():
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        if c != "base":
            assert r["delta_vs_base"] == pytest.approx(r["accuracy"] - 1.0)
            assert 0 <= r["p_value"] <= 1
            # exact McNemar with base all-correct: p = binomtest(base_only, base_only, .5)
            k = r["base_only"]
            assert r["p_value"] == pytest.approx(min(1.0, 2 * 0.5**k) if k else 1.0)
    ablated_any = [r["accuracy"] for c, r in rows.items() if c != "base"]
    assert min(ablated_any) < 1.0  # removing 3 of 12 heads changes some greedy tokens
    agg = {a["condition"]: a for a in pj["aggregates"]}
    assert agg["random"]["seeds"] == 2
    assert agg["random"]["value"] == pytest.approx(np.mean([rows["random/s0"]["accuracy"], rows["random/s1"]["accuracy"]]))
    # groups on disk: matched as promised
    gj = json.loads((folder / "groups.json").read_text())["conditions"]
    per_layer = lambda c: {k: len(v) for k, v in gj[c]["heads"].items()}
    assert per_layer("layer_random.low/s1") == per_layer("low")
    assert gj["byte_random.high/s0"]["state_bytes"] == gj["high"]["state_bytes"]
    # low = the 3 lowest normalised ranks
    flat = sorted((hs.norm_rank[i, h], hs.layers[i], h) for i in range(3) for h in range(4))
    assert sorted((int(l), h) for l, hs_ in gj["low"]["heads"].items() for h in hs_) == sorted((l, h) for _, l, h in flat[:3])
    # single heads: one row per head, costs consistent with items, Spearman reported
    with open(folder / "single_head.csv") as f:
        sh = list(csv.DictReader(f))
    assert len(sh) == 12
    items = _lines(folder)
    for r in sh:
        mine = [x for x in items if x["condition"] == f"head/L{r['layer']}.H{r['head']}"]
        assert float(r["cost"]) == pytest.approx(1.0 - np.mean([x["correct"] for x in mine]))
        assert float(r["mean_rank"]) == pytest.approx(hs.mean_rank[hs.layers.index(int(r["layer"])), int(r["head"])])
    assert set(pj["single_head"]["next"]) >= {"spearman_rank", "spearman_nuclear", "n_heads"}
    v = pj["verdicts"]["next"]
    assert v["vs_other"]["diff"] == pytest.approx(rows["low"]["accuracy"] - rows["high"]["accuracy"])
    assert v["holds"] in (True, False)
    from staterank.report.probe import render

    md = render(folder).read_text()
    assert "## Table 1" in md and "| low |" in md and "Spearman" in md
    assert (folder / "probe_accuracy.png").exists() and (folder / "single_head.png").exists()


def test_kill_and_resume_loses_and_repeats_nothing(tmp_path):
    loaded, hs = _setup()
    kw = dict(groups=["low", "random"], out=tmp_path / "p", count=2, seeds=2, scores=hs, batch_size=1)
    t1 = NextToken(loaded.model, _fail_after=17)
    with pytest.raises(KeyboardInterrupt):
        probe(loaded, task_objects=[t1], **kw)
    first = _lines(tmp_path / "p")
    assert len(first) == 17 and not (tmp_path / "p" / "probe.json").exists()
    t2 = NextToken(loaded.model)
    probe(loaded, task_objects=[t2], **kw)
    allr = _lines(tmp_path / "p")
    keys = [(r["condition"], r["id"]) for r in allr]
    assert len(keys) == len(set(keys)) == 4 * 10  # base, low, random/s0, random/s1
    assert len(t2._calls) == 40 - 17  # finished items were not redone
    assert allr[:17] == first
    # a third run finds everything done
    t3 = NextToken(loaded.model)
    probe(loaded, task_objects=[t3], **kw)
    assert t3._calls == [] and len(_lines(tmp_path / "p")) == 40


def test_resume_with_other_items_under_the_same_ids_is_refused(tmp_path, monkeypatch):
    """Item ids alone do not identify an item: a folder whose items (or scoring) changed under the
    same ids is refused, not resumed with two kinds of rows paired."""
    import staterank.tasks as T

    loaded, hs = _setup()
    kw = dict(groups=["low"], out=tmp_path / "p", count=2, seeds=1, scores=hs, batch_size=1)
    probe(loaded, task_objects=[NextToken(loaded.model)], **kw)
    changed = NextToken(loaded.model)
    changed._ans = [a + 1 for a in changed._ans]  # same ids x0..x9, other answers
    with pytest.raises(UserError, match="differs in items"):
        probe(loaded, task_objects=[changed], **kw)
    monkeypatch.setattr(T, "SCORING", "another-reading")
    with pytest.raises(UserError, match="differs in items"):
        probe(loaded, task_objects=[NextToken(loaded.model)], **kw)


def test_torn_last_line_is_redone(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text(json.dumps({"task": "t", "condition": "base", "id": "a", "correct": True}) + "\n{\"task\": \"t\", \"cond")
    log = ItemLog(p)
    assert log.done("t", "base") == {"a"}
    log.append([{"task": "t", "condition": "base", "id": "b", "correct": False}])
    assert [json.loads(l)["id"] for l in p.read_text().splitlines()] == ["a", "b"]
    assert ItemLog(p).done("t", "base") == {"a", "b"}


def test_other_config_in_same_folder_is_refused(tmp_path):
    loaded, hs = _setup()
    kw = dict(out=tmp_path / "p", scores=hs, task_objects=[NextToken(loaded.model, n=3)])
    probe(loaded, groups=["low"], count=2, **kw)
    with pytest.raises(UserError, match="different config"):
        probe(loaded, groups=["low"], count=3, **kw)


def test_mean_mode_runs_and_differs_from_zero(tmp_path):
    pytest.importorskip("staterank.tasks.prose")
    loaded, hs = _setup()
    loaded.tokenizer = byte_tokenizer()
    loaded.model.resize_token_embeddings(len(loaded.tokenizer))
    outs = {}
    for mode in ("zero", "mean"):
        f = probe(loaded, groups=["low"], count=4, scores=hs, mode=mode, out=tmp_path / mode, calib_texts=2,
                  calib_tokens=32, task_objects=[NextToken(loaded.model, n=6)])
        outs[mode] = {(r["condition"], r["id"]): r["pred"] for r in _lines(f)}
    assert all(outs["zero"][k] == outs["mean"][k] for k in outs["zero"] if k[0] == "base")
    # the calibrated means are used: mean ablation is not zero ablation in disguise (tiny random
    # models may still pick the same argmax tokens, so compare logits)
    from staterank.probes.ablate import ablate
    from staterank.runio import read_npz

    means = {int(k[1:]): torch.from_numpy(v) for k, v in read_npz(tmp_path / "mean" / "means.npz").items()}
    assert all(float(v.abs().max()) > 0 for v in means.values())
    heads = {li: [0] for li in means}
    ids = torch.randint(3, 90, (1, 12))
    with torch.no_grad():
        with ablate(loaded.model, heads, "zero"):
            z = loaded.model(ids).logits
        with ablate(loaded.model, heads, "mean", means=means):
            m = loaded.model(ids).logits
    assert not torch.allclose(z, m)


def test_statistics():
    from staterank.tasks.evaluate import accuracy_ci

    for k, n in [(0, 10), (3, 10), (10, 10), (47, 64)]:
        _, lo, hi = accuracy_ci([True] * k + [False] * (n - k))
        assert wilson(k, n) == pytest.approx((lo, hi))
    m = mcnemar([True] * 10, [True] * 4 + [False] * 6)
    assert (m["a_only"], m["b_only"]) == (6, 0) and m["p_value"] == pytest.approx(2 / 64)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_verdict_numbers():
    def comp(b, diff, p, hi=None, seeds=1, task="t"):
        return {"task": task, "a": "low", "b": b, "diff": diff, "p_items": p, "diff_ci_high": hi, "seeds": seeds}

    pj = {"comparisons": [comp("high", -0.3, 0.001), comp("layer_random.low", -0.2, 0.01, -0.05, 5)]}
    assert verdicts(pj, ["t"])["t"]["holds"] is True
    pj["comparisons"][1] = comp("layer_random.low", -0.2, 0.01, 0.02, 5)  # the interval crosses 0
    v = verdicts(pj, ["t"])["t"]
    assert v["worse_than_other"] is True and v["worse_than_control"] is False and v["holds"] is False
    assert verdicts({"comparisons": []}, ["t"])["t"]["holds"] is None
    # one claim on three tasks: p = 0.03 each passes alone, not after Holm (3 × 0.03 > 0.05)
    pj = {"comparisons": [c for t in "xyz" for c in (comp("high", -0.3, 0.03, task=t),
                                                      comp("layer_random.low", -0.2, 0.001, -0.05, 5, task=t))]}
    v = verdicts(pj, list("xyz"))
    assert all(v[t]["p_other_holm"] == pytest.approx(0.09) and v[t]["holds"] is False for t in "xyz")


def _log(folder, task, conds: dict[str, list[bool]]):
    folder.mkdir(exist_ok=True)
    log = ItemLog(folder / "items.jsonl")
    log.append([{"task": task, "condition": c, "id": str(i), "correct": bool(x)}
                for c, xs in conds.items() for i, x in enumerate(xs)])
    return log


def test_compare_counts_each_item_once_however_many_seeds(tmp_path):
    """Ten identical control seeds are no more evidence than one: the items are the sample."""
    n = 40
    low = [i >= 2 for i in range(n)]  # 2 items worse than the control
    seeds = {f"layer_random.low/s{s}": [True] * n for s in range(10)}
    c10 = compare(_log(tmp_path / "a", "t", {"low": low, **seeds}), "t", "low", sorted(seeds))
    c1 = compare(_log(tmp_path / "b", "t", {"low": low, "high": [True] * n}), "t", "low", ["high"])
    assert c10["seeds"] == 10 and c10["n_items"] == n and c10["diff"] == pytest.approx(-2 / n)
    assert c10["p_items"] == pytest.approx(c1["p_items"]) == pytest.approx(0.5)  # exact McNemar, 2 discordant
    assert c10["diff_ci_high"] == 0.0  # items resampled: some draws miss both wrong items


def test_compare_interval_widens_with_seed_spread(tmp_path):
    n = 60
    low = [i % 2 == 0 for i in range(n)]
    same = {f"c/s{s}": [i % 3 != 0 for i in range(n)] for s in range(6)}
    spread = {f"c/s{s}": [i % 3 != 0 if s % 2 else True for i in range(n)] for s in range(6)}
    a = compare(_log(tmp_path / "a", "t", {"low": low, **same}), "t", "low", sorted(same))
    b = compare(_log(tmp_path / "b", "t", {"low": low, **spread}), "t", "low", sorted(spread))
    assert b["diff_ci_high"] - b["diff_ci_low"] > a["diff_ci_high"] - a["diff_ci_low"]
    assert len(b["seed_diffs"]) == 6 and b["p_seed_rank"] is not None


def test_cli_end_to_end_with_measured_scores(tmp_path):
    """staterank probe on a saved tiny model: scores measured on prose, report written, rerun resumes."""
    from staterank.cli import main

    tok = byte_tokenizer()
    model = tiny_model("qwen3_5", vocab=len(tok), h_v=4)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    argv = ["probe", "--model", str(tmp_path / "m"), "--tasks", "arith,niah", "--niah-lengths", "40",
            "--niah-depths", "0,1", "--limit", "3", "--groups",
            "low,high,layer_random", "--count", "2", "--seeds", "2", "--calib-texts", "1", "--calib-tokens", "24",
            "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    run = tmp_path / "run"
    sc = json.loads((run / "scores.json").read_text())
    assert np.isfinite(np.array(sc["mean_rank"])).all() and len(sc["layers"]) == 3
    lines = _lines(run)
    assert len(lines) == (3 + 3) * (1 + 2 + 2 * 2)  # arith 3 items, niah 3 (--limit) over 2 cells; 7 conditions
    assert {r["cell"] for r in lines if r["task"] == "niah"} == {"40@0", "40@1"}
    assert "Table 1" in (run / "report.md").read_text()
    assert main(argv) == 0 and len(_lines(run)) == 6 * 7
    assert main(argv[:-1] + [str(tmp_path / "m")]) == 2  # a non-run folder is never written into


def test_task_whose_data_is_missing_fails_before_a_run_folder_exists(tmp_path):
    loaded, hs = _setup()

    @dataclass
    class NoData(NextToken):
        def items(self, tokenizer):
            raise UserError("no gsm8k/test.jsonl under /x, and downloading openai/gsm8k failed")

    with pytest.raises(UserError, match="gsm8k"):
        probe(loaded, groups=["low"], count=2, out=tmp_path / "p", scores=hs,
              task_objects=[NoData(loaded.model, n=3)])
    assert not (tmp_path / "p").exists()


def test_missing_lm_eval_fails_before_a_run_folder_exists(tmp_path, monkeypatch):
    from staterank.probes import lmeval

    def absent():
        raise UserError("lm-evaluation-harness is not usable (No module named 'lm_eval'); pip install 'staterank[eval]'")

    monkeypatch.setattr(lmeval, "_import_lm_eval", absent)
    loaded, hs = _setup()
    with pytest.raises(UserError, match="lm-evaluation-harness"):
        probe(loaded, groups=["low"], count=2, out=tmp_path / "p", scores=hs,
              task_objects=[NextToken(loaded.model, n=3)], lm_eval_tasks=["gsm8k_local"])
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- review fixes: nothing left behind by bad input

@pytest.mark.parametrize("content", [None, b"\x89PNG\r\n\x1a\n\x00\xff\xfe", b"layers: [1, 2]\n", b"[1, 2, 3]",
                                     b'{"layers": [0, 1], "mean_rank": [[1, 2]], "norm_rank": [[1, 2]]}',
                                     b'{"layers": [0], "mean_rank": [1, 2], "norm_rank": [1, 2], "mean_nuclear": [1, 2]}'],
                         ids=["missing", "binary", "not-json", "json-list", "no-nuclear", "1-d"])
def test_bad_scores_file_is_one_line_and_leaves_no_folder(tmp_path, content):
    loaded, hs = _setup()
    f = tmp_path / "scores.json"
    if content is not None:
        f.write_bytes(content)
    kw = dict(groups=["low"], count=2, out=tmp_path / "p")
    with pytest.raises(UserError, match="scores") as e:
        probe(loaded, scores=f, task_objects=[NextToken(loaded.model, n=3)], **kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "p").exists()
    # the corrected command runs in the same folder
    f.write_text(json.dumps(hs.to_dict(), default=lambda a: a.tolist()))
    assert (probe(loaded, scores=f, task_objects=[NextToken(loaded.model, n=3)], **kw) / "probe.json").exists()


def test_scores_for_other_layers_leave_no_folder(tmp_path):
    loaded, hs = _setup()
    f = tmp_path / "scores.json"
    f.write_text(json.dumps({**hs.to_dict(), "layers": [7, 8, 9][:len(hs.layers)]}, default=lambda a: a.tolist()))
    with pytest.raises(UserError, match="layers"):
        probe(loaded, groups=["low"], count=2, out=tmp_path / "p", scores=f,
              task_objects=[NextToken(loaded.model, n=3)])
    assert not (tmp_path / "p").exists()


def test_negative_seed_is_a_user_error_and_leaves_no_folder(tmp_path):
    loaded, hs = _setup()
    with pytest.raises(UserError, match="seed"):
        probe(loaded, groups=["random"], count=2, seed=-1, out=tmp_path / "p", task_objects=[NextToken(loaded.model, n=3)],
              )
    with pytest.raises(UserError, match="seed"):
        probe(loaded, tasks=["arith"], groups=["random"], count=2, seed=-1, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_missing_data_dir_is_refused_before_a_folder_exists(tmp_path):
    loaded, hs = _setup()
    absent = tmp_path / "absent"
    # measured scores and mean calibration read prose from --data-dir: a missing one is an error, not the default
    for kw in ({"groups": ["low"]}, {"groups": ["random"], "mode": "mean"}, {"groups": ["random"], "tasks": ["ppl"]}):
        with pytest.raises(UserError, match="absent"):
            probe(loaded, count=2, data_dir=absent, out=tmp_path / "p",
                  **({"task_objects": [NextToken(loaded.model, n=3)]} if "tasks" not in kw else {}), **kw)
        assert not (tmp_path / "p").exists()


def test_calibration_prose_comes_from_the_data_dir(tmp_path):
    from staterank.probes.run import calibration_texts

    (tmp_path / "d" / "prose").mkdir(parents=True)
    (tmp_path / "d" / "prose" / "z.txt").write_text("".join(f"An okapi called {i} ran.\n\n" for i in range(3000)))
    texts = calibration_texts(2, 200, data_dir=tmp_path / "d")
    assert len(texts) == 2 and all("okapi" in t for t in texts)
    loaded, hs = _setup()
    loaded.tokenizer = byte_tokenizer()
    loaded.model.resize_token_embeddings(len(loaded.tokenizer))
    kw = dict(groups=["low"], count=2, calib_texts=2, calib_tokens=32)
    a = probe(loaded, out=tmp_path / "a", task_objects=[NextToken(loaded.model, n=2)], **kw)
    b = probe(loaded, out=tmp_path / "b", task_objects=[NextToken(loaded.model, n=2)], data_dir=tmp_path / "d", **kw)
    ra, rb = (json.loads((f / "scores.json").read_text())["mean_rank"] for f in (a, b))
    assert ra != rb  # measured on the given prose, not the default
    assert json.loads((b / "config.json").read_text())["config"]["data_dir"] == str(tmp_path / "d")


def test_cli_bad_scores_and_data_dir_leave_no_folder(tmp_path, capsys):
    """The reviewer's commands: exit 2, one line, no run folder, so the corrected command runs."""
    from staterank.cli import main

    base = ["probe", "--model", "builtin", "--tasks", "arith", "--limit", "1", "--seeds", "1", "--groups", "low",
            "--count", "1", "--quiet", "--out", str(tmp_path / "r")]
    (tmp_path / "bin.json").write_bytes(b"\x00\xff\xfe\x80")
    for extra in (["--scores", str(tmp_path / "nonexist.json")], ["--scores", str(tmp_path / "bin.json")],
                  ["--data-dir", str(tmp_path / "nonexistent")]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "r").exists()


def _exact_sign_flip_p(d):
    """Two-sided sign-flip p by enumerating all 2^n sign patterns of the non-zero differences:
    share of patterns whose |mean| reaches the observed |mean| (the null is symmetric, so this is
    also 2·min(P(≥), P(≤)))."""
    nz = np.asarray([x for x in d if x != 0], dtype=float)
    n = len(nz)
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # [2^n, n] all patterns
    means = (signs * nz).mean(1)
    obs = abs(nz.mean())
    return float((np.abs(means) >= obs * (1 - 1e-12)).mean())


@pytest.mark.parametrize("d", [
    [1, 0.5, 0.25, 0.75, 1, -0.5, 0.25, 1, 0, 0.5, 0.75, 0, -0.25],  # 11 non-zero, several magnitudes
    [-1, -0.5, -0.25, 0.75, -1, -0.5, 0.25, -1, -0.5, -0.75, -0.25, 0.5, -1, -0.5],  # 14: the exact limit, mean < 0
    [0.5, -1, 0.25, 0.25, -0.75],  # weak effect: p near 1
    [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25],  # all positive: the smallest p, 2/2^8
])
def test_sign_flip_p_exact_with_several_magnitudes(d):
    from staterank.probes.run import _sign_flip_p

    want = _exact_sign_flip_p(d)
    assert len([x for x in d if x]) <= 14
    assert _sign_flip_p(np.array(d, dtype=float)) == pytest.approx(want, rel=1e-9, abs=0)
    # the sign of the effect does not matter: two-sided
    assert _sign_flip_p(-np.array(d, dtype=float)) == pytest.approx(want, rel=1e-9, abs=0)


def test_sign_flip_p_monte_carlo_beyond_14_items():
    from staterank.probes.run import _sign_flip_p

    d = np.array([1, 0.5, -0.25, 0.75, 1, -0.5, 0.25, 1, 0.5, -1, 0.75, 0.25, -0.75, 0.5, 0.25, -0.5, 1, 0, 0.5, -0.25])
    assert (d != 0).sum() == 19
    want = _exact_sign_flip_p(d)  # 2^19 patterns: still cheap to enumerate here
    assert 0.02 < want < 0.2  # a p where one-sided and two-sided answers differ by far more than MC error
    got = _sign_flip_p(d)
    # 20,000 resamples: two-sided MC s.d. ≈ 2·sqrt(0.05·0.95/20000) ≈ 0.003; one-sided would be ≈ want/2 or 1 - want/2
    assert got == pytest.approx(want, abs=0.015)
    assert _sign_flip_p(-d) == pytest.approx(want, abs=0.015)


def test_accuracy_rows_report_outputs_cut_at_the_budget(tmp_path):
    from staterank.probes.run import accuracy_row

    base = {f"q{i}": {"correct": i < 6, "truncated": i >= 8} for i in range(10)}
    row = accuracy_row("gsm8k", "base", base, base)
    assert row["truncated_share"] == 0.2 and row["accuracy"] == 0.6
    plain = accuracy_row("mqar", "base", {"a": {"correct": True}}, {})
    assert "truncated_share" not in plain  # tasks that do not record it say nothing
