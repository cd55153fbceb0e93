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
        # slice out: zero the heads' columns of the output projection
        saved = []
        for l in layers:
            if l.index in target:
                W = _out_proj(l.module, l.layout.h_v, l.layout.v).weight
                saved.append((W, W.clone()))
                for h in target[l.index]:
                    W[:, h * l.layout.v:(h + 1) * l.layout.v] = 0
        sliced = model(ids).logits
        for W, w0 in saved:
            W.copy_(w0)
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
