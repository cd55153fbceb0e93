"""State storage at reduced precision: fp32 is the model bit for bit; the int8 round trip matches an
independent computation; stored states are rounded at every chunk boundary of the prefill and after
every decode step (checked against a pure-PyTorch reference recurrence with explicit rounding)."""

import numpy as np
import pytest
import torch

from staterank.adapters import get_adapter
from staterank.compress.quant import PRECISIONS, head_bytes, roundtrip
from staterank.compress.store import cuts, store_states
from staterank.errors import UserError
from staterank.hooks import intercept
from staterank.models import cache_kwarg, output_cache
from staterank.recurrence import RuleCall, replay
from staterank.testing import FAMILIES, tiny_model


def _ids(b=2, t=150, seed=1):
    return torch.randint(3, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def _states(out, layers):
    return {l.index: output_cache(out).layers[l.index].recurrent_states[0].clone() for l in layers}


def _prefill_decode(model, ids, steps):
    """Prefill ids[:, :-steps], then decode the last ``steps`` tokens one at a time through the cache.
    Returns (logits [B, T, vocab], cache after the prefill, cache after each decode step)."""
    kw = cache_kwarg(model)
    P = ids.shape[1] - steps
    out = model(ids[:, :P], use_cache=True)
    logits, caches = [out.logits], [output_cache(out)]
    for i in range(P, ids.shape[1]):
        out = model(ids[:, i:i + 1], **{kw: output_cache(out)}, use_cache=True)
        logits.append(out.logits)
        caches.append(output_cache(out))
    return torch.cat(logits, 1), out


@pytest.mark.parametrize("chunk", [64, 16])
def test_fp32_storage_is_bit_identical_to_no_compression(chunk):
    model = tiny_model("qwen3_next")
    layers = get_adapter(model).linear_layers(model)
    plan = {(l.index, h): "fp32" for l in layers for h in range(l.layout.h_v)}
    ids = _ids()
    with torch.no_grad():
        base_logits, base_out = _prefill_decode(model, ids, 3)
        with store_states(model, plan, chunk=chunk) as st:
            logits, out = _prefill_decode(model, ids, 3)
    # the prefill really was split (147 tokens: 2 cuts at 64, 9 at 16) and every decode step stored
    n_cuts = len(cuts(147, chunk))
    assert st.stores == len(layers) * (n_cuts + 1 + 3)
    # chunks that are multiples of the kernel's own 64-token chunk reproduce it bit for bit; other
    # splits change the fp32 reduction order only (round-off), which the test bounds
    tol = {"atol": 0, "rtol": 0} if chunk % 64 == 0 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(logits, base_logits, **tol)
    for li, s in _states(out, layers).items():
        torch.testing.assert_close(s, _states(base_out, layers)[li], **tol)


def _int8_head_numpy(S: np.ndarray) -> np.ndarray:
    """Independent int8 per-head absmax round trip of S [..., K, V] (float64 arithmetic, numpy)."""
    amax = np.abs(S).max(axis=(-2, -1), keepdims=True)
    scale = np.where(amax > 0, amax.astype(np.float32) / np.float32(127), 1).astype(np.float32)
    q = np.clip(np.round(S / scale), -127, 127)
    return (q * scale).astype(np.float32)


def test_int8_roundtrip_per_head_matches_numpy_and_the_recorded_error():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(3, 4, 8, 12, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 0.0])[None, :, None, None]
    r = roundtrip(S, "int8_head")
    ref = _int8_head_numpy(S.numpy())
    np.testing.assert_allclose(r.numpy(), ref, rtol=0, atol=1e-6 * np.abs(S.numpy()).max())
    assert torch.count_nonzero(r[:, 3]) == 0  # an all-zero head stays zero
    # per row: K scales, each row's max element is exact
    rr = roundtrip(S, "int8_row")
    torch.testing.assert_close(rr.abs().amax(-1), S.abs().amax(-1))
    # the handler's recorded per-head error of the one state stored (T <= chunk: no split) equals numpy's
    model = tiny_model("qwen3_next")
    layers = get_adapter(model).linear_layers(model)
    plan = {(l.index, h): "int8_head" for l in layers for h in range(l.layout.h_v)}
    ids = _ids(t=40)
    with torch.no_grad():
        base = _states(model(ids, use_cache=True), layers)
        with store_states(model, plan, chunk=64, record=True) as st:
            stored = _states(model(ids, use_cache=True), layers)
    for l in layers:
        S0 = base[l.index].numpy()
        Q = _int8_head_numpy(S0)
        np.testing.assert_allclose(stored[l.index].numpy(), Q, rtol=0, atol=1e-6 * np.abs(S0).max())
        for h in range(l.layout.h_v):
            err, norm, n = st.errors[(l.index, h)]
            want = ((Q[:, h].astype(np.float64) - S0[:, h]) ** 2).sum()
            assert n == ids.shape[0]
            assert err == pytest.approx(want, rel=1e-4) and err > 0
            assert norm == pytest.approx((S0[:, h].astype(np.float64) ** 2).sum(), rel=1e-6)


