"""Captured states are the model's own: checked against its cache, prefill vs decode, GVA."""

import numpy as np
import pytest
import torch

from staterank.adapters import get_adapter
from staterank.capture import Schedule, capture
from staterank.errors import UserError
from staterank.hooks import intercept
from staterank.models import cache_kwarg, output_cache
from staterank.recurrence import RuleCall, replay
from staterank.testing import FAMILIES, tiny_model

T = 21  # not a multiple of the 64-token prefill chunk: exercises the padding path


def _cache_state(cache, idx):
    return cache.layers[idx].recurrent_states[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_last_state_equals_cache_prefill(family):
    model = tiny_model(family)
    ids = torch.randint(3, 97, (2, T))
    with capture(model, keep_states=True, stats=False) as trace:
        out = model(ids, use_cache=True)
    cache = output_cache(out)
    assert trace.calls == len(trace.layers)
    for lt in trace.layers:
        S = trace.states(lt.layer.index)  # [B, H, P, K, V]
        assert S.shape[:3] == (2, lt.layer.layout.h_v, T)
        torch.testing.assert_close(S[:, :, -1], _cache_state(cache, lt.layer.index), atol=1e-5, rtol=0)
    assert trace.max_output_err < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_states_equal_decode_states(family):
    """States from one chunked prefill == states the cache holds after each decoded token."""
    model = tiny_model(family)
    ids = torch.randint(3, 97, (1, 12))
    with capture(model, keep_states=True, stats=False) as trace:
        model(ids, use_cache=False)
    prefill = {lt.layer.index: trace.states(lt.layer.index) for lt in trace.layers}
    cache = None
    per_token = {i: [] for i in prefill}
    with capture(model, keep_states=True, stats=False) as dtrace:
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], **{cache_kwarg(model): cache}, use_cache=True)
            cache = output_cache(out)
            for i in per_token:
                per_token[i].append(_cache_state(cache, i).clone())
    for i, S in prefill.items():
        dec = torch.stack(per_token[i], dim=2)
        torch.testing.assert_close(S, dec, atol=1e-5, rtol=1e-4)
        # the decode capture replays the cache's own recurrence (same op order; Kimi's differs in
        # memory layout only, which moves the last bit)
        torch.testing.assert_close(dtrace.states(i), dec, atol=1e-8, rtol=1e-5)
    assert [int(p) for p in dtrace.positions()] == list(range(1, 13))


def test_generate_is_captured():
    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (1, 7))
    with capture(model, stats=False, keep_states=True) as trace:
        gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    # prefill of 7 plus 4 decode steps (the 5th token is sampled after the last forward)
    n = gen.shape[1] - 1
    assert [int(p) for p in trace.positions()] == list(range(1, n + 1))


def test_gva_mapping_matches_model():
    """Value head j reads key head j // (H_v/H_k): a replay that maps heads otherwise disagrees."""
    model = tiny_model("qwen3_next", h_k=2, h_v=8)
    layout = get_adapter(model).linear_layers(model)[0].layout
    assert layout.group == 4 and [layout.key_head(j) for j in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    calls = []

    class Grab:
        def observe(self, layer, call, out, state):
            calls.append((call, out))

    with intercept(model, get_adapter(model), Grab()):
        model(torch.randint(3, 97, (1, 9)))
    call, out = calls[0]
    rep, _ = replay(call)
    torch.testing.assert_close(rep, out.float(), atol=1e-5, rtol=1e-4)
    swapped = RuleCall(call.q.flip(2), call.k.flip(2), call.v, call.g, call.beta, None, call.use_qk_l2norm)
    rep2, _ = replay(swapped)
    assert (rep2 - out.float()).abs().max() > 1e-3


def test_hooks_removed_after_exception():
    model = tiny_model("qwen3_5")
    ad = get_adapter(model)
    orig = getattr(ad.module, ad.chunk_rule)
    with pytest.raises(RuntimeError):
        with capture(model):
            raise RuntimeError("boom")
    assert getattr(ad.module, ad.chunk_rule) is orig
    for l in ad.linear_layers(model):
        assert not l.module._forward_pre_hooks and not l.module._forward_hooks


def test_schedule_stride_and_log():
    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (1, 40))
    with capture(model, schedule=Schedule(stride=8), stats=False, keep_states=True) as tr:
        model(ids)
    assert [int(p) for p in tr.positions()] == [8, 16, 24, 32, 40]
    with capture(model, schedule=Schedule(log=True), stats=False, keep_states=True) as tr:
        model(ids)
    assert [int(p) for p in tr.positions()] == [1, 2, 4, 8, 16, 32]


