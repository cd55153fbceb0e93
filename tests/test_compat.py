"""transformers compatibility: rule calls bound by the adapter's declared parameters (never by the
signature of the object in the module), the 5.25 speculative intermediate-states path, and a
one-line refusal, before any run folder, when a release calls the rule in a way staterank cannot read."""

import subprocess
import sys

import pytest
import torch

from staterank import compat
from staterank.adapters import get_adapter
from staterank.capture import capture
from staterank.errors import UnsupportedTransformers, UserError
from staterank.hooks import _Bound
from staterank.models import cache_kwarg, output_cache
from staterank.probes.ablate import ablate
from staterank.testing import FAMILIES, tiny_model

needs_recording = pytest.mark.skipif(
    not hasattr(__import__("transformers").DynamicCache, "get_recurrent_states_to_keep"),
    reason="this transformers has no recording of intermediate recurrent states (added in 5.25)")


def _ids(t, seed=0):
    return torch.randint(3, 90, (1, t), generator=torch.Generator().manual_seed(seed))


@needs_recording
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("segment,keep", [(6, 3), (4, 4)])  # (4, 4): the chunked call gets no token at all
def test_capture_is_exact_on_the_intermediate_states_path(family, segment, keep):
    """Speculative decoding's path (transformers 5.25): with past recording on, one layer call is a
    chunked rule call followed by one recurrent call per kept token. The captured states equal the
    cache's own after every one of those tokens, and its state before the segment."""
    model = tiny_model(family)
    ids = _ids(7 + segment)
    with torch.no_grad(), capture(model, keep_states=True) as trace:
        cache = output_cache(model(ids[:, :7], use_cache=True))
        cache.activate_past_recording(recurrent_states_to_keep=keep)
        model(ids[:, 7:], **{cache_kwarg(model): cache}, use_cache=True)
    assert trace.calls == len(trace.layers) * (2 + keep)  # prefill, chunked part, one per kept token
    for lt in trace.layers:
        S = trace.states(lt.layer.index)[0]  # [H, P, K, V], positions 1 .. 7 + segment
        assert S.shape[1] == 7 + segment
        layer = cache.layers[lt.layer.index]
        history = layer.recurrent_states_history[0]  # state before the segment, then all but the last kept
        assert len(history) == keep
        torch.testing.assert_close(S[:, 6], history[0][0], atol=1e-5, rtol=0)
        for j, state in enumerate(history[1:] + [layer.recurrent_states[0]]):
            pos = 7 + segment - keep + j  # 0-based position of the token after which the cache kept it
            torch.testing.assert_close(S[:, pos], state[0], atol=1e-5, rtol=0)


@needs_recording
@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_ablation_is_exact_on_the_intermediate_states_path(family):
    """Zero ablation through the recorded path: the ablated heads' states stay zero in every
    intermediate state the cache keeps, the other heads' do not."""
    model = tiny_model(family)
    layers = get_adapter(model).linear_layers(model)
    target = {layers[0].index: [1]}
    ids = _ids(12, seed=3)
    with torch.no_grad(), ablate(model, target):
        cache = output_cache(model(ids[:, :7], use_cache=True))
        cache.activate_past_recording(recurrent_states_to_keep=3)
        model(ids[:, 7:], **{cache_kwarg(model): cache}, use_cache=True)
    layer = cache.layers[layers[0].index]
    for state in layer.recurrent_states_history[0] + [layer.recurrent_states[0]]:
        assert torch.count_nonzero(state[:, 1]) == 0
        assert torch.count_nonzero(state[:, 0]) > 0


def test_binding_follows_declared_order_not_the_object():
    """Positional and keyword arguments map onto the declared names and are rebuilt in the same
    shape; what cannot be read is one UnsupportedTransformers line naming the version."""
    params = get_adapter("qwen3_next").chunk_params
    q, k, v, g, b, s0 = (torch.randn(1, 2, 1, 4) for _ in range(6))
    b = b[..., 0]
    seen = {}

    def fn(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return "out", "state"

    bound = _Bound("qwen3_next", "rule", params, (q, k, v), {"g": g, "beta": b, "initial_state": s0,
                                                               "use_qk_l2norm_in_kernel": True})
    assert bound.call.q is q and bound.call.beta is b and bound.call.initial_state is s0 and bound.call.use_qk_l2norm
    call = bound.call
    call.beta = torch.zeros_like(b)
    assert bound.run(fn, call) == ("out", "state")
    assert seen["args"][:2] == (q, k) and len(seen["args"]) == 3
    assert seen["kwargs"]["beta"] is call.beta and seen["kwargs"]["initial_state"] is s0
    with pytest.raises(UnsupportedTransformers, match=r"transformers \S+ is not supported.*tested with") as e:
        _Bound("qwen3_next", "rule", params, (q,) * 10, {})
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedTransformers, match="no tensor beta"):
        _Bound("qwen3_next", "rule", params, (q, k, v, g), {"b": b})
    with pytest.raises(UserError, match="packed sequences"):
        _Bound("qwen3_next", "rule", params, (q, k, v), {"g": g, "beta": b, "cu_seqlens": torch.tensor([0, 1, 2])})