def _int8_row_ref(S: torch.Tensor) -> torch.Tensor:
    """Explicit per-row int8 rounding for the reference recurrence, written out independently."""
    amax = S.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return (S / scale).round().clamp(-127, 127) * scale


class _Recorder:
    """Records each rule call as the layer made it (before any handler changes it)."""

    def __init__(self):
        self.calls = []

    def arrive(self, layer, call):
        self.calls.append((layer.index, RuleCall(**{k: (v.clone() if torch.is_tensor(v) else v)
                                                    for k, v in vars(call).items()})))


def test_states_are_rounded_at_every_chunk_boundary_and_decode_step():
    model = tiny_model("qwen3_next")
    ad = get_adapter(model)
    layers = ad.linear_layers(model)
    li = layers[0].index
    hs = [0, 2]
    plan = {(li, h): "int8_row" for h in hs}
    ids = _ids(b=2, t=23, seed=5)
    chunk, steps = 8, 3
    rec = _Recorder()
    with torch.no_grad():
        _, base_out = _prefill_decode(model, ids, steps)
        with intercept(model, ad, rec), store_states(model, plan, chunk=chunk):
            _, out = _prefill_decode(model, ids, steps)
    mine = [c for i, c in rec.calls if i == li]
    assert [c.num_tokens for c in mine] == [20, 1, 1, 1]

    def ref(call, s0, bounds):
        """Pure-PyTorch replay, the heads in ``hs`` rounded at every bound (the last = the stored state)."""
        s = s0
        for a, b in zip([0, *bounds[:-1]], bounds):
            sub = RuleCall(q=call.q[:, a:b], k=call.k[:, a:b], v=call.v[:, a:b], g=call.g[:, a:b],
                           beta=call.beta[:, a:b], initial_state=s, use_qk_l2norm=call.use_qk_l2norm)
            _, s = replay(sub)
            s = s.clone()
            s[:, hs] = _int8_row_ref(s[:, hs])
        return s

    # prefill: 20 tokens in chunks of 8 -> stored (rounded) at 8, 16 and 20
    s = ref(mine[0], None, [8, 16, 20])
    unrounded_inside = ref(mine[0], None, [20])  # rounding only the final state: must not match
    # each decode step reads exactly the state stored by the step before, and stores it rounded
    for c in mine[1:]:
        torch.testing.assert_close(c.initial_state, s, atol=2e-6, rtol=1e-5)
        assert torch.equal(_int8_row_ref(c.initial_state[:, hs]), c.initial_state[:, hs])  # on the int8 grid
        s = ref(c, c.initial_state, [1])
    final = output_cache(out).layers[li].recurrent_states[0]
    torch.testing.assert_close(final, s, atol=2e-6, rtol=1e-5)
    # the boundary rounding is what makes the match: rounding only the stored prefill state is 10x further off
    stored = mine[1].initial_state[:, hs]
    good = (stored - ref(mine[0], None, [8, 16, 20])[:, hs]).abs().max()
    assert (stored - unrounded_inside[:, hs]).abs().max() > 10 * good
    # heads not in the plan are not rounded (off the grid); the rounded heads differ from the model's own
    assert not torch.equal(_int8_row_ref(final[:, 1]), final[:, 1])
    assert (final[:, hs] - output_cache(base_out).layers[li].recurrent_states[0][:, hs]).abs().max() > 0


def test_head_bytes_and_bad_plans():
    assert head_bytes("fp32", 32, 32) == 4096 and head_bytes("bf16", 32, 32) == 2048
    assert head_bytes("int8_head", 32, 32) == 1028 and head_bytes("int8_row", 32, 32) == 1024 + 32 * 4
    assert head_bytes("fp8_e4m3_row", 32, 32) == 1152 and head_bytes("drop", 32, 32) == 0
    S = torch.randn(2, 3, 8, 12)
    for p in PRECISIONS:
        r = roundtrip(S, p)
        assert r.shape == S.shape and r.dtype == S.dtype
        if p not in ("fp32", "drop"):
            assert 0 < (r - S).abs().max() < 0.2 * S.abs().max()
    model = tiny_model("qwen3_next")
    li = get_adapter(model).linear_layers(model)[0].index
    with pytest.raises(UserError, match="unknown precision"):
        with store_states(model, {(li, 0): "int4"}):
            pass
    with pytest.raises(UserError, match="value heads"):
        with store_states(model, {(li, 9): "bf16"}):
            pass
    with pytest.raises(UserError, match="not a linear-attention layer"):
        with store_states(model, {(2, 0): "bf16"}):
            pass


