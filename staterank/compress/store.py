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
Heads at ``drop`` are zero-ablated exactly as probe/prune do (``probes.ablate``); heads not named
(or at ``fp32``) are untouched. A plan naming only fp32 heads still splits the prefill, so the
splitting itself is tested to be exact (tests/test_compress.py: bit-identical logits and cache).

Shapes: B batch, T tokens, H value heads, K key dim, V value dim; states [B, H, K, V].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn

from ..adapters import Adapter, LinearLayer, get_adapter
from ..errors import UserError
from ..hooks import intercept
from ..probes.ablate import ablate
from ..recurrence import RuleCall
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

    groups: {module id: [(precision, LongTensor heads)]}. With ``record``, ``errors`` accumulates per
    (layer index, head): [sum ‖Q(S) − S‖²_F, sum ‖S‖²_F, number of stored states] over every store."""

    def __init__(self, groups: dict[int, list[tuple[str, torch.Tensor]]], index: dict[int, int], chunk: int,
                 record: bool = False):
        self.groups, self.index, self.chunk, self.record = groups, index, chunk, record
        self.decode_from: int | None = None
        self.errors: dict[tuple[int, int], list[float]] = {}
        self.stores = 0  # how many times a state was stored (rounded), for tests and the report

    def store(self, layer: LinearLayer, S: torch.Tensor) -> torch.Tensor:
        out = S.clone()
        for name, hs in self.groups[id(layer.module)]:
            part = S[:, hs]
            r = roundtrip(part, name)
            out[:, hs] = r
            if self.record:
                d = (r.double() - part.double()).pow(2).sum(dim=(-2, -1)).sum(0)  # [n heads]
                n = part.double().pow(2).sum(dim=(-2, -1)).sum(0)
                li = self.index[id(layer.module)]
                for j, h in enumerate(hs.tolist()):
                    e = self.errors.setdefault((li, h), [0.0, 0.0, 0])
                    e[0] += float(d[j])
                    e[1] += float(n[j])
                    e[2] += S.shape[0]
        self.stores += 1
        return out

    def run(self, layer: LinearLayer, call: RuleCall, rule):
        if id(layer.module) not in self.groups:
            return rule(call)
        T = call.num_tokens
        bounds = [0, *cuts(T, self.chunk, self.decode_from), T]
        s = call.initial_state
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            last = b == T
            # intermediate chunks must hand their state on; the last returns what the layer asked for
            o, s = rule(_sub(call, a, b, s)) if last else rule(_sub(call, a, b, s), output_final_state=True)
            outs.append(o)
            if s is not None:
                s = self.store(layer, s)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), s


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
def store_states(model: nn.Module, precisions: Precisions, chunk: int = 64, *, record: bool = False,
                 adapter: Adapter | None = None) -> Iterator[_Storage | None]:
    """Store every named head's state at its precision inside the block (see the module docstring);
    yields the handler (its ``errors`` / ``stores`` / ``decode_from``), or None for an empty plan
    (nothing is intercepted: outputs are the model's own bit for bit)."""
    if chunk < 1:
        raise UserError(f"chunk must be >= 1 token, got {chunk}")
    adapter = adapter or get_adapter(model)
    layers = adapter.linear_layers(model)
    plan = normalize(precisions, layers)
    if not plan:
        yield None
        return
    mod_of = {l.index: l.module for l in layers}
    drop: dict[int, list[int]] = {}
    by_layer: dict[int, dict[str, list[int]]] = {}
    for (li, h), name in plan.items():
        if name == "drop":
            drop.setdefault(li, []).append(h)
        by_layer.setdefault(li, {}).setdefault(name, []).append(h)
    # fp32 heads are rounded by the identity; they stay in the plan so their layer is still split
    groups = {id(mod_of[li]): [(n, torch.tensor(hs, dtype=torch.long)) for n, hs in d.items() if n not in ("fp32", "drop")]
              for li, d in by_layer.items()}
    handler = _Storage(groups, {id(m): li for li, m in mod_of.items()}, chunk, record)
    with ablate(model, drop, adapter=adapter), intercept(model, adapter, handler):
        yield handler
