"""Physical head surgery and export: identical to the zero-ablated model, reloadable by stock
transformers, state bytes fall by exactly the pruned share; bad plans fail in one line."""

import pytest
import torch

from staterank.adapters import HeadLayout, get_adapter
from staterank.errors import UserError
from staterank.prune.export import export, export_shape, logits, masked, reload, state_bytes
from staterank.prune.plan import Plan, make_plan
from staterank.prune.surgery import prune_heads, regroup
from staterank.testing import FAMILIES, tiny_model


def _tied(family) -> bool:
    """H_k = H_v by construction (Kimi): the adapter reads both counts from one attribute."""
    lo = get_adapter(family).layout_attrs
    return lo[0] == lo[1]


# (family, h_k, h_v), derived from the adapters so a new family is covered without a new row:
# GVA ratios 2 and 4 where H_v may exceed H_k, else H_k = H_v = 4.
CASES = [c for f in FAMILIES for c in ([(f, 4, 4)] if _tied(f) else [(f, 2, 4), (f, 2, 8)])]
LINEAR = (0, 1, 3)  # linear-attention layer indices of testing.tiny_model


def _model(family, h_k, h_v):
    kw = {"h_v": h_v} if _tied(family) else {"h_k": h_k, "h_v": h_v}
    return tiny_model(family, **kw)


def _plan(model, removed):
    return make_plan(model, removed, model_id="tiny", method="manual", params={}, ranking="manual", budget={})


def _ids():
    return torch.randint(3, 97, (2, 19), generator=torch.Generator().manual_seed(1))


def test_regroup_rule():
    lo = HeadLayout(h_k=2, h_v=8, k=4, v=4)  # G = 4: key 0 serves 0-3, key 1 serves 4-7
    assert regroup(lo, []) == (4, [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])])
    assert regroup(lo, [0, 1, 2, 3]) == (4, [(1, [4, 5, 6, 7])])  # a whole key group goes
    assert regroup(lo, [0, 4]) == (3, [(0, [1, 2, 3]), (1, [5, 6, 7])])  # the same count from every group
    assert regroup(lo, [0, 3]) == (2, [(0, [1, 2]), (1, [4, 5]), (1, [6, 7])])  # key head 1 duplicated
    with pytest.raises(UserError):
        regroup(lo, [0, 3], group=4)


