"""The adapter contract: a family is one module in staterank/adapters plus one registry line.

Every registered family's module declares everything the rest of staterank reads per family (the
rule functions and layer class, head layout, pruning's ``slice_heads``, export's ``config_keys``,
the tests' ``tiny_config``), and the adapters stay a leaf package (they import nothing of
staterank but themselves and ``errors``). Pruning and export exactness is tested per family in
test_surgery.py and test_prune_run.py.
"""

import ast
import importlib
from pathlib import Path

import pytest
import torch

import staterank.adapters as adapters
from staterank.adapters import Adapter, families, get_adapter, supported_types
from staterank.prune.surgery import SURGERY, prune_heads, regroup
from staterank.testing import FAMILIES, tiny_config, tiny_model

ADAPTERS = Path(adapters.__file__).parent
DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-family.md"


def test_families_are_the_registry():
    assert FAMILIES == families() and len(FAMILIES) == len(set(FAMILIES)) >= 4
    assert set(FAMILIES) <= set(supported_types())
    assert {get_adapter(t).model_type for t in supported_types()} == set(FAMILIES)
    assert set(SURGERY) == set(FAMILIES)  # every family registered today can be pruned


@pytest.mark.parametrize("family", FAMILIES)
def test_family_module_declares_everything(family):
    mod = importlib.import_module(f"staterank.adapters.{family}")
    a = mod.ADAPTER
    assert isinstance(a, Adapter) and a.model_type == family and get_adapter(family) is a
    assert callable(a.tiny_config) and callable(a.slice_heads)
    assert len(a.config_keys) == 2 and all(isinstance(k, str) and k for k in a.config_keys)
    for rule in a.rule_names:
        assert callable(getattr(a.module, rule)), rule
    assert isinstance(getattr(a.module, a.layer_class), type)
    assert a.decay in ("head", "channel")
    assert set(a.chunk_params) >= {"query", "key", "value", "g", "beta", "initial_state"}
    assert set(a.recurrent_params) >= {"query", "key", "value", "g", "beta", "initial_state"}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_config_and_config_keys_describe_the_layers(family):
    """The tiny config is the family's own, its linear layers are found, and the config fields the
    export writes (``config_keys``) are the ones the layers' head counts come from."""
    a = get_adapter(family)
    cfg = tiny_config(family, h_k=2, h_v=4)
    assert get_adapter(cfg) is a
    model = tiny_model(family)
    layers = a.linear_layers(model)
    assert [l.index for l in layers] == [0, 1, 3]
    h_k, h_v = (getattr(model.config, key) for key in a.config_keys)
    for layer in layers:
        assert (layer.layout.h_k, layer.layout.h_v) == (h_k, h_v)
        assert isinstance(getattr(layer.module, a.out_proj), torch.nn.Linear)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_heads_slices_with_the_adapters_slice_heads(family):
    """prune_heads on one model == the adapter's slice_heads called on a copy (exactness of the
    result: test_surgery.py)."""
    a = get_adapter(family)
    model, copy = tiny_model(family), tiny_model(family)
    layer, twin = a.linear_layers(model)[0], a.linear_layers(copy)[0]
    layouts = prune_heads(model, {layer.index: [0]})
    a.slice_heads(twin.module, twin.layout, regroup(twin.layout, [0])[1])
    assert layouts[layer.index] == a.layout_of(twin.module) != layer.layout
    assert layouts[layer.index].h_v == layer.layout.h_v - 1
    got, want = model.state_dict(), copy.state_dict()
    assert got.keys() == want.keys()
    for name, val in want.items():
        assert torch.equal(got[name], val), name


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(0, n.name) for n in node.names]
    return out


def test_adapters_are_a_leaf():
    """Adapters import no other part of staterank (not prune, not testing) but ``errors``."""
    for path in sorted(ADAPTERS.glob("*.py")):
        for level, name in _imports(path):
            assert not name.startswith("staterank"), (path.name, name)
            assert level <= 1 or (level == 2 and name == "errors"), (path.name, level, name)


def test_adding_a_family_doc_names_the_one_file_and_line():
    text = DOC.read_text(encoding="utf-8")
    assert "## Adding a family" in text
    assert "staterank/adapters/<family>.py" in text and "_REGISTRY" in text
    for field in ("slice_heads", "config_keys", "tiny_config"):
        assert field in text, field
