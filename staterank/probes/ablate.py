"""Head ablation on an in-memory model, always undone.

    with ablate(model, {layer: [v_heads]}, mode="zero"):
        model(ids)                      # or model.generate(...), lm-eval, capture(...) ...

Modes (Shapes: B batch, T tokens, H value heads, K key dim, V value dim):
  ``zero``  the head never writes its state: ``modify`` sets beta[..., h] = 0 and zeroes its
            initial state, so from a zero state it stays zero and its output o = Sᵀq is zero —
            the same as removing the head (its slice of the output projection then sees zeros;
            the gated RMSNorm is per head, so no other head changes). ``patch`` also zeroes
            out[:, :, h] and state[:, h] in case a rule variant ignores beta.
  ``mean``  the head's rule output is replaced by its mean output vector [V] over calibration
            text (``calibrate_means``); its state runs on but is never read.
Layers are the model's own layer indices (``adapter.linear_layers(model)[i].index``).
Ablating nothing leaves every call untouched, so outputs equal the baseline bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from ..adapters import Adapter, LinearLayer, get_adapter
from ..errors import UserError
from ..hooks import intercept
from ..recurrence import RuleCall

MODES = ("zero", "mean")
Heads = Mapping[int, Iterable[int]]  # model layer index -> value heads


def normalize_heads(heads: Heads, layers: list[LinearLayer]) -> dict[int, list[int]]:
    """Validate {layer: heads} against the model; sorted unique heads, empty layers dropped."""
    by_index = {l.index: l for l in layers}
    out: dict[int, list[int]] = {}
    for layer, hs in heads.items():
        try:
            li = int(layer)
        except (TypeError, ValueError):
            raise UserError(f"layer {layer!r} is not an integer") from None
        if li not in by_index:
            raise UserError(f"layer {li} is not a linear-attention layer; those are {sorted(by_index)}")
        h_v = by_index[li].layout.h_v
        hl = sorted({int(h) for h in hs})
        bad = [h for h in hl if not 0 <= h < h_v]
        if bad:
            raise UserError(f"layer {li} has value heads 0..{h_v - 1}; got {bad}")
        if hl:
            out[li] = hl
    return out


@dataclass
class _Ablator:
    """hooks.intercept handler. heads: {module id: LongTensor of heads}; means: {module id: [H, V]}."""

    heads: dict[int, torch.Tensor]
    mode: str
    means: dict[int, torch.Tensor]

    def modify(self, layer: LinearLayer, call: RuleCall) -> RuleCall:
        hs = self.heads.get(id(layer.module))
        if hs is None or self.mode != "zero":
            return call
        beta = call.beta.clone()
        beta[:, :, hs] = 0
        s0 = call.initial_state
        if s0 is not None:
            s0 = s0.clone()
            s0[:, hs] = 0
        return RuleCall(q=call.q, k=call.k, v=call.v, g=call.g, beta=beta, initial_state=s0,
                        use_qk_l2norm=call.use_qk_l2norm)

    def patch(self, layer: LinearLayer, call: RuleCall, out: torch.Tensor, state: torch.Tensor | None):
        hs = self.heads.get(id(layer.module))
        if hs is None:
            return out, state
        out = out.clone()
        if self.mode == "zero":
            out[:, :, hs] = 0
            if state is not None:
                state = state.clone()
                state[:, hs] = 0
        else:
            out[:, :, hs] = self.means[id(layer.module)][hs].to(out.dtype).to(out.device)
        return out, state


@contextlib.contextmanager
def ablate(
    model: nn.Module,
    heads: Heads,
    mode: str = "zero",
    *,
    means: Mapping[int, torch.Tensor] | None = None,
    adapter: Adapter | None = None,
) -> Iterator[dict[int, list[int]]]:
    """Ablate value ``heads`` ({model layer: [heads]}) inside the block; yields the validated map.

    mode "mean" needs ``means`` {layer: [H, V]} from :func:`calibrate_means`.
    """
    if mode not in MODES:
        raise UserError(f"unknown ablation mode {mode!r}; choose one of {', '.join(MODES)}")
    adapter = adapter or get_adapter(model)
    layers = adapter.linear_layers(model)
    norm = normalize_heads(heads, layers)
    mod_of = {l.index: l.module for l in layers}
    if mode == "mean":
        have = {int(k): torch.as_tensor(v) for k, v in (means or {}).items()}
        missing = [li for li in norm if li not in have]
        if missing:
            raise UserError(f"mean ablation needs calibrated means for layers {missing}")
        means_by_mod = {id(mod_of[li]): have[li] for li in norm}
    else:
        means_by_mod = {}
    if not norm:  # nothing to ablate: do not even route calls through the wrapper
        yield norm
        return
    handler = _Ablator({id(mod_of[li]): torch.tensor(hs, dtype=torch.long) for li, hs in norm.items()}, mode, means_by_mod)
    with intercept(model, adapter, handler):
        yield norm


class _MeanAccumulator:
    def __init__(self):
        self.sum: dict[int, torch.Tensor] = {}  # layer index -> [H, V] float64
        self.count: dict[int, int] = {}

    def observe(self, layer: LinearLayer, call: RuleCall, out: torch.Tensor, state) -> None:
        s = out.detach().to(torch.float64).sum(dim=(0, 1))  # [H, V]
        n = out.shape[0] * out.shape[1]
        self.sum[layer.index] = self.sum.get(layer.index, 0) + s
        self.count[layer.index] = self.count.get(layer.index, 0) + n


@torch.no_grad()
def calibrate_means(model: nn.Module, inputs: Iterable[torch.Tensor], adapter: Adapter | None = None) -> dict[int, torch.Tensor]:
    """Mean rule output per head over every token of ``inputs`` (each [1, T] token ids, unpadded,
    so pad tokens never enter the mean). Returns {layer: [H, V] float32}."""
    adapter = adapter or get_adapter(model)
    acc = _MeanAccumulator()
    device = next(model.parameters()).device
    with intercept(model, adapter, acc):
        for ids in inputs:
            model(ids.to(device), use_cache=False)
    if not acc.count:
        raise UserError("calibration saw no tokens")
    return {li: (acc.sum[li] / acc.count[li]).to(torch.float32) for li in acc.sum}