def test_keep_states_memory_limit():
    model = tiny_model("qwen3_next")
    with pytest.raises(UserError, match="memory limit"):
        with capture(model, stats=False, keep_states=True, max_state_bytes=1000):
            model(torch.randint(3, 97, (1, 30)))


def test_unsupported_model_one_line_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(UserError, match="supported: kimi_linear, olmo_hybrid, qwen3_5"):
        get_adapter(m)


def _buggy_prepare(bug, real):
    """recurrence.prepare with one plausible replay bug."""
    import dataclasses

    def prepare(call):
        if bug == "gva_tiled":  # value head j reads key head j % H_k instead of j // G
            rep = call.v.shape[2] // call.k.shape[2]
            call = dataclasses.replace(call, q=call.q.repeat(1, 1, rep, 1), k=call.k.repeat(1, 1, rep, 1))
        elif bug == "no_decay":
            call = dataclasses.replace(call, g=torch.zeros_like(call.g))
        elif bug == "no_l2norm":
            call = dataclasses.replace(call, use_qk_l2norm=not call.use_qk_l2norm)
        return real(call)
    return prepare


@pytest.mark.parametrize("family,bug", [("olmo_hybrid", "gva_tiled"), ("qwen3_next", "no_decay"),
                                        ("kimi_linear", "no_decay"), ("qwen3_5", "no_l2norm")])
def test_verification_catches_a_wrong_replay(family, bug, monkeypatch):
    # the self-check every capture runs must be able to fail: each bug here gives plausible-looking ranks
    from staterank import recurrence
    from staterank.capture import CaptureMismatch

    kw = {"h_k": 2, "h_v": 4} if family == "olmo_hybrid" else {}
    model = tiny_model(family, **kw)
    ids = torch.randint(3, 97, (2, T))
    real, heads = recurrence.prepare, []
    monkeypatch.setattr(recurrence, "prepare", lambda call: heads.append((call.k.shape[2], call.v.shape[2])) or real(call))
    with capture(model, keep_states=False, stats=False):
        model(ids)  # the unpatched replay passes
    if bug == "gva_tiled" and all(hk == hv for hk, hv in heads):
        pytest.skip("this transformers expands key heads before the rule call (5.20-5.24): no GVA map to get wrong")
    monkeypatch.setattr(recurrence, "prepare", _buggy_prepare(bug, real))
    with pytest.raises(CaptureMismatch, match="differs? from the model's"):
        with capture(model, keep_states=False, stats=False):
            model(ids)


def _check_noisy_states(monkeypatch, model, scale: float, fails: bool) -> None:
    """Capture ``model`` with the replay's final states moved by ``scale`` of each head's magnitude:
    refused ("state differs") when ``fails``, else accepted with a nonzero recorded error."""
    from staterank import capture as cap

    real = cap.replay

    def noisy(call, **kw):
        out, state = real(call, **kw)
        g = torch.Generator().manual_seed(0)
        mag = state.abs().amax(dim=(-2, -1), keepdim=True)
        return out, state + scale * mag * (2 * torch.rand(state.shape, generator=g) - 1)

    monkeypatch.setattr(cap, "replay", noisy)
    ids = torch.randint(3, 97, (1, T))
    if fails:
        with pytest.raises(cap.CaptureMismatch, match="state differs"):
            with capture(model, stats=False):
                model(ids, use_cache=True)
    else:
        with capture(model, stats=False) as trace:
            model(ids, use_cache=True)
        assert trace.max_state_err > 0


@pytest.mark.parametrize("scale,fails", [(1e-5, False), (0.3, True)])
def test_verification_bound_is_relative_to_each_heads_magnitude(scale, fails, monkeypatch):
    # round-off-sized differences pass however small an entry is; a head off by a fraction of its size fails
    _check_noisy_states(monkeypatch, tiny_model("qwen3_next"), scale, fails)


