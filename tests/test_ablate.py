"""Ablation: nothing == baseline bit for bit; a zero-ablated head == the head sliced out; only
downstream outputs change; validation errors are one-line UserErrors."""

import pytest
import torch

from staterank.adapters import get_adapter
from staterank.errors import UserError
from staterank.models import cache_kwarg, output_cache
from staterank.probes.ablate import ablate, calibrate_means
from staterank.testing import FAMILIES, tiny_model

T = 19


def _ids(b=2, t=T, seed=1):
    return torch.randint(3, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def _out_proj(module, h_v, v):
    """The linear layer reading the concatenated head outputs [.., H_v·V] (out_proj / o_proj)."""
    m = getattr(module, "out_proj", None) or module.o_proj
    assert m.in_features == h_v * v
    return m


@pytest.mark.parametrize("family", FAMILIES)
def test_ablate_nothing_is_baseline_bit_for_bit(family):
    model = tiny_model(family)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with ablate(model, {}):
            a = model(ids).logits
        layer = get_adapter(model).linear_layers(model)[0].index
        with ablate(model, {layer: []}, mode="zero"):
            b = model(ids).logits
        after = model(ids).logits
    assert torch.equal(base, a) and torch.equal(base, b) and torch.equal(base, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_ablation_equals_slicing_the_head_out(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    layers = ad.linear_layers(model)
    target = {layers[0].index: [1], layers[-1].index: [0, 2]}
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with ablate(model, target):
            abl = model(ids).logits
        saved = _zero_columns(layers, target)  # slice out: zero the heads' columns of the output projection
        sliced = model(ids).logits
        _restore(saved)
    assert (abl - base).abs().max() > 1e-4  # the ablation did something
    torch.testing.assert_close(abl, sliced, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_only_downstream_outputs_change(family):
    model = tiny_model(family)
    layers = get_adapter(model).linear_layers(model)
    last = layers[-1].index  # model layer 3 of 4
    ids = _ids()
    with torch.no_grad():
        base = model(ids, output_hidden_states=True).hidden_states
        with ablate(model, {last: [1]}):
            abl = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[i] is the input to layer i; layers < last are untouched bit for bit
    for i in range(last + 1):
        assert torch.equal(base[i], abl[i]), i
    assert not torch.equal(base[last + 1], abl[last + 1])


def test_ablated_state_is_zero_in_capture_and_cache_prefill_and_decode():
    pytest.importorskip("staterank.spectra")
    from staterank.capture import capture

    model = tiny_model("qwen3_5")
    layers = get_adapter(model).linear_layers(model)
    li = layers[1].index
    ids = _ids(b=1, t=9)
    with ablate(model, {li: [2]}), capture(model, keep_states=True, stats=False) as trace, torch.no_grad():
        out = model(ids, use_cache=True)
        out2 = model(ids[:, :1], **{cache_kwarg(model): output_cache(out)}, use_cache=True)
    S = trace.states(li)  # [B, H, P, K, V] prefill then decode
    assert S.shape[2] == 10
    assert torch.count_nonzero(S[:, 2]) == 0
    assert torch.count_nonzero(S[:, 1]) > 0
    assert torch.count_nonzero(output_cache(out2).layers[li].recurrent_states[0][:, 2]) == 0


def test_zero_ablation_of_a_nonzero_initial_state():
    """A cache filled before the ablation starts: the head still contributes nothing afterwards."""
    model = tiny_model("qwen3_next")
    ad = get_adapter(model)
    l = ad.linear_layers(model)[0]
    ids = _ids(b=1, t=8)
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        assert torch.count_nonzero(cache.layers[l.index].recurrent_states[0][:, 3]) > 0
        with ablate(model, {l.index: [3]}):
            out = model(ids[:, :3], **{cache_kwarg(model): cache}, use_cache=True)
    assert torch.count_nonzero(output_cache(out).layers[l.index].recurrent_states[0][:, 3]) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_ablation_feeds_the_output_projection_a_constant(family):
    """Mean ablation replaces what the head contributes — its slice of the output projection's
    input, after the per-head norm and output gate — by its calibrated mean: constant over tokens,
    equal to the mean over calibration tokens; the layer's other heads are untouched."""
    model = tiny_model(family)
    ad = get_adapter(model)
    l = ad.linear_layers(model)[-1]
    lo = l.layout
    proj = getattr(l.module, ad.out_proj)
    seen = []
    # a forward (post) hook sees the input the projection actually got, after any pre-hook
    h = proj.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(*a[0].shape[:-1], lo.h_v, lo.v).clone()))
    try:
        calib = [_ids(b=1, t=16, seed=s) for s in range(3)]
        means = calibrate_means(model, calib)
        ref = torch.cat([x[0].double() for x in seen]).mean(0).float()  # [H, V] over all 48 tokens
        assert set(means) == {x.index for x in ad.linear_layers(model)}
        torch.testing.assert_close(means[l.index], ref, atol=1e-6, rtol=1e-5)
        seen.clear()
        ids = _ids()
        with torch.no_grad():
            base = model(ids).logits
            x_base = seen.pop()
            with ablate(model, {l.index: [0]}, mode="mean", means=means):
                m = model(ids).logits
            x_abl = seen.pop()
    finally:
        h.remove()
    assert not torch.equal(base, m)
    torch.testing.assert_close(x_abl[..., 0, :], means[l.index][0].expand_as(x_abl[..., 0, :]), atol=0, rtol=0)
    torch.testing.assert_close(x_abl[..., 1:, :], x_base[..., 1:, :], atol=0, rtol=0)


def test_bad_input_is_a_user_error():
    model = tiny_model("qwen3_next")
    with pytest.raises(UserError, match="not a linear-attention layer"):
        with ablate(model, {2: [0]}):  # layer 2 is full attention
            pass
    with pytest.raises(UserError, match="value heads 0..3"):
        with ablate(model, {0: [4]}):
            pass
    with pytest.raises(UserError, match="mode"):
        with ablate(model, {0: [0]}, mode="half"):
            pass
    with pytest.raises(UserError, match="calibrated means"):
        with ablate(model, {0: [0]}, mode="mean"):
            pass


def _zero_columns(layers, target):
    """Zero the output-projection columns of the target heads; returns the saved weights to restore."""
    saved = []
    for l in layers:
        if l.index in target:
            W = _out_proj(l.module, l.layout.h_v, l.layout.v).weight
            saved.append((W, W.clone()))
            for h in target[l.index]:
                W[:, h * l.layout.v:(h + 1) * l.layout.v] = 0
    return saved


def _restore(saved):
    for W, w0 in saved:
        W.copy_(w0)



@pytest.mark.parametrize("family", FAMILIES)
def test_zero_ablation_through_a_filled_cache_equals_slicing_the_head_out(family):
    """Prefill unablated, then a segment and a decode step through the cache inside ``ablate``:
    zero ablation zeroes the heads' (non-zero) initial state and β, so for the ablated tokens they
    output exactly zero — the same logits as the unablated prefill continued by a model whose
    output projection reads nothing from those heads. Under a capture, the heads' states for the
    ablated tokens are exactly zero (and were not before)."""
    from staterank.capture import capture

    model = tiny_model(family)
    ad = get_adapter(model)
    layers = ad.linear_layers(model)
    target = {layers[0].index: [1], layers[-1].index: [0, 2]}
    ids = _ids(b=2, t=16, seed=3)
    p0, p1 = 9, 15  # prefill 9 tokens, ablated segment of 6, then one ablated decode step
    kw = cache_kwarg(model)

    def run(during):
        """-> (segment logits, decode logits); ``during`` is the context manager around the continuation."""
        cache = output_cache(model(ids[:, :p0], use_cache=True))
        with during():
            seg = model(ids[:, p0:p1], **{kw: cache}, use_cache=True)
            dec = model(ids[:, p1:p1 + 1], **{kw: output_cache(seg)}, use_cache=True)
        return seg.logits, dec.logits

    import contextlib

    with torch.no_grad():
        base = run(contextlib.nullcontext)
        with capture(model, keep_states=True, stats=False) as trace:
            abl = run(lambda: ablate(model, target))

        @contextlib.contextmanager
        def sliced_out():
            saved = _zero_columns(layers, target)
            try:
                yield
            finally:
                _restore(saved)

        ref = run(sliced_out)
    for a, r, b in zip(abl, ref, base):
        assert (a - b).abs().max() > 1e-4  # the ablation did something
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    for li, hs in target.items():
        S = trace.states(li)  # [B, H, P, K, V]: prefill, segment, decode step
        assert S.shape[2] == p1 + 1
        for h in hs:
            assert torch.count_nonzero(S[:, h, p0 - 1]) > 0  # the initial state of the segment was not zero
            assert torch.count_nonzero(S[:, h, p0:]) == 0, (li, h)
        others = [h for h in range(layers[0].layout.h_v) if h not in hs]
        assert torch.count_nonzero(S[:, others, p0:]) > 0


def _ignoring_beta(fn, params):
    """A delta-rule variant that ignores the β it is given (uses β = 1); ``params``: the rule's
    parameter order (the object in the module may be a (*args, **kwargs) hub wrapper)."""
    i = params.index("beta")

    def rule(*args, **kwargs):
        if len(args) > i:
            args = (*args[:i], torch.ones_like(args[i]), *args[i + 1:])
        else:
            kwargs["beta"] = torch.ones_like(kwargs["beta"])
        return fn(*args, **kwargs)

    return rule


@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_zero_ablation_holds_for_a_rule_that_ignores_beta(family, monkeypatch):
    """The documented fallback: if a rule variant ignores β (so the head's state does fill up),
    zero ablation still zeroes the head's output and the state it leaves in the cache."""
    model = tiny_model(family)
    ad = get_adapter(model)
    for name in ad.rule_names:
        monkeypatch.setattr(ad.module, name, _ignoring_beta(getattr(ad.module, name), ad.params_of(name)))
    layers = ad.linear_layers(model)
    target = {layers[0].index: [1], layers[-1].index: [0, 2]}
    ids = _ids(b=1, t=10, seed=4)
    kw = cache_kwarg(model)
    with torch.no_grad():
        base = model(ids).logits
        with ablate(model, target):
            out = model(ids[:, :9], use_cache=True)
            dec = model(ids[:, 9:], **{kw: output_cache(out)}, use_cache=True)
        abl = torch.cat([out.logits, dec.logits], dim=1)
        saved = _zero_columns(layers, target)
        try:
            sliced = model(ids).logits
        finally:
            _restore(saved)
    assert (abl - base).abs().max() > 1e-4
    torch.testing.assert_close(abl, sliced, atol=1e-6, rtol=1e-5)
    for li, hs in target.items():
        st = output_cache(dec).layers[li].recurrent_states[0]
        assert torch.count_nonzero(st[:, hs]) == 0
        assert torch.count_nonzero(st) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_ablation_of_several_heads_feeds_each_its_own_mean(family):
    """Heads [1, 3] of one layer and head 2 of another: each ablated slice of the output
    projection's input is its own head's calibrated mean; the other heads are untouched."""
    model = tiny_model(family)
    ad = get_adapter(model)
    layers = ad.linear_layers(model)
    target = {layers[0].index: [3, 1], layers[-1].index: [2]}
    seen = {l.index: [] for l in layers}
    handles = []
    for l in layers:
        lo = l.layout
        proj = getattr(l.module, ad.out_proj)
        handles.append(proj.register_forward_hook(
            lambda m, a, o, _i=l.index, _lo=lo: seen[_i].append(a[0].reshape(*a[0].shape[:-1], _lo.h_v, _lo.v).clone())))
    try:
        means = calibrate_means(model, [_ids(b=1, t=16, seed=s) for s in range(3)])
        for v in seen.values():
            v.clear()
        ids = _ids()
        with torch.no_grad():
            model(ids)
            x_base = {i: v.pop() for i, v in seen.items()}
            with ablate(model, target, mode="mean", means=means) as norm:
                model(ids)
            x_abl = {i: v.pop() for i, v in seen.items()}
    finally:
        for h in handles:
            h.remove()
    assert norm == {layers[0].index: [1, 3], layers[-1].index: [2]}
    for l in layers:
        hs = target.get(l.index, [])
        m = means[l.index]
        assert not torch.equal(m[0], m[1])  # distinct means, so a mix-up would show
        for h in range(l.layout.h_v):
            if h in hs:
                torch.testing.assert_close(x_abl[l.index][..., h, :], m[h].expand_as(x_abl[l.index][..., h, :]),
                                           atol=0, rtol=0, msg=f"layer {l.index} head {h}")
            elif l.index == layers[0].index:  # upstream of every ablation: untouched bit for bit
                torch.testing.assert_close(x_abl[l.index][..., h, :], x_base[l.index][..., h, :], atol=0, rtol=0)