def test_drop_is_probe_ablation_bit_for_bit_and_plans_share_a_batch():
    from staterank.probes.ablate import ablate

    model = tiny_model("qwen3_next")
    layers = get_adapter(model).linear_layers(model)
    a, b = layers[0].index, layers[-1].index
    ids = _ids(b=2, t=70)
    drop = {(a, 1): "drop", (b, 0): "drop", (b, 3): "drop"}
    with torch.no_grad():
        with ablate(model, {a: [1], b: [0, 3]}):
            want = model(ids, use_cache=True)
        with store_states(model, drop, chunk=64):
            got = model(ids, use_cache=True)
        assert torch.equal(got.logits, want.logits)
        for l in layers:
            assert torch.equal(_states(got, layers)[l.index], _states(want, layers)[l.index])
        # R plans in one forward (R copies of the batch) = each plan alone
        plans = [{}, drop, {(a, 2): "int8_row", (b, 1): "fp8_e4m3_head"}]
        with store_states(model, plans, chunk=16):
            joint = model(ids.repeat(3, 1), use_cache=True).logits
        for r, p in enumerate(plans):
            with store_states(model, p, chunk=16):
                alone = model(ids, use_cache=True).logits
            torch.testing.assert_close(joint[2 * r:2 * r + 2], alone, atol=1e-5, rtol=1e-5)


def test_teacher_forced_nll_is_prefill_plus_decode_under_the_same_storage():
    """answer_nll's one forward (chunks over the prompt, then one stored step per answer token)
    equals a real chunked prefill followed by cached decode steps with the plan's storage."""
    from staterank.compress.measure import answer_nll
    from staterank.tasks import Item

    model = tiny_model("qwen3_next", vocab=262)
    from staterank.testing import byte_tokenizer

    tok = byte_tokenizer()
    layers = get_adapter(model).linear_layers(model)
    plan = {(layers[0].index, h): "int8_head" for h in range(4)} | {(layers[1].index, 2): "drop"}
    items = [Item(id=str(i), prompt="x" * 37 + str(i), answer=str(1000 + 37 * i)) for i in range(3)]
    nll, err = answer_nll(model, tok, items, [plan, {}], chunk=16)
    assert err[(layers[0].index, 0)] > 0
    kw = cache_kwarg(model)
    for j, it in enumerate(items):
        p = tok(it.prompt)["input_ids"]
        full = tok(it.prompt + it.answer)["input_ids"]
        with torch.no_grad(), store_states(model, plan, chunk=16):
            out = model(torch.tensor([p]), use_cache=True)
            lps = [torch.log_softmax(out.logits[0, -1].float(), -1)[full[len(p)]]]
            for i in range(len(p), len(full) - 1):
                out = model(torch.tensor([[full[i]]]), **{kw: output_cache(out)}, use_cache=True)
                lps.append(torch.log_softmax(out.logits[0, -1].float(), -1)[full[i + 1]])
        assert nll[0, j] == pytest.approx(-float(sum(lps)), abs=1e-4)
        assert nll[0, j] != pytest.approx(nll[1, j], abs=1e-6)  # the plan changed something


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_stores_through_the_split(family):
    """fp32 storage matches the model (bit for bit where the family's chunk rule is 64-token chunked,
    else to round-off), and int8 storage leaves every stored state of the planned heads on its grid."""
    model = tiny_model(family)
    layers = get_adapter(model).linear_layers(model)
    ids = _ids(b=1, t=140)
    li = layers[0].index
    with torch.no_grad():
        base_logits, _ = _prefill_decode(model, ids, 2)
        with store_states(model, {(l.index, h): "fp32" for l in layers for h in range(l.layout.h_v)}):
            logits, _ = _prefill_decode(model, ids, 2)
        with store_states(model, {(li, 0): "int8_row"}) as st:
            _, out = _prefill_decode(model, ids, 2)
    torch.testing.assert_close(logits, base_logits, atol=1e-5, rtol=1e-5)
    S = output_cache(out).layers[li].recurrent_states[0][:, 0]
    assert st.stores == 2 + 1 + 2  # cuts at 64 and 128 of the 138-token prefill, its end, two decode steps
    assert torch.equal(_int8_row_ref(S), S) and S.abs().max() > 0
