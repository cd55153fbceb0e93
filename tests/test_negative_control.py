"""Issue #9: the negative-control model (builtin architecture, transformers' default init, untrained)
must never come out as supporting the paper: every claim is 'artefact', 'fails' or 'inconclusive'."""

import json

import torch

from staterank.cli import main
from staterank.models import load_model


def test_negative_control_is_untrained_default_init():
    neg = load_model("negative-control", device="cpu")
    ref = load_model("builtin", device="cpu")
    assert type(neg.model) is type(ref.model)
    assert neg.model.config.to_dict()["layer_types"] == ref.model.config.to_dict()["layer_types"]
    # default gate init: A ~ U(0.01, 16) and dt_bias = 1 -> most heads forget nearly everything per token
    layer = neg.adapter.linear_layers(neg.model)[0].module
    assert torch.all(layer.dt_bias == 1)
    again = load_model("negative-control", device="cpu")
    for (n1, p1), (_, p2) in zip(neg.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(p1, p2), n1  # deterministic


def test_negative_control_claims_never_hold(tmp_path):
    out = tmp_path / "neg"
    args = ["run", "--model", "negative-control", "--quiet", "--out", str(out),
            "--set", "stratify.max_tokens=128", "--set", "stratify.suite=natural",
            "--set", "probe.tasks=[mqar]", "--set", "probe.limit=8", "--set", "probe.seeds=2",
            "--set", "probe.single_head=false",
            "--set", "prune.tasks=[mqar]", "--set", "prune.eval_n=8", "--set", "prune.random_seeds=1",
            "--set", "prune.calib_tokens=64", "--set", "prune.state_context=64"]
    assert main(args) == 0
    rows = json.loads((out / "claims.json").read_text())["rows"]
    tested = [r for r in rows if not r.get("informational")]
    assert len(tested) >= 6
    assert all(r["verdict"] != "holds" for r in tested), [(r["claim"], r["verdict"], r["why"]) for r in tested]
