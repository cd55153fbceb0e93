"""analyze(): ranks in dynamics.npz equal fp64 ranks of the states the model's own cache holds."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_models import save_tiny

from staterank import analyze as an
from staterank.analyze import analyze, load_dynamics
from staterank.capture import Schedule
from staterank.errors import UserError
from staterank.models import cache_kwarg, load_model, output_cache
from staterank.runio import read_json, read_npz

EPS = 1e-4
TEXTS = {"long": "It is a truth universally acknowledged, that a single man", "short": "In the beginning God"}
CASES = {  # family -> (tiny_model kwargs): K != V and H_v/H_k = 4 where the family allows it
    "qwen3_next": dict(h_k=1, h_v=4, k=8, v=12),
    "qwen3_5": dict(h_k=2, h_v=8, k=12, v=8),
    "kimi_linear": dict(h_v=4, k=8),  # Kimi Delta Attention has H_k = H_v and K = V
    # transformers' default gates forget almost everything each token: ranks well below the bound
    "qwen3_next_forgetful": dict(h_k=1, h_v=4, k=8, v=12, memory_gates=False),
}


def _cache_ranks(loaded, ids: torch.Tensor) -> dict[int, np.ndarray]:
    """Feed ids [1, T] token by token through the model's cache; after each token take every linear
    layer's cached state and count σ > ε·σ_1 with fp64 SVD. -> {layer: [H, T]}."""
    model = loaded.model
    layers = [l.index for l in loaded.adapter.linear_layers(model)]
    ranks = {i: [] for i in layers}
    cache = None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            cache = output_cache(model(ids[:, t : t + 1], **{cache_kwarg(model): cache}, use_cache=True))
            for i in layers:
                sig = torch.linalg.svdvals(cache.layers[i].recurrent_states[0][0].double())  # [H, min(K, V)]
                ranks[i].append((sig > EPS * sig[:, :1]).sum(-1).numpy())
    return {i: np.stack(r, axis=-1) for i, r in ranks.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_equal_fp64_ranks_of_cache_states(case, tmp_path):
    kw = dict(CASES[case])
    family = case.removesuffix("_forgetful")
    save_tiny(tmp_path / "m", family, **kw)
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    # prefill_chunk=16: the long text spans several forwards through the cache
    analyze(loaded, TEXTS, eps=EPS, prefill_chunk=16, out=tmp_path / "run")
    z = read_npz(tmp_path / "run" / "dynamics.npz")
    ids = [loaded.tokenizer(t, return_tensors="pt")["input_ids"] for t in TEXTS.values()]
    T = [x.shape[1] for x in ids]
    assert list(z["positions"]) == list(range(1, max(T) + 1))
    assert list(z["texts"]) == list(TEXTS)
    rank = z["threshold_rank"]  # [N, L, H, P]
    H = kw["h_v"]
    assert rank.shape == (2, 3, H, max(T))
    seen = set()
    for n, x in enumerate(ids):
        ref = _cache_ranks(loaded, x)
        for li, layer in enumerate(z["layers"]):
            np.testing.assert_array_equal(rank[n, li, :, : T[n]], ref[int(layer)], err_msg=f"text {n} layer {layer}")
            seen |= set(ref[int(layer)].ravel().tolist())
        assert np.isnan(rank[n, :, :, T[n]:]).all()  # shorter text: NaN past its end
    bound_max = min(kw["k"], kw.get("v", kw["k"]))
    assert np.array_equal(z["bound"], np.minimum(z["positions"], bound_max))
    assert (np.nan_to_num(rank, nan=0) <= z["bound"]).all()
    if case.endswith("forgetful"):  # the comparison covered ranks strictly below the bound
        assert min(seen) < bound_max and len(seen) > 2


def test_stride_schedule_and_keep_states(tmp_path):
    save_tiny(tmp_path / "m", "qwen3_next", h_k=1, h_v=4, k=8, v=12)
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    text = TEXTS["long"]
    dyn = analyze(loaded, [text], schedule=Schedule(stride=5), keep_states=True, prefill_chunk=7,
                  out=tmp_path / "run")
    T = loaded.tokenizer(text, return_tensors="pt")["input_ids"].shape[1]
    assert list(dyn.positions) == list(range(5, T + 1, 5))
    st = load_file(tmp_path / "run" / "states" / "0000.safetensors")
    assert st["positions"].tolist() == list(dyn.positions)
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    for li, layer in enumerate(dyn.layers):
        S = st[f"layer_{layer}"]  # [H, P, K, V]
        assert S.shape == (4, len(dyn.positions), 8, 12)
        sig = torch.linalg.svdvals(S.double())
        np.testing.assert_array_equal((sig > EPS * sig[..., :1]).sum(-1).numpy(), dyn.stats["threshold_rank"][0, li])
    # the last kept state is the cache's state after the same number of tokens
    last = int(dyn.positions[-1])
    with torch.no_grad():
        cache = output_cache(loaded.model(ids[:, :last], use_cache=True))
    for layer in dyn.layers:
        torch.testing.assert_close(st[f"layer_{layer}"][:, -1], cache.layers[int(layer)].recurrent_states[0][0],
                                   atol=1e-5, rtol=1e-4)


def test_state_memory_limit(tmp_path):
    save_tiny(tmp_path / "m", "qwen3_next")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    with pytest.raises(UserError, match="memory limit"):
        analyze(loaded, [TEXTS["long"]], keep_states=True, max_state_bytes=1000)


def test_run_folder_contents_and_reader(tmp_path):
    save_tiny(tmp_path / "m", "qwen3_5", h_k=2, h_v=8, k=12, v=8)
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    dyn = analyze(loaded, TEXTS, max_tokens=30, schedule=Schedule(log=True), seed=3, out=tmp_path / "run")
    run = tmp_path / "run"
    z = read_npz(run / "dynamics.npz")
    assert set(z) == {"threshold_rank", "entropy_rank", "stable_rank", "nuclear_norm", "frobenius_norm",
                      "spectral_norm", "positions", "layers", "bound", "log_decay", "texts"}
    assert list(z["positions"]) == [1, 2, 4, 8, 16]  # 30 tokens max, powers of two
    assert z["log_decay"].shape == (2, 3, 8) and (z["log_decay"] < 0).all()
    cfg = read_json(run / "config.json")
    c = cfg["config"]
    assert c["eps"] == 1e-4 and c["seed"] == 3 and c["max_tokens"] == 30 and c["schedule"]["log"] is True
    assert c["model"]["source"] == str(tmp_path / "m") and len(c["texts"]) == 2
    assert {"versions", "git"} <= set(cfg["environment"])
    rows = (run / "heads.csv").read_text().splitlines()
    assert rows[0] == "layer,head,mean_threshold_rank,final_threshold_rank,mean_nuclear_norm,bound,mean_log_decay"
    assert len(rows) == 1 + 3 * 8
    first = rows[1].split(",")
    assert float(first[2]) == pytest.approx(np.nanmean(z["threshold_rank"][:, 0, 0]))
    # final rank: text "long" ends at its last measured position 16, text "short" (20 tokens) too
    assert float(first[3]) == pytest.approx(z["threshold_rank"][:, 0, 0, -1].mean())
    back = load_dynamics(run)
    for k, v in dyn.arrays().items():
        np.testing.assert_array_equal(back.arrays()[k], v)
    assert back.texts == dyn.texts and back.texts[0].max_output_err < 1e-4
    # a finished folder is read back, not recomputed
    again = analyze(loaded, TEXTS, max_tokens=30, schedule=Schedule(log=True), seed=3, out=run)
    assert again.texts == dyn.texts
    with pytest.raises(UserError, match="different config"):
        analyze(loaded, TEXTS, max_tokens=31, out=run)


def test_resume_skips_finished_texts(tmp_path, monkeypatch):
    save_tiny(tmp_path / "m", "qwen3_next")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    clean = analyze(loaded, TEXTS)
    real = an._one_text
    calls = []

    def dies_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(an, "_one_text", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        analyze(loaded, TEXTS, out=tmp_path / "run")
    assert (tmp_path / "run" / "texts" / "0000.npz").exists() and not (tmp_path / "run" / "dynamics.npz").exists()
    calls.clear()
    monkeypatch.setattr(an, "_one_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = analyze(loaded, TEXTS, out=tmp_path / "run")
    assert len(calls) == 1  # only the unfinished text ran again
    for k, v in clean.arrays().items():
        np.testing.assert_array_equal(resumed.arrays()[k], v)


def test_bad_inputs(tmp_path):
    save_tiny(tmp_path / "m", "qwen3_next")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    for texts, msg in [([], "no texts"), (["ok", ""], "empty"), ({"a": "  "}, "empty")]:
        with pytest.raises(UserError, match=msg):
            analyze(loaded, texts)
    with pytest.raises(UserError, match="eps"):
        analyze(loaded, ["ok"], eps=0)
    with pytest.raises(UserError, match="no scheduled positions"):
        analyze(loaded, ["ok"], schedule=Schedule(stride=50))


def test_resume_with_other_weights_is_refused(tmp_path):
    """A resumed run must not mix per-text parts of two models (a retrained builtin, a new revision)."""
    save_tiny(tmp_path / "m", "qwen3_next")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    out = tmp_path / "run"
    analyze(loaded, TEXTS, out=out)
    analyze(loaded, TEXTS, out=out)  # same weights: resumes
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    with pytest.raises(UserError, match="other weights"):
        analyze(loaded, TEXTS, out=out)


def test_a_new_rank_metric_is_one_registered_function(tmp_path):
    """A statistic registered with spectra.register_stat (anywhere: here, a test) is computed by every
    capture, written to dynamics.npz, read back, and recorded in the run's config; it equals the
    same function of the kept states' fp64 singular values."""
    from staterank import spectra

    @spectra.register_stat("sigma2_ratio")  # σ_2 / σ_1: how far from rank one
    def sigma2_ratio(sigma, fro, eps):
        s1 = sigma[..., 0]
        return torch.where(s1 > 0, sigma[..., 1] / torch.where(s1 > 0, s1, 1), 0)

    try:
        save_tiny(tmp_path / "m", "qwen3_next", h_k=1, h_v=4, k=8, v=12)
        loaded = load_model(str(tmp_path / "m"), device="cpu")
        dyn = analyze(loaded, [TEXTS["long"]], keep_states=True, out=tmp_path / "run")
        assert read_json(tmp_path / "run" / "config.json")["config"]["extra_stats"] == ["sigma2_ratio"]
        assert "sigma2_ratio" in read_npz(tmp_path / "run" / "dynamics.npz")
        again = load_dynamics(tmp_path / "run").stats["sigma2_ratio"]
        st = load_file(tmp_path / "run" / "states" / "0000.safetensors")
        for li, layer in enumerate(dyn.layers):
            sig = torch.linalg.svdvals(st[f"layer_{layer}"].double())  # [H, P, N]
            want = (sig[..., 1] / sig[..., 0]).numpy()
            np.testing.assert_allclose(again[0, li], want, rtol=1e-5, atol=1e-7)
    finally:
        spectra.EXTRA_STATS.pop("sigma2_ratio", None)
    assert spectra.stat_names() == spectra.STAT_NAMES
    with pytest.raises(ValueError, match="built-in"):
        spectra.register_stat("threshold_rank")(sigma2_ratio)
