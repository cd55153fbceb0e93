"""Simulated state storage at reduced precision, through the rule interception (hooks.intercept).

    with store_states(model, {(layer, head): "int8_row", ...}, chunk=64):
        model.generate(...)          # or a teacher-forced forward, capture(...), ...

What is simulated: an engine keeps each head's recurrent state between steps and rounds it to the
head's precision every time it is stored (``quant.roundtrip``), so the next step reads the rounded
state. Concretely:
  * decode: every rule call's returned state (the state the cache keeps and the next token reads)
    is rounded — after every decode step;
  * prefill: the rule call over T prompt tokens is split into chunks of ``chunk`` tokens (as vLLM's
    chunked prefill does, 64 by default); each chunk runs the layer's own rule function from the
    rounded state of the previous chunk, and the state after the last chunk is rounded when stored.
    Rounding *within* a chunk is not simulated: inside a chunk the state stays in the kernel's fp32,
    as it does in an engine's prefill kernel.
  * ``decode_from`` (teacher forcing): positions >= decode_from of a call are run one token at a
    time with rounding after each, so one forward over prompt + answer reproduces the storage
    schedule of prefill + greedy decode.
Heads at ``drop`` are zero-ablated with the edits of probe/prune's zero mode (``probes.ablate``:
beta and initial state 0, output and state 0; tested equal to ``ablate`` bit for bit), per batch row
so that R plans can share one forward; heads not named (or at ``fp32``) are untouched. A plan naming only fp32 heads still splits the prefill, so the
splitting itself is tested to be exact (tests/test_compress.py: bit-identical logits and cache).

Shapes: B batch, T tokens, H value heads, K key dim, V value dim; states [B, H, K, V].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from ..adapters import Adapter, LinearLayer, get_adapter
from ..errors import UserError
from ..hooks import intercept
from ..recurrence import RuleCall, replay
from .quant import check_precision, roundtrip

Precisions = Mapping[tuple[int, int], str]  # (model layer index, value head) -> precision name


def _sub(call: RuleCall, a: int, b: int, s0: torch.Tensor | None) -> RuleCall:
    return RuleCall(q=call.q[:, a:b], k=call.k[:, a:b], v=call.v[:, a:b], g=call.g[:, a:b], beta=call.beta[:, a:b],
                    initial_state=s0, use_qk_l2norm=call.use_qk_l2norm)


def cuts(T: int, chunk: int, decode_from: int | None = None) -> list[int]:
    """Where a T-token rule call is split (each a position where the state is stored): multiples of
    ``chunk`` below ``decode_from`` (or T), then every position from ``decode_from`` on; 0 < cut < T."""
    end = T if decode_from is None else min(decode_from, T)
    out = list(range(chunk, end, chunk))
    if decode_from is not None and 0 < decode_from < T:
        out += list(range(max(decode_from, 1), T))
    return sorted(set(out))


class _Storage:
    """hooks.intercept handler: runs each hooked rule call chunk by chunk and rounds every stored state.

    plans: one normalised plan for every batch row, or R plans for R equal consecutive blocks of rows
    (a batch of R copies of the same inputs measures R plans in one forward). Dropped heads get the
    edits of probes.ablate's zero mode (beta 0, initial state 0; output and state 0 after the rule).
    With ``record``, ``errors`` accumulates per (layer index, head), over every row and store:
    [sum ‖Q(S) − S‖²_F, sum ‖S‖²_F, number of stored [K, V] states]."""

    def __init__(self, plans: list[dict], layers: list[LinearLayer], chunk: int, record: bool = False):
        self.plans, self.chunk, self.record = plans, chunk, record
        self.layer_of = {id(l.module): l for l in layers}
        self.active = {id(l.module) for l in layers if any(li == l.index for p in plans for li, _ in p)}
        self.decode_from: int | None = None
        self.errors: dict[tuple[int, int], list[float]] = {}
        self.stores = 0  # how many times a state was stored (rounded), for tests and the report
        self._cache: dict[tuple[int, int], tuple] = {}

    def _layout(self, layer: LinearLayer, B: int):
        """([(precision, heads, rows or None)], drop mask [B, H] or None) of ``layer`` for batch size B."""
        key = (id(layer.module), B)
        if key not in self._cache:
            R = len(self.plans)
            if B % R:
                raise UserError(f"a batch of {B} rows cannot hold {R} plans in equal blocks")
            n = B // R
            groups, mask = [], torch.zeros(B, layer.layout.h_v, dtype=torch.bool)
            for r, plan in enumerate(self.plans):
                rows = None if R == 1 else torch.arange(r * n, (r + 1) * n)
                by: dict[str, list[int]] = {}
                for (li, h), name in plan.items():
                    if li == layer.index:
                        by.setdefault(name, []).append(h)
                for name, hs in by.items():
                    if name == "drop":
                        if rows is None:
                            mask[:, hs] = True
                        else:  # every row of the block x every head (not zipped pairs)
                            mask[rows[:, None], torch.tensor(hs)] = True
                    elif name != "fp32":  # fp32: the identity
                        groups.append((name, torch.tensor(hs, dtype=torch.long), rows))
            self._cache[key] = (groups, mask if mask.any() else None)
        return self._cache[key]

    def store(self, layer: LinearLayer, S: torch.Tensor) -> torch.Tensor:
        out = S.clone()
        for name, hs, rows in self._layout(layer, S.shape[0])[0]:
            part = S[:, hs] if rows is None else S[rows.to(S.device)][:, hs]
            r = roundtrip(part, name)
            if rows is None:
                out[:, hs] = r
            else:
                out[rows.to(S.device)[:, None], hs] = r
            if self.record:
                d = (r.double() - part.double()).pow(2).sum(dim=(-2, -1)).sum(0)  # [n heads]
                nn_ = part.double().pow(2).sum(dim=(-2, -1)).sum(0)
                for j, h in enumerate(hs.tolist()):
                    e = self.errors.setdefault((layer.index, h), [0.0, 0.0, 0])
                    e[0] += float(d[j])
                    e[1] += float(nn_[j])
                    e[2] += part.shape[0]
        self.stores += 1
        return out

    def run(self, layer: LinearLayer, call: RuleCall, rule):
        if id(layer.module) not in self.active:
            return rule(call)
        mask = self._layout(layer, call.v.shape[0])[1]
        if mask is not None:  # dropped heads: probes.ablate's zero mode, per row
            mask = mask.to(call.v.device)
            s0 = call.initial_state
            call = RuleCall(q=call.q, k=call.k, v=call.v, g=call.g, beta=call.beta.masked_fill(mask[:, None, :], 0),
                            initial_state=None if s0 is None else s0.masked_fill(mask[:, :, None, None], 0),
                            use_qk_l2norm=call.use_qk_l2norm)
        T = call.num_tokens
        bounds = [0, *cuts(T, self.chunk, self.decode_from), T]
        s = call.initial_state
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            last = b == T
            if self.decode_from is not None and a >= self.decode_from:
                # a teacher-forced decode step: the recurrent reference (recurrence.replay copies the op
                # order of transformers' recurrent kernel, which decode runs), far cheaper than the chunk rule
                o, s = replay(_sub(call, a, b, s))
                o = o.to(call.v.dtype)
            else:
                # intermediate chunks must hand their state on; the last returns what the layer asked for
                o, s = rule(_sub(call, a, b, s)) if last else rule(_sub(call, a, b, s), output_final_state=True)
            outs.append(o)
            if s is not None:
                if mask is not None:
                    s = s.masked_fill(mask[:, :, None, None], 0)
                s = self.store(layer, s)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if mask is not None:
            out = out.masked_fill(mask[:, None, :, None], 0)
        return out, s


def normalize(precisions: Precisions, layers: list[LinearLayer]) -> dict[tuple[int, int], str]:
    """Validate {(layer, head): precision} against the model; returns a plain sorted dict."""
    by_index = {l.index: l for l in layers}
    out = {}
    for key, name in precisions.items():
        try:
            li, h = (int(x) for x in key)
        except (TypeError, ValueError):
            raise UserError(f"a head is (layer, head), got {key!r}") from None
        if li not in by_index:
            raise UserError(f"layer {li} is not a linear-attention layer; those are {sorted(by_index)}")
        if not 0 <= h < by_index[li].layout.h_v:
            raise UserError(f"layer {li} has value heads 0..{by_index[li].layout.h_v - 1}; got {h}")
        out[(li, h)] = check_precision(name)
    return dict(sorted(out.items()))


@contextlib.contextmanager
def store_states(model: nn.Module, precisions: Precisions | Sequence[Precisions], chunk: int = 64, *,
                 record: bool = False, adapter: Adapter | None = None) -> Iterator[_Storage | None]:
    """Store every named head's state at its precision inside the block (see the module docstring);
    yields the handler (its ``errors`` / ``stores`` / ``decode_from``), or None for an empty plan
    (nothing is intercepted: outputs are the model's own bit for bit). A list of R plans applies
    plan r to the r-th of R equal consecutive blocks of every batch's rows."""
    if chunk < 1:
        raise UserError(f"chunk must be >= 1 token, got {chunk}")
    adapter = adapter or get_adapter(model)
    layers = adapter.linear_layers(model)
    plans = [normalize(p, layers) for p in (precisions if isinstance(precisions, (list, tuple)) else [precisions])]
    if not plans or not any(plans):
        yield None
        return
    handler = _Storage(plans, layers, chunk, record)
    with intercept(model, adapter, handler):
        yield handler