@pytest.mark.parametrize("family,h_k,h_v", CASES)
def test_pruning_nothing_is_identity(family, h_k, h_v, tmp_path):
    model = _model(family, h_k, h_v)
    ids = _ids()
    before = logits(model, ids)
    export(model, _plan(model, []), tmp_path / "m")
    torch.testing.assert_close(logits(reload(tmp_path / "m"), ids), before, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_nothing_in_a_checkpoint_dtype_keeps_its_fp32_tensors(family, tmp_path):
    """A bf16 checkpoint analysed in fp32 and exported in bf16 again: the tensors transformers keeps in
    fp32 at bf16 (Kimi's dt_bias and router gate) stay fp32, so prune-0 reloads to what a bf16 load of
    the original gives, exactly."""
    model = _model(family, *((4, 4) if _tied(family) else (2, 4)))
    model.save_pretrained(tmp_path / "fp32")
    reload(tmp_path / "fp32", dtype=torch.bfloat16).save_pretrained(tmp_path / "ckpt")  # as a hub bf16 checkpoint is
    ids = _ids()
    ref = logits(reload(tmp_path / "ckpt", dtype=torch.bfloat16), ids)
    orig = reload(tmp_path / "ckpt", dtype=torch.float32)
    export(orig, _plan(orig, []), tmp_path / "m", dtype=torch.bfloat16)
    back = reload(tmp_path / "m", dtype=torch.bfloat16)
    want = {n: t.dtype for n, t in reload(tmp_path / "ckpt", dtype=torch.bfloat16).state_dict().items()}
    assert {n: t.dtype for n, t in back.state_dict().items()} == want
    torch.testing.assert_close(logits(back, ids), ref, atol=0, rtol=0)


def _whole_groups(h_k, h_v):
    """Remove the value heads of key head 0 in every layer (all of head 0 for Kimi)."""
    G = h_v // h_k
    return [(li, j) for li in LINEAR for j in range(G)]


def _single_heads(h_k, h_v):
    """Remove one value head per layer (a different one in each layer)."""
    return [(li, (i * 3 + 1) % h_v) for i, li in enumerate(LINEAR)]


@pytest.mark.parametrize("family,h_k,h_v", CASES)
@pytest.mark.parametrize("kind", ["whole_groups", "single_heads"])
def test_export_equals_masked_and_state_bytes(family, h_k, h_v, kind, tmp_path):
    model = _model(family, h_k, h_v)
    removed = _whole_groups(h_k, h_v) if kind == "whole_groups" else _single_heads(h_k, h_v)
    plan = _plan(model, removed)
    ids = _ids()
    with masked(model, plan):
        ref = logits(model, ids)
    assert (ref - logits(model, ids)).abs().max() > 1e-4  # the plan does change the model
    sb0 = state_bytes(model, batch=2, context=70)
    info = export(model, plan, tmp_path / "m")
    pruned = reload(tmp_path / "m")  # stock AutoModelForCausalLM
    assert (logits(pruned, ids) - ref).abs().max() <= 1e-4
    sb1 = state_bytes(pruned, batch=2, context=70)
    kept = h_v - len(removed) // len(LINEAR)
    assert sb1["linear_state"] * h_v == sb0["linear_state"] * kept
    assert sb1["attention_kv"] == sb0["attention_kv"]
    # conv state: q and k channels of every (possibly duplicated) key head, v channels of kept heads
    K = model.config.linear_key_head_dim if family != "kimi_linear" else model.config.linear_head_dim
    V = model.config.linear_value_head_dim if family != "kimi_linear" else K
    per_ch = sb0["conv_state"] // (len(LINEAR) * (2 * h_k * K + h_v * V))
    assert sb1["conv_state"] == per_ch * len(LINEAR) * (2 * info["h_k"] * K + kept * V)
    if kind == "whole_groups" or family == "kimi_linear" or h_v // h_k == 1:
        assert info["key_heads_duplicated"] == 0
    assert pruned.config.to_dict()["linear_num_heads" if family == "kimi_linear" else "linear_num_value_heads"] == kept


@pytest.mark.parametrize("family,h_k,h_v", [("qwen3_next", 2, 4), ("qwen3_5", 2, 8), ("kimi_linear", 4, 4),
                                           ("olmo_hybrid", 2, 4)])
def test_uneven_plan_prunes_in_memory_but_refuses_export(family, h_k, h_v, tmp_path):
    model = _model(family, h_k, h_v)
    plan = _plan(model, [(0, 1), (1, 0), (1, 3)])  # layer 3 keeps all heads: counts differ per layer
    ids = _ids()
    with masked(model, plan):
        ref = logits(model, ids)
    with pytest.raises(UserError, match="per_layer") as e:
        export_shape(plan)
    assert "\n" not in str(e.value)
    prune_heads(model, plan.by_layer())
    assert (logits(model, ids) - ref).abs().max() <= 1e-4


def test_bad_plans_are_one_line_errors(tmp_path):
    model = _model("qwen3_next", 2, 4)
    for removed in ([(0, 4)], [(2, 0)], [(0, 1), (0, 1)], [(0, j) for j in range(4)]):
        with pytest.raises(UserError) as e:
            _plan(model, removed)
        assert "\n" not in str(e.value)
    plan = _plan(model, [(0, 1)])
    plan.save(tmp_path / "plan.json")
    other = _model("qwen3_next", 2, 8)
    with pytest.raises(UserError, match="another model"):
        Plan.load(tmp_path / "plan.json").check_model(other)
    with pytest.raises(UserError, match="another model"):
        export(other, Plan.load(tmp_path / "plan.json"), tmp_path / "m")
    assert Plan.load(tmp_path / "plan.json").removed == [(0, 1)]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a staterank prune plan"):
        Plan.load(tmp_path / "bad.json")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family,h_k,h_v", CASES)
def test_surgery_functions_with_nothing_removed_are_identity(family, h_k, h_v):
    """Each family's slicing function, called directly (prune_heads skips a layer with nothing to
    remove), with every head kept: every tensor, layout and logit stays bit-identical."""
    from staterank.prune.surgery import SURGERY

    assert set(FAMILIES) == {c[0] for c in CASES} == set(SURGERY)
    model = _model(family, h_k, h_v)
    ids = _ids()
    with torch.no_grad():
        before = logits(model, ids)
    params = _state(model)
    adapter = get_adapter(model)
    layers = adapter.linear_layers(model)
    assert [l.index for l in layers] == list(LINEAR)
    for layer in layers:
        gp, keys = regroup(layer.layout, [])
        assert gp == layer.layout.group
        SURGERY[family](layer.module, layer.layout, keys)
        assert adapter.layout_of(layer.module) == layer.layout
    after = _state(model)
    assert after.keys() == params.keys()
    for name, val in params.items():
        assert after[name].shape == val.shape and torch.equal(after[name], val), name
    with torch.no_grad():
        torch.testing.assert_close(logits(model, ids), before, atol=0, rtol=0)


@pytest.mark.parametrize("family,h_k,h_v,gp", [(*c, gp) for c in CASES for gp in (1, 2) if gp < c[2] // c[1]])
def test_regrouping_with_nothing_removed_keeps_the_model(family, h_k, h_v, gp):
    """prune_heads with nothing removed but a smaller GVA ratio G' does reach the surgery: key heads
    are duplicated so that each serves G' value heads, which computes the same q, k and outputs."""
    model = _model(family, h_k, h_v)
    ids = _ids()
    with torch.no_grad():
        before = logits(model, ids)
        layouts = prune_heads(model, {}, group=gp)
        assert sorted(layouts) == list(LINEAR)
        for lo in layouts.values():
            assert (lo.h_v, lo.group, lo.h_k) == (h_v, gp, h_v // gp)
        # other matrix shapes, other fp32 summation orders: ~1e-7 here
        torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_implied_layout_says_what_each_plan_exports_and_engines_serve():
    """prune.json's ``layout``, checked against what the surgery really builds (issue #21)."""
    from staterank.prune.export import implied_layout

    model = _model("qwen3_next", 2, 4)  # G = 2: value heads {0, 1} read key head 0, {2, 3} key head 1
    whole = implied_layout(_plan(model, [(li, h) for li in LINEAR for h in (0, 1)]))
    assert whole["key_heads"] == [6, 3] and whole["value_heads"] == [12, 6] and whole["key_heads_duplicated"] == 0
    assert whole["exportable"] and whole["engine_compatible"] and whole["why"] is None
    split = implied_layout(_plan(model, [(li, 0) for li in LINEAR]))  # groups keep 1 and 2: G' = 1
    assert split["group"] == 1 and split["key_heads"] == [6, 9] and split["key_heads_duplicated"] == 3
    assert split["engine_compatible"]  # regular, at the price of duplicated key heads
    uneven = implied_layout(_plan(model, [(0, 1), (1, 0), (1, 3)]))
    assert not uneven["exportable"] and not uneven["engine_compatible"] and "value heads per layer" in uneven["why"]
    for removed, lay in (([(li, h) for li in LINEAR for h in (0, 1)], whole), ([(li, 0) for li in LINEAR], split)):
        m = _model("qwen3_next", 2, 4)
        built = prune_heads(m, _plan(m, removed).by_layer(), group=lay["group"])
        assert [(lo.h_k, lo.h_v) for lo in built.values()] == [(p["h_k"], p["h_v"]) for p in lay["per_layer"]]
