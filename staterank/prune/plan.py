"""A prune plan: which value heads go, why, and for which model — kept apart from the surgery.

``plan.json`` holds the removed (layer, head) pairs in removal order, the scores [L, H] they came
from, the method and its parameters (α, seed), ranking, budget, calibration settings, and the model
it was made for: its id and a fingerprint of the architecture facts surgery depends on (model type,
hidden size, layer count and types, every linear layer's H_k, H_v, K, V). Applying a plan to a model
with another fingerprint is a one-line error.

Shapes: L linear-attention layers, H value heads per layer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from ..adapters import get_adapter
from ..errors import UserError
from ..runio import read_json, write_json

FORMAT = "staterank.prune_plan/1"


def _text_config(model: nn.Module):
    cfg = model.config
    return getattr(cfg, "text_config", None) if not hasattr(cfg, "hidden_size") else cfg


def model_facts(model: nn.Module) -> dict:
    """The architecture facts a plan depends on (JSON-able)."""
    adapter = get_adapter(model)
    cfg = _text_config(model)
    layers = adapter.linear_layers(model)
    return {
        "model_type": adapter.model_type,
        "hidden_size": int(cfg.hidden_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "layer_types": list(getattr(cfg, "layer_types", []) or []),
        "linear_layers": [l.index for l in layers],
        "layouts": [[l.layout.h_k, l.layout.h_v, l.layout.k, l.layout.v] for l in layers],
    }


def fingerprint(model: nn.Module) -> str:
    return hashlib.sha256(json.dumps(model_facts(model), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    model_id: str
    fingerprint: str
    facts: dict
    method: str
    params: dict
    ranking: str
    budget: dict
    scores: list[list[float]]  # [L, H], rows in facts["linear_layers"] order
    removed: list[tuple[int, int]]  # (model layer index, value head), removal order
    calibration: dict = field(default_factory=dict)

    # -- views ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.facts["linear_layers"])

    @property
    def h_v(self) -> list[int]:
        return [lo[1] for lo in self.facts["layouts"]]

    def by_layer(self) -> dict[int, list[int]]:
        """{model layer: sorted removed heads}, every linear layer present (possibly empty)."""
        out: dict[int, list[int]] = {li: [] for li in self.layers}
        for li, h in self.removed:
            out[li].append(h)
        return {li: sorted(hs) for li, hs in out.items()}

    def counts(self) -> list[int]:
        """Removed heads per linear layer, in layer order."""
        return [len(hs) for hs in self.by_layer().values()]

    def kept_h_v(self) -> list[int]:
        return [hv - c for hv, c in zip(self.h_v, self.counts())]

    def removed_state_bytes(self, dtype_bytes: int = 4) -> int:
        """Recurrent-state bytes per sequence the plan frees (K·V per removed head)."""
        kv = {li: lo[2] * lo[3] for li, lo in zip(self.layers, self.facts["layouts"])}
        return sum(kv[li] * dtype_bytes for li, _ in self.removed)

    @property
    def fraction(self) -> float:
        return len(self.removed) / max(sum(self.h_v), 1)

    # -- checks and I/O -------------------------------------------------------------------------
    def validate(self) -> None:
        """Self-consistency: heads exist, no duplicates, every layer keeps one head."""
        hv = dict(zip(self.layers, self.h_v))
        seen = set()
        for li, h in self.removed:
            if li not in hv:
                raise UserError(f"plan removes a head of layer {li}, which is not a linear-attention layer {self.layers}")
            if not 0 <= h < hv[li]:
                raise UserError(f"plan removes head {h} of layer {li}, which has heads 0..{hv[li] - 1}")
            if (li, h) in seen:
                raise UserError(f"plan removes head {h} of layer {li} twice")
            seen.add((li, h))
        for li, k in zip(self.layers, self.kept_h_v()):
            if k < 1:
                raise UserError(f"plan removes every value head of layer {li}; every layer must keep one")

    def check_model(self, model: nn.Module) -> None:
        """One-line UserError if ``model`` is not the architecture this plan was made for."""
        fp = fingerprint(model)
        if fp != self.fingerprint:
            facts = model_facts(model)
            diff = [k for k in self.facts if self.facts.get(k) != facts.get(k)]
            raise UserError(f"this plan was made for another model ({self.model_id}, fingerprint {self.fingerprint}); "
                            f"this model's fingerprint is {fp} (differs in {', '.join(diff) or 'facts'})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed"] = [list(p) for p in self.removed]
        return {"format": FORMAT, **d, "summary": {"removed": len(self.removed), "value_heads": sum(self.h_v),
                                                   "fraction": self.fraction, "per_layer": self.counts(),
                                                   "removed_state_bytes_per_sequence": self.removed_state_bytes()}}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if d.get("format") != FORMAT:
            raise UserError(f"not a staterank prune plan (format {d.get('format')!r}, expected {FORMAT!r})")
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        kw["removed"] = [(int(a), int(b)) for a, b in kw["removed"]]
        plan = cls(**kw)
        plan.validate()
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"plan file {p}: {'a directory; give its plan.json' if p.is_dir() else 'no such file'}")
        d = read_json(p)  # not JSON: a one-line UserError
        if not isinstance(d, dict):
            raise UserError(f"cannot read plan {p}: a JSON object expected, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"cannot read plan {p}: {type(e).__name__}: {e}") from None


def make_plan(model: nn.Module, removed: list[tuple[int, int]], *, model_id: str, method: str, params: dict,
              ranking: str, budget: dict, scores: np.ndarray | None = None, calibration: dict | None = None) -> Plan:
    """A validated plan for ``model``."""
    facts = model_facts(model)
    if scores is None:
        scores = np.zeros((len(facts["linear_layers"]), max(lo[1] for lo in facts["layouts"])))
    plan = Plan(model_id=model_id, fingerprint=fingerprint(model), facts=facts, method=method, params=dict(params),
                ranking=ranking, budget=dict(budget), scores=np.asarray(scores, float).tolist(),
                removed=[(int(a), int(b)) for a, b in removed], calibration=dict(calibration or {}))
    plan.validate()
    return plan