@pytest.mark.parametrize("family", FAMILIES)
def test_selftest_passes_on_the_installed_transformers(family):
    compat.selftest.cache_clear()
    compat.selftest(family)


def test_tested_range_comes_from_the_package_metadata():
    from pathlib import Path

    spec = compat.tested_range()
    assert spec and "<" in spec and ">=" in spec  # a tested upper bound, as pyproject declares it
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert all(part in pyproject for part in spec.split(","))


_FUTURE = {  # releases that change the rule call in ways staterank cannot follow
    "renamed": "del m.torch_chunk_gated_delta_rule",
    "new return": "orig = m.torch_chunk_gated_delta_rule\n"
                  "m.torch_chunk_gated_delta_rule = lambda *a, **kw: (*orig(*a, **kw), None)",
}


@pytest.mark.parametrize("change", sorted(_FUTURE))
def test_a_future_rule_call_is_one_line_and_leaves_no_run_folder(change, tmp_path):
    """Refused by the self-test at load: one line naming the installed version and the tested
    range, exit 2, no traceback, no run folder."""
    script = ("import sys, transformers.models.qwen3_next.modeling_qwen3_next as m\n" + _FUTURE[change] +
              "\nfrom staterank.cli import main\nsys.exit(main(sys.argv[1:]))")
    out, text = tmp_path / "run", tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged.")
    r = subprocess.run([sys.executable, "-c", script, "analyze", "--model", "builtin", "--text", str(text),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not supported" in lines[0] and "tested with transformers" in lines[0], r.stderr
    assert not out.exists()


def test_a_packed_batch_is_refused_in_one_line():
    """A packed batch (cu_seq_lens_q, as DataCollatorWithFlattening makes) reaches the rule as
    cu_seqlens from transformers 5.25: the capture replays one sequence per row, so it refuses it in
    one line instead of mixing sequences (transformers' own torch path raises a ValueError there)."""
    model = tiny_model("qwen3_next")
    ids = _ids(8)
    packed = dict(cu_seq_lens_q=torch.tensor([0, 4, 8]), cu_seq_lens_k=torch.tensor([0, 4, 8]),
                  max_length_q=4, max_length_k=4)
    try:
        with torch.no_grad():
            model(ids, **packed)
        pytest.skip("this transformers does not pass cu_seqlens to the delta rule")
    except ValueError as e:
        assert "packed sequences" in str(e)
    with pytest.raises(UserError, match="packed sequences") as e, torch.no_grad(), capture(model):
        model(ids, **packed)
    assert "\n" not in str(e.value)


def test_selftest_runs_on_cpu_while_a_gpu_kernel_is_bound(monkeypatch):
    """On a GPU machine with fla, transformers binds fla's kernel at import (before 5.25 for every
    device): the self-test's tiny CPU model must use the PyTorch reference, and leave the kernel
    bound afterwards for the real model."""
    import types

    from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback

    from staterank import kernel_binding as kb

    def torch_function(fn):
        if isinstance(fn, torch.nn.Module):  # 5.25: a kernels Func module around the wrapper
            fn = kb._closure(type(fn).forward)["func"]
        return kb._closure(fn).get("torch_function", fn)

    def gpu_only(*a, **kw):
        raise RuntimeError("0 active drivers")

    fake = types.ModuleType("fake_gpu_pkg")
    fake.chunk_gated_delta_rule = gpu_only
    monkeypatch.setitem(sys.modules, "fake_gpu_pkg", fake)
    ad = get_adapter("qwen3_next")
    ref = torch_function(getattr(ad.module, ad.chunk_rule))
    bound = use_kernel_func_from_hub_with_fallback("chunk_gated_delta_rule", "fake_gpu_pkg")(ref)
    monkeypatch.setattr(ad.module, ad.chunk_rule, bound)
    compat.selftest.cache_clear()
    try:
        compat.selftest("qwen3_next")
    finally:
        compat.selftest.cache_clear()
    assert getattr(ad.module, ad.chunk_rule) is bound