@pytest.mark.parametrize("dtype,scale,fails", [(torch.float32, 0.03, True), (torch.bfloat16, 0.03, False),
                                               (torch.bfloat16, 0.3, True)])
def test_state_bound_of_16_bit_inputs_allows_kernel_rounding_not_bugs(dtype, scale, fails, monkeypatch):
    """fla keeps chunk states in a 16-bit input dtype: 1.17 % off on an H200 (bf16), which 1 % refused.
    16-bit inputs get 5 %; fp32 keeps its tight bound, and a head off by 30 % fails either way."""
    _check_noisy_states(monkeypatch, tiny_model("qwen3_next").to(dtype), scale, fails)


def test_columns_store_equals_concatenation():
    from staterank.capture import _Columns

    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(2, 3, n, generator=g, dtype=torch.float64) for n in (64, 64, 200, 1, 300, 64)]
    col = _Columns()
    assert not col
    for c in chunks:
        col.append(c)
    assert torch.equal(col.value(), torch.cat(chunks, dim=-1)) and col.buf.shape[-1] < 2 * col.n + 256
    with pytest.raises(ValueError, match="after chunks"):
        col.append(torch.zeros(2, 4, 1000, dtype=torch.float64))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_is_refused(side):
    """Pad tokens would run through the recurrence and shift or extend every position's statistics."""
    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0 if side == "left" else 1
    mask[1, 6:] = 0 if side == "right" else 1
    with pytest.raises(UserError, match="padded batch"):
        with capture(model, stats=False):
            model(ids, attention_mask=mask)
    with capture(model, stats=False) as trace:  # an all-ones mask is no padding
        model(ids, attention_mask=torch.ones_like(mask))
    assert len(trace.positions()) == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_fed_token_by_token_is_refused(family):
    """transformers hands a one-token forward's linear layers no mask: the model-level mask decides."""
    model = tiny_model(family)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad(), pytest.raises(UserError, match="padded batch"), capture(model, stats=False):
        cache = output_cache(model(ids[:, :8], attention_mask=mask[:, :8], use_cache=True))
        for t in range(8, 12):
            cache = output_cache(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1],
                                       **{cache_kwarg(model): cache}, use_cache=True))
    assert not model._forward_pre_hooks  # removed on the way out


def test_second_fresh_sequence_and_foreign_cache_are_refused():
    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (2, 8))
    with pytest.raises(UserError, match="second sequence"):
        with capture(model, stats=False):
            model(ids)
            model(ids[:1, :5])
    with pytest.raises(UserError, match="not the one this capture saw"):
        with capture(model, stats=False):
            cache = output_cache(model(ids, use_cache=True))
            for layer in cache.layers:  # what beam search does between steps: rows reordered
                if getattr(layer, "recurrent_states", None) is not None:
                    layer.recurrent_states[0] = layer.recurrent_states[0].flip(0)
            model(ids[:, :1], **{cache_kwarg(model): cache}, use_cache=True)


def test_interception_of_a_missing_rule_leaves_the_model_untouched(monkeypatch):
    model = tiny_model("qwen3_5")
    ad = get_adapter(model)
    orig = getattr(ad.module, ad.chunk_rule)
    monkeypatch.setattr(type(ad), "rule_names", property(lambda self: (self.chunk_rule, "no_such_rule")))
    with pytest.raises(UserError, match="no_such_rule"):
        with capture(model):
            pass
    assert getattr(ad.module, ad.chunk_rule) is orig
    for l in ad.linear_layers(model):
        assert not l.module._forward_pre_hooks and not l.module._forward_hooks


def test_ablation_starting_mid_sequence_is_not_a_foreign_cache():
    """Zero ablation zeroes heads of the initial state it is handed: the capture checks the cache
    before that, so ablating from the second segment on is accepted."""
    from staterank.probes.ablate import ablate

    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (1, 9))
    l = get_adapter(model).linear_layers(model)[0]
    with capture(model, stats=False) as trace:
        cache = output_cache(model(ids[:, :8], use_cache=True))
        with ablate(model, {l.index: [0, 1]}):
            model(ids[:, 8:], **{cache_kwarg(model): cache}, use_cache=True)
    assert [int(p) for p in trace.positions()] == list(range(1, 10))


