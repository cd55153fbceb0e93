"""Head ablation on an in-memory model, always undone.

    with ablate(model, {layer: [v_heads]}, mode="zero"):
        model(ids)                      # or model.generate(...), lm-eval, capture(...) ...

Modes (Shapes: B batch, T tokens, H value heads, K key dim, V value dim):
  ``zero``  the head never writes its state: ``modify`` sets beta[..., h] = 0 and zeroes its
            initial state, so from a zero state it stays zero and its output o = Sᵀq is zero —
            the same as removing the head (its slice of the output projection then sees zeros;
            the gated RMSNorm is per head, so no other head changes). ``patch`` also zeroes
            out[:, :, h] and state[:, h] in case a rule variant ignores beta.
  ``mean``  what the head feeds the output projection — its gated, normed output, the slice
            [h·V, (h+1)·V) of ``out_proj``'s input — is replaced by its mean [V] over calibration
            text (``calibrate_means``), a constant: a forward pre-hook on the output projection.
            (Replacing the rule output o_t instead would leave the head live: the per-head RMSNorm
            rescales the mean and the output gate silu(z_t) varies with every token.) The state
            runs on but is never read.
Layers are the model's own layer indices (``adapter.linear_layers(model)[i].index``).
Ablating nothing leaves every call untouched, so outputs equal the baseline bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

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
    """hooks.intercept handler of zero mode. heads: {module id: LongTensor of heads}."""

    heads: dict[int, torch.Tensor]

    def modify(self, layer: LinearLayer, call: RuleCall) -> RuleCall:
        hs = self.heads.get(id(layer.module))
        if hs is None:
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
        out[:, :, hs] = 0
        if state is not None:
            state = state.clone()
            state[:, hs] = 0
        return out, state


@contextlib.contextmanager
def _out_proj_hooks(adapter: Adapter, layers: list[LinearLayer], hook) -> Iterator[None]:
    """hook(layer, x [B, T, H, V] view of out_proj's input) -> replacement or None, on each layer; always removed."""
    handles = []

    def pre(layer):
        def fn(module, args):
            x = args[0]
            lo = layer.layout
            new = hook(layer, x.reshape(*x.shape[:-1], lo.h_v, lo.v))
            return None if new is None else (new.reshape(x.shape), *args[1:])
        return fn

    try:
        for l in layers:
            handles.append(getattr(l.module, adapter.out_proj).register_forward_pre_hook(pre(l)))
        yield
    finally:
        for h in handles:
            h.remove()


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
    if mode == "mean":
        have = {int(k): torch.as_tensor(v) for k, v in (means or {}).items()}
        missing = [li for li in norm if li not in have]
        if missing:
            raise UserError(f"mean ablation needs calibrated means for layers {missing}")
    if not norm:  # nothing to ablate: do not even route calls through the wrapper
        yield norm
        return
    if mode == "zero":
        mod_of = {l.index: l.module for l in layers}
        handler = _Ablator({id(mod_of[li]): torch.tensor(hs, dtype=torch.long) for li, hs in norm.items()})
        with intercept(model, adapter, handler):
            yield norm
        return

    def replace(layer: LinearLayer, x: torch.Tensor) -> torch.Tensor:
        hs = norm[layer.index]
        x = x.clone()
        x[..., hs, :] = have[layer.index][hs].to(device=x.device, dtype=x.dtype)
        return x

    with _out_proj_hooks(adapter, [l for l in layers if l.index in norm], replace):
        yield norm


@torch.no_grad()
def calibrate_means(model: nn.Module, inputs: Iterable[torch.Tensor], adapter: Adapter | None = None) -> dict[int, torch.Tensor]:
    """Mean of what each head feeds the output projection (its slice of ``out_proj``'s input) over
    every token of ``inputs`` (each [1, T] token ids, unpadded, so pad tokens never enter the
    mean). Returns {layer: [H, V] float32}."""
    adapter = adapter or get_adapter(model)
    total: dict[int, torch.Tensor] = {}
    count: dict[int, int] = {}

    def add(layer: LinearLayer, x: torch.Tensor) -> None:
        total[layer.index] = total.get(layer.index, 0) + x.detach().to(torch.float64).sum(dim=(0, 1)).cpu()
        count[layer.index] = count.get(layer.index, 0) + x.shape[0] * x.shape[1]

    device = next(model.parameters()).device
    with _out_proj_hooks(adapter, adapter.linear_layers(model), add):
        for ids in inputs:
            model(ids.to(device), use_cache=False)
    if not count:
        raise UserError("calibration saw no tokens")
    return {li: (total[li] / count[li]).to(torch.float32) for li in total}
