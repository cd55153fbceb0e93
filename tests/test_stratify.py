"""Stratification statistics against independent computations, degenerate inputs, the initialisation
baseline, and the CLI folder."""

import itertools
import json

import numpy as np
import pytest
import scipy.stats
import torch

from staterank import stratify as st
from staterank.errors import UserError
from staterank.runio import write_json
from staterank.testing import tiny_model

# ---- synthetic dynamics -----------------------------------------------------------------------------

def synth(N=3, L=2, H=6, P=10, K=16, seed=0, rank=None, nuc=None, ld=None, positions=None):
    """Dynamics dict in the analyze layout; rank/nuc [N, L, H, P], log_decay [N, L, H]."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(positions if positions is not None else np.linspace(8, 200, P).astype(int))
    P = len(pos)
    r = rank if rank is not None else rng.integers(1, K + 1, size=(N, L, H, P)).astype(float)
    return {
        "threshold_rank": r, "nuclear_norm": nuc if nuc is not None else rng.random((N, L, H, P)) + 0.1,
        "positions": pos, "layers": np.arange(L) * 2 + 1, "bound": np.minimum(pos, K),
        "log_decay": ld if ld is not None else -rng.random((N, L, H)) - 0.01,
    }


def strict_json(path):
    def bad(c):
        raise ValueError(f"non-JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


# ---- two-cluster split ------------------------------------------------------------------------------

def brute_two_means(x):
    """Minimum within-cluster SSE over all 2-partitions of x (exhaustive)."""
    best = np.inf
    n = len(x)
    for mask in itertools.product([0, 1], repeat=n):
        m = np.array(mask, bool)
        if m.all() or not m.any():
            continue
        best = min(best, ((x[m] - x[m].mean()) ** 2).sum() + ((x[~m] - x[~m].mean()) ** 2).sum())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_two_means_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.random(9) if seed % 2 else rng.integers(0, 4, 9).astype(float)  # odd seeds: ties
    res = st.two_means(x)
    assert res["sse"] == pytest.approx(brute_two_means(x), abs=1e-9)
    lo, hi = x[x < res["threshold"]], x[x >= res["threshold"]]
    assert ((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum() == pytest.approx(res["sse"], abs=1e-9)
    assert res["gap"] == pytest.approx(hi.min() - lo.max())
    sst = ((x - x.mean()) ** 2).sum()
    assert res["separation"] == pytest.approx(1 - res["sse"] / sst)


def test_two_means_degenerate():
    assert st.two_means(np.array([0.3])) is None
    assert st.two_means(np.full(5, 0.7)) is None
    assert st.two_means(np.array([0.0, 1.0]))["threshold"] == 0.5


def stats_from_norm(norm, bound=10.0):
    L, H = norm.shape
    return st.HeadStats(layers=np.arange(L) + 3, mean_rank=norm * bound, final_rank=norm * bound,
                        mean_nuclear=np.ones((L, H)), bound=np.full(L, bound), log_decay=-np.ones((L, H)), n_contexts=1)


def test_classify_two_cluster_and_threshold():
    norm = np.array([[0.1, 0.12, 0.9, 0.95], [0.11, 0.85, 0.88, 0.13]])
    c = st.classify(stats_from_norm(norm))
    assert c.low == [(3, 0), (3, 1), (4, 0), (4, 3)] and c.high == [(3, 2), (3, 3), (4, 1), (4, 2)]
    assert c.heads("low") == {3: [0, 1], 4: [0, 3]}
    assert c.threshold == pytest.approx((0.13 + 0.85) / 2)
    assert c.share_per_layer() == {"3": {"low": 0.5, "high": 0.5}, "4": {"low": 0.5, "high": 0.5}}
    t = st.classify(stats_from_norm(norm), rule="threshold", threshold=0.12)
    assert t.low == [(3, 0), (4, 0)]
    back = st.Classes.from_dict(json.loads(json.dumps(st.jsonable(c.to_dict()))))
    assert back.low == c.low and back.high == c.high and (back.labels == c.labels).all()
    with pytest.raises(UserError, match="threshold"):
        st.classify(stats_from_norm(norm), rule="threshold")
    with pytest.raises(UserError, match="unknown rule"):
        st.classify(stats_from_norm(norm), rule="kmeans3")


@pytest.mark.parametrize("norm", [np.full((2, 3), 0.5), np.array([[0.4]])])
def test_classify_no_split_is_defined(norm):
    c = st.classify(stats_from_norm(norm))
    assert c.low == [] and c.high == [] and (c.labels == "none").all() and "no split" in c.reason


# ---- bimodality -------------------------------------------------------------------------------------

def bc_by_hand(x):
    n = len(x)
    m = x - x.mean()
    m2, m3, m4 = (m**2).mean(), (m**3).mean(), (m**4).mean()
    g1, g2 = m3 / m2**1.5, m4 / m2**2 - 3
    G1 = np.sqrt(n * (n - 1)) / (n - 2) * g1
    G2 = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return (G1**2 + 1) / (G2 + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def test_bimodality_coefficient():
    rng = np.random.default_rng(0)
    for x in (rng.random(7), rng.normal(size=30), np.r_[rng.normal(0, 0.05, 40), rng.normal(1, 0.05, 40)]):
        assert st.bimodality_coefficient(x)["value"] == pytest.approx(bc_by_hand(x))
    assert st.bimodality_coefficient(np.r_[rng.normal(0, 0.05, 40), rng.normal(1, 0.05, 40)])["value"] > 5 / 9
    assert st.bimodality_coefficient(rng.normal(size=400))["value"] < 5 / 9
    for x, why in ((np.ones(10), "equal"), (np.array([1.0, 2, 3]), "at least 4")):
        r = st.bimodality_coefficient(x)
        assert r["value"] is None and why in r["reason"]


# ---- time means, head stats -------------------------------------------------------------------------

def test_head_stats_time_mean_on_uneven_positions():
    pos = np.array([1, 2, 4, 8, 64, 128])
    N, L, H = 2, 1, 2
    rank = np.zeros((N, L, H, len(pos)))
    rank[..., 0, :] = pos  # a linear ramp: time mean over [1, 128] is (1 + 128) / 2
    rank[..., 1, :] = 3.0
    rank[1, ..., -1] = np.nan  # context 1 stops at t = 64
    d = synth(N, L, H, positions=pos, rank=rank, K=16, nuc=np.ones((N, L, H, len(pos))),
              ld=np.stack([np.full((L, H), -0.5), np.full((L, H), -1.5)]))
    s = st.head_stats(d)
    assert s.mean_rank[0, 0] == pytest.approx(((1 + 128) / 2 + (1 + 64) / 2) / 2)
    assert s.mean_rank[0, 1] == 3.0 and s.mean_nuclear[0, 0] == 1.0
    assert s.final_rank[0, 0] == pytest.approx((128 + 64) / 2)
    assert s.bound.tolist() == [16] and s.log_decay[0, 0] == pytest.approx(-1.0)
    np.testing.assert_allclose(s.norm_rank, s.mean_rank / 16)


# ---- consistency ------------------------------------------------------------------------------------

def spearman_by_hand(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties in these inputs
    return np.corrcoef(ra, rb)[0, 1]


def test_spearman_early_late_against_ranks_by_hand():
    rng = np.random.default_rng(1)
    pos = np.array([16, 64, 128, 512, 1024, 2048])
    rank = rng.permuted(np.broadcast_to(np.arange(8.0)[:, None], (2, 3, 8, 6)), axis=2)  # distinct values per vector
    d = synth(2, 3, 8, positions=pos, rank=rank, K=64)
    r = st.spearman_early_late(d, ["a", "b"], 128, 2048)
    for l in range(3):
        want = [spearman_by_hand(rank[n, l, :, 2], rank[n, l, :, 5]) for n in range(2)]
        assert r["per_context"]["a"][l] == pytest.approx(want[0])
        assert r["per_layer"][l] == pytest.approx(np.mean(want))
    assert r["note"] is None and r["t_late_used"] == {"a": 2048, "b": 2048}


def test_spearman_uses_longest_available_and_says_so():
    pos = np.array([64, 128, 256, 512])
    rank = np.random.default_rng(2).random((2, 1, 5, 4))
    rank[1, ..., 3] = np.nan  # context b ends at 256
    r = st.spearman_early_late(synth(2, 1, 5, positions=pos, rank=rank), ["a", "b"], 128, 2048)
    assert r["t_late_used"] == {"a": 512, "b": 256} and "shorter than t_late=2048" in r["note"]
    assert r["per_context"]["b"][0] == pytest.approx(scipy.stats.spearmanr(rank[1, 0, :, 1], rank[1, 0, :, 2]).statistic)


def test_spearman_degenerate_is_null_with_reason(tmp_path):
    pos = np.array([128, 2048])
    const = np.full((1, 1, 4, 2), 5.0)
    r = st.spearman_early_late(synth(1, 1, 4, positions=pos, rank=const), ["a"])
    assert np.isnan(r["per_layer"][0]) and r["mean"] is None and "constant" in r["reasons"]["a/layer 1"]
    one = st.spearman_early_late(synth(1, 1, 1, positions=pos, rank=np.array([[[[1.0, 2.0]]]])), ["a"])
    assert "fewer than 2 heads" in one["reasons"]["a/layer 1"]
    write_json(tmp_path / "s.json", st.jsonable(r))
    assert strict_json(tmp_path / "s.json")["per_layer"] == [None]


def test_cosine_matrix_against_numpy(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.random((4, 12))
    r = st.cosine_matrix(v, list("abcd"))
    want = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in v] for a in v])
    np.testing.assert_allclose(r["matrix"], want, atol=1e-12)
    off = want[~np.eye(4, dtype=bool)]
    assert r["mean_offdiag"] == pytest.approx(off.mean()) and r["min_offdiag"] == pytest.approx(off.min())
    p = st.cosine_matrix(v, list("abcd"), centred=True)
    np.testing.assert_allclose(p["matrix"], np.corrcoef(v), atol=1e-12)
    v[2] = 0
    z = st.cosine_matrix(v, list("abcd"))
    assert np.isnan(z["matrix"][2]).all() and z["reasons"] == {"c": "zero vector"}
    assert np.isfinite(z["mean_offdiag"])
    write_json(tmp_path / "c.json", st.jsonable(z))
    assert strict_json(tmp_path / "c.json")["matrix"][2] == [None] * 4
    allzero = st.cosine_matrix(np.zeros((2, 3)), ["a", "b"])
    assert allzero["mean_offdiag"] is None


def test_label_agreement_and_kappa():
    a = np.array(["low", "low", "high", "high", "high", "low"])
    b = np.array(["low", "high", "high", "high", "low", "low"])
    r = st.label_agreement(np.stack([a, b, np.full(6, "none", dtype=object)]).reshape(3, 2, 3), ["a", "b", "c"])
    po = 4 / 6
    pe = (3 / 6) * (3 / 6) + (3 / 6) * (3 / 6)
    assert r["matrix"][0, 1] == pytest.approx(po) and r["kappa"][0, 1] == pytest.approx((po - pe) / (1 - pe))
    assert np.isnan(r["matrix"][2]).all() and "no split" in r["reasons"]["c"]
    assert r["mean_offdiag"] == pytest.approx(po)


# ---- decay ------------------------------------------------------------------------------------------

def test_decay_vs_rank():
    rng = np.random.default_rng(4)
    ld = -np.exp(rng.normal(size=(3, 8)))  # log decay < 0
    x = np.log(-ld)
    y = 1 / (1 + np.exp(3 * x))  # monotone decreasing, not linear: faster forgetting, lower rank
    labels = np.where(x > np.median(x), "low", "high")
    r = st.decay_vs_rank(ld, y, labels)
    assert r["linear_r2"] == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1] ** 2)
    assert r["isotonic_r2"] == pytest.approx(1.0) and r["linear_r2"] < 0.999
    assert r["spearman"] == pytest.approx(-1.0) and r["stump_accuracy"] == 1.0 and r["majority_rate"] == 0.5
    noise = st.decay_vs_rank(ld, rng.random((3, 8)))
    assert noise["linear_r2"] < 0.5 and noise["stump_accuracy"] is None
    flat = st.decay_vs_rank(ld, np.full((3, 8), 0.4))
    assert flat["linear_r2"] is None and "constant" in flat["reason"]
    nodecay = st.decay_vs_rank(np.zeros((3, 8)), y)
    assert nodecay["linear_r2"] is None and "negative log decay" in nodecay["reason"]


# ---- whole summary on degenerate inputs -------------------------------------------------------------

@pytest.mark.parametrize("case", ["random", "all_equal", "one_head", "zero_norms"])
def test_stratify_stats_defined_on_degenerate_inputs(case, tmp_path):
    N, L, H, P = 3, 2, 5, 6
    pos = np.array([32, 64, 128, 256, 1024, 2048])
    kw = {}
    if case == "all_equal":
        kw = dict(rank=np.full((N, L, H, P), 4.0), nuc=np.ones((N, L, H, P)), ld=np.full((N, L, H), -0.3))
    if case == "one_head":
        N, L, H = 1, 1, 1
    if case == "zero_norms":
        kw = dict(nuc=np.zeros((N, L, H, P)))
    d = synth(N, L, H, positions=pos, **kw)
    names = [f"c{i}" for i in range(N)]
    summary, cls, stats, per_ctx = st.stratify_stats(d, names)
    write_json(tmp_path / "s.json", st.jsonable(summary))
    out = strict_json(tmp_path / "s.json")
    for k in ("spearman_t_early_t_late", "cosine_rank", "cosine_nuclear", "label_agreement",
              "bimodality_coefficient", "classes", "decay_rank_r2"):
        assert k in out
    assert per_ctx["labels"].shape == (N, L, H)
    if case == "all_equal":
        assert out["classes"]["reason"] and out["bimodality_coefficient"]["value"] is None
        assert out["cosine_rank"]["mean_offdiag"] == pytest.approx(1.0)
    if case == "zero_norms":
        assert out["cosine_nuclear"]["mean_offdiag"] is None and out["cosine_nuclear"]["reasons"]


def test_stratify_stats_rejects_bad_input():
    d = synth()
    with pytest.raises(UserError, match="context names"):
        st.stratify_stats(d, ["only one"])
    with pytest.raises(UserError, match="lack"):
        st.stratify_stats({k: v for k, v in d.items() if k != "log_decay"}, ["a", "b", "c"])


def test_default_positions():
    p = st.default_positions(300, stride=64, t_early=100, t_late=2048)
    assert p == (1, 64, 100, 128, 192, 256, 300)


# ---- initialisation baseline (tiny models) ----------------------------------------------------------

def test_init_copy_is_the_models_own_initialisation():
    from staterank.testing import tiny_model

    at_init = tiny_model("qwen3_5", 3, memory_gates=False)
    trained_like = tiny_model("qwen3_5", 7, memory_gates=True)
    same = st.init_copy(trained_like, seed=3)
    for k, v in at_init.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v, atol=0, rtol=0)
    other = st.init_copy(trained_like, seed=4).state_dict()
    assert not torch.equal(other["model.layers.0.linear_attn.in_proj_qkv.weight"],
                           at_init.state_dict()["model.layers.0.linear_attn.in_proj_qkv.weight"])
    fla = st.init_copy(trained_like, seed=3, gates="fla").state_dict()
    changed = {k for k, v in at_init.state_dict().items() if not torch.equal(fla[k], v)}
    assert changed and all(k.endswith(("A_log", "dt_bias")) for k in changed)
    decay = torch.exp(-fla["model.layers.0.linear_attn.A_log"].exp() * torch.nn.functional.softplus(fla["model.layers.0.linear_attn.dt_bias"]))
    assert decay.min() > 0.8  # FLA-style gates remember: per-token decay near 1 at zero input


def test_init_copy_of_a_model_spread_over_devices_is_built_in_its_dtype_and_spread_alike(monkeypatch):
    # no second device here: the placement itself is accelerate's; this checks what staterank asks of it
    import accelerate

    from staterank.testing import tiny_model

    model = tiny_model("qwen3_next", 1).to(torch.bfloat16)
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "model.norm": 1, "lm_head": 1}
    calls = []
    monkeypatch.setattr(accelerate, "dispatch_model", lambda m, device_map: calls.append(device_map) or m)
    fresh = st.init_copy(model, seed=3)
    assert calls == [model.hf_device_map]
    assert {p.dtype for p in fresh.parameters()} == {torch.bfloat16} and not fresh.training
    assert torch.get_default_dtype() == torch.float32  # restored
    assert not torch.equal(fresh.model.embed_tokens.weight, model.model.embed_tokens.weight)


def _loaded(model, tok):
    from staterank.adapters import get_adapter
    from staterank.models import Loaded

    return Loaded(model=model, tokenizer=tok, adapter=get_adapter(model), spec="tiny", source="memory", config={})


def test_init_baseline_of_an_untrained_model_reproduces_its_own_statistics(tmp_path):
    """A model at its own initialisation, re-initialised with the same seed, is the same model: every
    statistic of the baseline equals the model's, delta is zero, and the (high) t_early/t_late
    consistency and the decay -> rank fit are pure gate effects."""
    from test_contexts import char_tokenizer

    from staterank.contexts import suite
    from staterank.testing import tiny_model

    tok = char_tokenizer()
    model = tiny_model("qwen3_5", 3, memory_gates=False, h_k=4, h_v=8, k=16, v=16)
    cfg = st.StratifyConfig(max_tokens=160, stride=8, t_early=32, t_late=160, init_gates="model", init_seed=3)
    run = st.run_stratify(_loaded(model, tok), suite("natural", tokens=160, tokenizer=tok), tmp_path / "s", cfg)
    s = strict_json(run / "stratify.json")
    i = s["init_baseline"]
    for k in ("spearman_t_early_t_late", "cosine_rank", "cosine_nuclear", "spearman_contexts", "label_agreement",
              "bimodality_coefficient", "classes", "decay_rank_r2"):
        assert s[k] == i[k], k
    assert s["delta"]["spearman_t_early_t_late"]["mean"] == 0.0 and s["delta"]["label_match_trained_vs_init"] == 1.0
    assert s["spearman_t_early_t_late"]["mean"] > 0.9
    assert s["decay_rank_r2"]["isotonic_r2"] > 0.9


# ---- CLI --------------------------------------------------------------------------------------------

def test_cli_writes_a_complete_folder_and_resumes(tmp_path, capsys):
    from test_contexts import char_tokenizer

    from staterank.cli import main
    from staterank.testing import tiny_model

    mdir = tmp_path / "model"
    tiny_model("qwen3_next", 0, h_k=2, h_v=4, k=8, v=8).save_pretrained(mdir)
    char_tokenizer().save_pretrained(mdir)
    out = tmp_path / "run"
    args = ["stratify", "--model", str(mdir), "--out", str(out), "--max-tokens", "96", "--stride", "16",
            "--t-early", "32", "--t-late", "2048", "--init-gates", "fla", "--threads", "1"]
    assert main(args) == 0
    for f in ("config.json", "contexts.json", "stratify.json", "heads.csv", "report.md", "rank_by_class.png",
              "contexts.png", "decay_rank.png", "analyze/dynamics.npz", "analyze_init/dynamics.npz"):
        assert (out / f).is_file(), f
    s = strict_json(out / "stratify.json")
    for k in ("spearman_t_early_t_late", "cosine_rank", "cosine_nuclear", "label_agreement", "bimodality_coefficient",
              "classes", "decay_rank_r2", "paper", "init_baseline", "delta"):
        assert s[k] is not None, k
    assert s["contexts"] == ["prose", "math", "code", "dialogue", "random", "repeat_rare", "repeat_number"]
    assert "shorter than t_late=2048" in s["spearman_t_early_t_late"]["note"]  # 96 tokens < 2048: said so
    assert s["paper"]["cosine_rank"] == 0.97 and s["paper"]["cosine_nuclear"] == 0.98
    rows = (out / "heads.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 4 and rows[0].startswith("layer,head,class,stability")
    report = (out / "report.md").read_text()
    assert "> 0.97" in report and "at init" in report
    # same command: resumes (nothing recomputed, same result); a different config: refused, one line
    assert main(args + ["--no-report"]) == 0
    assert strict_json(out / "stratify.json")["cosine_rank"] == s["cosine_rank"]
    assert main(args[:-4] + ["--init-gates", "model", "--threads", "1"]) == 2
    assert "different config" in capsys.readouterr().err
    # --from-runs on the analyze folders reproduces the statistics without a model
    out2 = tmp_path / "from_runs"
    assert main(["stratify", "--from-runs", str(out / "analyze"), "--init-runs", str(out / "analyze_init"),
                 "--out", str(out2), "--t-early", "32", "--no-report"]) == 0
    stats, cls = st.load_stratify(out)
    assert stats.mean_rank.shape == (3, 4) and stats.bound.tolist() == [8, 8, 8]
    assert len(cls.low) + len(cls.high) == 12 and cls.low == [tuple(x) for x in s["classes"]["low"]]
    s2 = strict_json(out2 / "stratify.json")
    for k in ("spearman_t_early_t_late", "cosine_rank", "classes", "decay_rank_r2"):
        assert s2[k] == s[k], k
    assert s2["init_baseline"]["cosine_rank"] == s["init_baseline"]["cosine_rank"]
    # the model's and the initialisation's analyze runs are two models: never merged as contexts of one
    capsys.readouterr()
    assert main(["stratify", "--from-runs", str(out / "analyze"), str(out / "analyze_init"),
                 "--out", str(tmp_path / "mixed"), "--no-report"]) == 2
    assert "different models" in capsys.readouterr().err and not (tmp_path / "mixed").exists()


@pytest.mark.parametrize("family,memoryless", [("qwen3_next", True), ("qwen3_5", True), ("olmo_hybrid", False),
                                               ("kimi_linear", False)])
def test_auto_init_gates_replace_a_memoryless_own_init(family, memoryless):
    """auto gates: transformers' own Qwen3-Next / Qwen3.5 gate init forgets everything each token (a
    baseline with no rank structure is no control), so those get FLA-style gates; OLMo-hybrid's and
    Kimi's own inits keep memory and are used as they are. Read from the fresh init, not the weights."""
    from types import SimpleNamespace

    from staterank.adapters import get_adapter

    kw = {"h_v": 4} if family == "kimi_linear" else {}
    model = tiny_model(family, memory_gates=True, **kw)
    if not memoryless:  # give the loaded weights the opposite answer: it must not leak into the measurement
        for m in model.modules():
            if hasattr(m, "A_log") and hasattr(m, "dt_bias"):
                with torch.no_grad():
                    m.A_log.fill_(np.log(16.0))
                    m.dt_bias.fill_(10.0)  # decay e^-160: forgets everything
    before = torch.random.get_rng_state()
    d = st.own_init_decay(model, get_adapter(model), seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    assert (d < st.MEMORYLESS_DECAY) is memoryless
    assert (d < 1e-3) if memoryless else (0.8 < d < 1.0)
    gates, why = st.auto_init_gates(SimpleNamespace(model=model, adapter=get_adapter(model)))
    assert gates == ("fla" if memoryless else "model") and f"{d:.2g}"[:3] in why


def test_builtin_gets_fla_init_gates_and_run_seeds_the_init():
    """The builtin model (a Qwen3-Next, trained from FLA-style gates) gets them from auto, however it is
    named; staterank run's --seed reaches the init."""
    from staterank.models import load_model
    from staterank.pipeline import RunConfig

    assert st.auto_init_gates(load_model("builtin"))[0] == "fla"
    assert RunConfig.from_dict({"model": "builtin", "seed": 7}).stratify_config().init_seed == 7


# ---- the summary's assembly, against independent computations ---------------------------------------

def test_stratify_stats_summary_matrices_labels_and_decay_against_independent_computation():
    """Each summary block is computed from the right per-context vectors: cosines and Pearsons of the
    per-context mean-rank / mean-nuclear vectors (not the final rank), Spearman between contexts over
    heads, per-context labels from each context alone, decay → rank on the mean rank."""
    N, L, H = 4, 3, 6
    pos = np.array([4, 8, 16, 32, 64, 128])
    rng = np.random.default_rng(11)
    # per-context head levels that differ between contexts (so labels differ), plus a time trend that
    # makes the final rank differ from the time mean
    level = rng.random((N, L, H))
    level[0] = np.where(np.arange(H) < 3, 0.05, 0.95)[None, :]  # context 0: heads 0-2 low
    level[1] = np.where(np.arange(H) < 3, 0.95, 0.05)[None, :]  # context 1: the opposite
    trend = rng.random((N, L, H, 1)) * np.linspace(-1, 1, len(pos))
    rank = np.clip(16 * level[..., None] + 3 * trend + rng.normal(0, 0.3, (N, L, H, len(pos))), 0.1, 16)
    nuc = 5 + rng.random((N, L, H, len(pos))) * rng.random((N, L, H, 1)) * 4  # positive, far from zero mean
    ld = -np.exp(rng.normal(size=(N, L, H)))
    d = synth(N, L, H, positions=pos, rank=rank, nuc=nuc, ld=ld, K=16)
    names = [f"c{i}" for i in range(N)]
    summary, cls, stats, per_ctx = st.stratify_stats(d, names)

    span = pos[-1] - pos[0]
    mean_rank = np.trapezoid(rank, pos, axis=-1) / span  # [N, L, H]
    mean_nuc = np.trapezoid(nuc, pos, axis=-1) / span
    final_rank = rank[..., -1]
    assert not np.allclose(mean_rank, final_rank, rtol=0.05)  # the test can tell them apart
    R, U = mean_rank.reshape(N, -1), mean_nuc.reshape(N, -1)
    cos = lambda V: np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in V] for a in V])
    np.testing.assert_allclose(summary["cosine_rank"]["matrix"], cos(R), atol=1e-12)
    np.testing.assert_allclose(summary["cosine_nuclear"]["matrix"], cos(U), atol=1e-12)
    np.testing.assert_allclose(summary["pearson_rank"]["matrix"], np.corrcoef(R), atol=1e-12)
    np.testing.assert_allclose(summary["pearson_nuclear"]["matrix"], np.corrcoef(U), atol=1e-12)
    assert not np.allclose(cos(U), np.corrcoef(U), atol=0.05)  # centring matters on these vectors
    sp = scipy.stats.spearmanr(R, axis=1).statistic  # contexts are the variables, heads the observations
    np.testing.assert_allclose(summary["spearman_contexts"]["matrix"], sp, atol=1e-12)
    off = ~np.eye(N, dtype=bool)
    assert summary["cosine_rank"]["mean_offdiag"] == pytest.approx(cos(R)[off].mean())
    assert summary["spearman_contexts"]["mean_offdiag"] == pytest.approx(sp[off].mean())

    # per-context labels: the two-cluster rule applied to that context alone
    d_bound = np.minimum(pos[-1], 16)
    for n in range(N):
        x = mean_rank[n] / d_bound
        thr = st.two_means(x.ravel())["threshold"]
        want = np.where(x < thr, "low", "high")
        assert (per_ctx["labels"][n] == want).all(), n
        one = {k: (v[n:n + 1] if k in ("threshold_rank", "nuclear_norm", "log_decay") else v) for k, v in d.items()}
        assert (st.classify(st.head_stats(one)).labels == want).all(), n
    assert (per_ctx["labels"][0] != per_ctx["labels"][1]).all()  # contexts 0 and 1 disagree on every head
    agree = np.mean(per_ctx["labels"][0] == per_ctx["labels"][2])
    assert summary["label_agreement"]["matrix"][0, 1] == 0.0
    assert summary["label_agreement"]["matrix"][0, 2] == pytest.approx(agree)

    # decay -> rank: on the pooled mean rank over d, the gates' x = log(-mean log decay)
    y = (mean_rank.mean(0) / d_bound).ravel()
    x = np.log(-ld.mean(0)).ravel()
    dr = summary["decay_rank_r2"]
    assert dr["linear_r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert dr["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    y_final = (final_rank.mean(0) / d_bound).ravel()
    assert np.corrcoef(x, y_final)[0, 1] ** 2 != pytest.approx(dr["linear_r2"], abs=1e-3)


def test_from_runs_on_a_folder_that_is_no_analyze_run_is_one_line(tmp_path):
    """The easy mistake: the pipeline's folder (its config.json has other keys, no dynamics.npz)."""
    from staterank.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"config": {"stages": ["stratify"]}, "config_hash": "x"}')
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("{}")
    for f in ("run", "odd"):
        assert main(["stratify", "--from-runs", str(tmp_path / f), "--quiet", "--out", str(tmp_path / f"s_{f}")]) == 2