@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_log_decay_is_the_mean_g_over_every_segment(family):
    """dynamics()["log_decay"] [B, L, H] = Σ over all tokens of all segments of the log decay g the
    rule calls received (per-channel decay: mean over K first) / the token count — a prefill, a
    segment through the cache, then decode steps."""
    model = tiny_model(family)
    ad = get_adapter(model)
    grabbed = {}

    class Grab:
        def observe(self, layer, call, out, state):
            grabbed.setdefault(layer.index, []).append(call.g.detach().to(torch.float64).clone())

    ids = torch.randint(3, 97, (2, 14), generator=torch.Generator().manual_seed(5))
    bounds = [(0, 6), (6, 11), (11, 12), (12, 13), (13, 14)]
    kw = cache_kwarg(model)
    with torch.no_grad(), intercept(model, ad, Grab()), capture(model, stats=True) as trace:
        cache = None
        for a, b in bounds:
            cache = output_cache(model(ids[:, a:b], **({kw: cache} if cache is not None else {}), use_cache=True))
    dyn = trace.dynamics()
    assert dyn["log_decay"].shape == (2, len(trace.layers), 4)
    for li, layer in enumerate(dyn["layers"]):
        gs = grabbed[int(layer)]
        assert [g.shape[1] for g in gs] == [b - a for a, b in bounds]
        g = torch.cat(gs, dim=1)  # [B, T, H] or [B, T, H, K]
        assert g.dim() == (4 if ad.decay == "channel" else 3)
        if g.dim() == 4:
            assert not torch.equal(g.amax(-1), g.amin(-1))  # channels differ: the mean over K matters
            g = g.mean(-1)
        ref = (g.sum(dim=1) / g.shape[1]).numpy()  # [B, H]
        np.testing.assert_allclose(dyn["log_decay"][:, li], ref, rtol=1e-12, atol=0)
        assert (ref < 0).all()


@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_threshold_ranks_use_the_capture_eps(family):
    """capture(eps=1e-2): threshold ranks are #{σ > 1e-2·σ_1} by fp64 svdvals of the captured
    states, which differ from the default ε = 1e-4 ranks here."""
    model = tiny_model(family)
    ids = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(6))
    eps = 1e-2
    with torch.no_grad(), capture(model, eps=eps, keep_states=True) as trace:
        out = model(ids[:, :13], use_cache=True)
        model(ids[:, 13:], **{cache_kwarg(model): output_cache(out)}, use_cache=True)
    dyn = trace.dynamics()
    rank = dyn["threshold_rank"]  # [B, L, H, P]
    assert rank.shape[-1] == 20
    differs = False
    for li, layer in enumerate(dyn["layers"]):
        sig = torch.linalg.svdvals(trace.states(int(layer)).double())  # [B, H, P, min(K, V)]
        ref = (sig > eps * sig[..., :1]).sum(-1).numpy()
        np.testing.assert_array_equal(rank[:, li], ref, err_msg=f"layer {layer}")
        differs |= bool(((sig > 1e-4 * sig[..., :1]).sum(-1).numpy() != ref).any())
    assert differs  # the test tells the two eps apart


@pytest.mark.parametrize("family", FAMILIES)
def test_a_capture_started_mid_sequence_is_refused(family):
    """Prefill outside the capture, decode inside: positions would restart at 1 and the bound
    min(t, K, V) would sit below the ranks; refused in one line."""
    model = tiny_model(family)
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = output_cache(model(ids[:, :16], use_cache=True))
        with pytest.raises(UserError, match="started mid-sequence"), capture(model):
            model(ids[:, 16:17], **{cache_kwarg(model): cache}, use_cache=True)


def test_bad_capture_arguments_and_no_stats_are_one_line_errors():
    model = tiny_model("qwen3_next")
    for kw in ({"chunk": 0}, {"chunk": -1}, {"chunk": 2.5}, {"eps": -1.0}):
        with pytest.raises(UserError) as e, capture(model, **kw):
            pass
        assert "\n" not in str(e.value)
    with torch.no_grad(), capture(model, stats=False) as trace:
        model(torch.randint(3, 97, (1, 5)))
    with pytest.raises(UserError, match="no statistics"):
        trace.dynamics()
