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
Handlers act only on layers in their own ``layers`` (so two models can be hooked at once).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import torch.nn as nn

from .adapters import Adapter, LinearLayer
from .errors import UserError
from .recurrence import RuleCall

_ACTIVE: dict[str, list[Any]] = {}  # modeling module name -> handlers
_ORIGINALS: dict[tuple[str, str], Any] = {}
_CALLING: list[LinearLayer] = []  # stack of layers inside forward


def _bind(fn, args, kwargs) -> tuple[inspect.BoundArguments, RuleCall]:
    ba = inspect.signature(fn).bind(*args, **kwargs)
    a = ba.arguments
    extra = a.get("kwargs", {})
    l2 = a.get("use_qk_l2norm_in_kernel", extra.get("use_qk_l2norm_in_kernel", False))
    call = RuleCall(
        q=a["query"], k=a["key"], v=a["value"], g=a["g"], beta=a["beta"],
        initial_state=a.get("initial_state"), use_qk_l2norm=bool(l2),
    )
    return ba, call


def _make_wrapper(modname: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        handlers = _ACTIVE.get(modname, [])
        layer = _CALLING[-1] if _CALLING else None
        mine = [h for h in handlers if layer is not None and id(layer.module) in h._module_ids]
        if not mine:
            return fn(*args, **kwargs)
        ba, call = _bind(fn, args, kwargs)
        for h in mine:
            if hasattr(h, "arrive"):
                h.arrive(layer, call)
        for h in mine:
            if hasattr(h, "modify"):
                call = h.modify(layer, call)
        a = ba.arguments
        a["query"], a["key"], a["value"], a["g"], a["beta"] = call.q, call.k, call.v, call.g, call.beta
        if "initial_state" in a or call.initial_state is not None:
            a["initial_state"] = call.initial_state
        out, state = fn(*ba.args, **ba.kwargs)
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
        raise UserError(f"{modname} has no {', '.join(missing)}: this transformers version is not supported "
                        f"by the {adapter.model_type} adapter")
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
                setattr(module, name, _make_wrapper(modname, _ORIGINALS[(modname, name)]))
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
