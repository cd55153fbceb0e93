"""Interception of the delta-rule calls, always undone.

transformers 5 layers look their rule functions up as globals of their modeling module at call
time, so replacing those globals (and restoring them) sees and controls exactly what the model
computes without touching its math. One dispatcher per modeling module serves every active
handler; forward pre/post hooks on the linear-attention modules tell it which layer is calling.

Handler protocol (all methods optional):
  ``enter(layer, kwargs)``                   the layer's forward kwargs (e.g. attention_mask), before it runs
  ``arrive(layer, call)``                    the rule call as the layer made it, before any handler modifies it
  ``modify(layer, call) -> RuleCall``        before the rule runs (ablation)
  ``observe(layer, call, out, state)``       on the rule's raw outputs (capture, verification)
  ``patch(layer, call, out, state) -> (out, state)``  after observers (mean ablation)
  ``settle(layer, state)``                   the final state the layer keeps, after every patch
  ``run(layer, call, rule) -> (out, state)``  replaces the one rule call (at most one handler per layer may
                                             define it): ``rule(call, **overrides)`` runs the layer's own rule
                                             function on any call, e.g. chunk by chunk (compress: state storage)
Handlers act only on layers in their own ``layers`` (so two models can be hooked at once).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from .adapters import Adapter, LinearLayer
from .compat import unsupported
from .errors import UserError
from .recurrence import RuleCall

_ACTIVE: dict[str, list[Any]] = {}  # modeling module name -> handlers
_ORIGINALS: dict[tuple[str, str], Any] = {}
_CALLING: list[LinearLayer] = []  # stack of layers inside forward


class _Bound:
    """One rule call's arguments, bound to the adapter's declared parameter names (see
    ``adapters.base.CHUNK_PARAMS``), and rebuilt in the same positional/keyword shape."""

    def __init__(self, family: str, rule: str, params: tuple[str, ...], args: tuple, kwargs: dict):
        if len(args) > len(params):
            raise unsupported(f"{family}'s {rule} was called with {len(args)} positional arguments, "
                              f"staterank knows {len(params)}")
        self.params, self.n = params, len(args)
        self.values = dict(zip(params, args))
        twice = set(self.values) & set(kwargs)
        if twice:
            raise unsupported(f"{family}'s {rule} got {', '.join(sorted(twice))} both by position and by name")
        self.values.update(kwargs)
        bad = [n for n in ("query", "key", "value", "g", "beta") if not isinstance(self.values.get(n), torch.Tensor)]
        s0 = self.values.get("initial_state")
        if s0 is not None and not isinstance(s0, torch.Tensor):
            bad.append("initial_state")
        if bad:
            raise unsupported(f"{family}'s {rule} call has no tensor {', '.join(bad)} where staterank reads it")
        if self.values.get("cu_seqlens") is not None:
            raise UserError("packed sequences (cu_seqlens) reached the delta rule: staterank replays one sequence "
                            "per batch row; give one text per row instead of a packed batch")
        extra = self.values.get("kwargs", {})  # a caller that passed **kwargs as a dict by name
        l2 = self.values.get("use_qk_l2norm_in_kernel", extra.get("use_qk_l2norm_in_kernel", False))
        self.call = RuleCall(q=self.values["query"], k=self.values["key"], v=self.values["value"],
                             g=self.values["g"], beta=self.values["beta"], initial_state=s0, use_qk_l2norm=bool(l2))

    def run(self, fn, call: RuleCall, **overrides):
        """Call ``fn`` as the layer did, with ``call``'s tensors in place of its own (and ``overrides``,
        e.g. output_final_state=True, in place of those arguments)."""
        v = dict(self.values)
        v.update(overrides)
        v["query"], v["key"], v["value"], v["g"], v["beta"] = call.q, call.k, call.v, call.g, call.beta
        if "initial_state" in v or call.initial_state is not None:
            v["initial_state"] = call.initial_state
        args = [v.pop(name) for name in self.params[: self.n]]
        return fn(*args, **v)


def _make_wrapper(modname: str, fn, family: str, rule: str, params: tuple[str, ...]):
    @functools.wraps(fn, updated=())  # fn may be an nn.Module (5.25 hub wrappers): copy no __dict__
    def wrapper(*args, **kwargs):
        handlers = _ACTIVE.get(modname, [])
        layer = _CALLING[-1] if _CALLING else None
        mine = [h for h in handlers if layer is not None and id(layer.module) in h._module_ids]
        if not mine:
            return fn(*args, **kwargs)
        bound = _Bound(family, rule, params, args, kwargs)
        call = bound.call
        for h in mine:
            if hasattr(h, "arrive"):
                h.arrive(layer, call)
        for h in mine:
            if hasattr(h, "modify"):
                call = h.modify(layer, call)
        runner = [h for h in mine if hasattr(h, "run")]
        if len(runner) > 1:
            raise UserError("two active handlers both replace the same rule call")
        if runner:  # the layer's own rule, callable on any (sub)call; see the handler protocol
            result = runner[0].run(layer, call, lambda c, **kw: bound.run(fn, c, **kw))
        else:
            result = bound.run(fn, call)
        if not (isinstance(result, tuple) and len(result) == 2):
            what = f"{len(result)} values" if isinstance(result, tuple) else type(result).__name__
            raise unsupported(f"{family}'s {rule} returned {what}, not (output, state)")
        out, state = result
        for h in mine:
            if hasattr(h, "observe"):
                h.observe(layer, call, out, state)
        for h in mine:
            if hasattr(h, "patch"):
                out, state = h.patch(layer, call, out, state)
        for h in mine:
            if hasattr(h, "settle"):
                h.settle(layer, state)
        return out, state

    wrapper.__staterank_wrapped__ = True
    return wrapper


@contextlib.contextmanager
def intercept(model: nn.Module, adapter: Adapter, handler: Any) -> Iterator[list[LinearLayer]]:
    """Route ``model``'s delta-rule calls through ``handler`` inside the block; always undone."""
    layers = adapter.linear_layers(model)
    handler._module_ids = {id(l.module) for l in layers}
    modname = adapter.modeling_module
    module = adapter.module
    # resolve every name before changing anything: a failure leaves the model untouched
    missing = [n for n in adapter.rule_names if not hasattr(module, n)]
    if missing:
        raise unsupported(f"{modname} has no {', '.join(missing)}")
    handles = []

    def enter(m, args, kwargs, _l):
        _CALLING.append(_l)
        for h in _ACTIVE.get(modname, []):
            if id(m) in h._module_ids and hasattr(h, "enter"):
                h.enter(_l, kwargs)

    def leave(m, a, o):  # must return None, or it would replace the layer's output
        _CALLING.pop()

    try:
        for layer in layers:
            handles.append(layer.module.register_forward_pre_hook(
                lambda m, a, kw, _l=layer: enter(m, a, kw, _l) and None, with_kwargs=True))
            handles.append(layer.module.register_forward_hook(leave, always_call=True))
        if not _ACTIVE.get(modname):
            _ACTIVE[modname] = []
            for name in adapter.rule_names:
                _ORIGINALS[(modname, name)] = getattr(module, name)
                setattr(module, name, _make_wrapper(modname, _ORIGINALS[(modname, name)], adapter.model_type, name,
                                                   adapter.params_of(name)))
        _ACTIVE[modname].append(handler)
        yield layers
    finally:
        for hd in handles:
            hd.remove()
        if handler in _ACTIVE.get(modname, []):
            _ACTIVE[modname].remove(handler)
        if modname in _ACTIVE and not _ACTIVE[modname]:
            for name in adapter.rule_names:
                if (modname, name) in _ORIGINALS:
                    setattr(module, name, _ORIGINALS.pop((modname, name)))
            del _ACTIVE[modname]
