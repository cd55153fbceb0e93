"""Physical head removal: slice every tensor coupled to a value head, in place. The generic part is
here (which heads survive, how key groups regroup); which tensors to slice and how is each family's
``slice_heads``, declared by its adapter (``staterank/adapters/<family>.py``).

GVA rule (Qwen3-Next, Qwen3.5, OLMo-hybrid: value head j reads key head j // G, G = H_v/H_k). The layer code
derives the mapping from H_v/H_k alone, so after surgery every key head must serve the same number
G' of consecutive value heads. We keep the surviving value heads in their original order and
regroup them:
  * a key head whose value heads all go is removed (its q/k projection rows and conv channels);
  * every other key group g keeps c_g value heads; G' must divide every c_g, and group g becomes
    c_g / G' key heads — copies of key head g (its q/k rows and depthwise-conv channels duplicated,
    which computes exactly the same q, k), each serving G' of g's survivors in order.
By default G' = gcd of the c_g, so nothing is duplicated when every surviving group keeps the same
count (whole key groups removed, or the same number removed from every group). Any value-head plan
is thus exact; the price of uneven groups is duplicated key channels (more q/k parameters and conv
state, never more recurrent state). H_k' = H_v' / G' by construction.
Kimi Linear has H_k = H_v (G = 1): a head's q, k, v, gates and decay go together.

Not sliced: the gated RMSNorm weight (size V, shared by all heads; it normalises each head on its
own, so removing a head changes no other head's output).

Shapes: H_k key heads, H_v value heads, K key dim, V value dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from ..adapters import HeadLayout, families, get_adapter
from ..adapters.slicing import KeyHeads
from ..errors import UserError


def regroup(layout: HeadLayout, removed: Iterable[int], group: int | None = None) -> tuple[int, KeyHeads]:
    """(G', new key heads) for removing value heads ``removed`` from a layer (see module docstring)."""
    gone = set(int(h) for h in removed)
    G = layout.group
    survivors = [[j for j in range(g * G, (g + 1) * G) if j not in gone] for g in range(layout.h_k)]
    counts = group_sizes(layout, gone)
    if not counts:
        raise UserError("cannot remove every value head of a layer")
    gp = group if group is not None else math.gcd(*counts)
    bad = gp < 1 or [c for c in counts if c % gp]
    if bad:
        raise UserError(f"key groups keep {counts} value heads; a GVA ratio of {gp} does not divide them")
    keys: KeyHeads = []
    for g, vs in enumerate(survivors):
        keys += [(g, vs[i : i + gp]) for i in range(0, len(vs), gp)]
    return gp, keys


# every family's slicing function, declared by its adapter (adapters/<family>.py: slice_heads)
SURGERY: dict[str, Callable[[nn.Module, HeadLayout, KeyHeads], None]] = {
    f: a.slice_heads for f in families() if (a := get_adapter(f)).slice_heads is not None
}


def group_sizes(layout: HeadLayout, removed: Iterable[int]) -> list[int]:
    """Surviving value heads of every key group that keeps any."""
    gone = set(int(h) for h in removed)
    G = layout.group
    return [c for g in range(layout.h_k) if (c := sum(j not in gone for j in range(g * G, (g + 1) * G)))]


def common_group(layouts: Iterable[HeadLayout], removed: Iterable[Iterable[int]]) -> int:
    """The largest G' valid in every layer: gcd of all surviving key-group sizes (layouts and
    removed heads given layer by layer)."""
    return math.gcd(*[c for lo, hs in zip(layouts, removed) for c in group_sizes(lo, hs)])


@torch.no_grad()
def prune_heads(model: nn.Module, removed: Mapping[int, Iterable[int]], group: int | None = None) -> dict[int, HeadLayout]:
    """Remove value heads in place: ``removed`` = {model layer index: value heads}.

    ``group``: the GVA ratio G' to build (None: per layer, the gcd of surviving group sizes).
    Returns the new layout of every linear layer. Model-level config is not touched (see export).
    """
    adapter = get_adapter(model)
    fn = adapter.slice_heads
    if fn is None:
        raise UserError(f"head surgery is not implemented for {adapter.model_type}; "
                        f"supported: {', '.join(SURGERY)} (zero-ablation works for every family)")
    layers = {l.index: l for l in adapter.linear_layers(model)}
    unknown = [li for li in removed if li not in layers]
    if unknown:
        raise UserError(f"layers {unknown} are not linear-attention layers; those are {sorted(layers)}")
    out = {}
    for li, layer in layers.items():
        hs = sorted(set(int(h) for h in removed.get(li, ())))
        bad = [h for h in hs if not 0 <= h < layer.layout.h_v]
        if bad:
            raise UserError(f"layer {li} has value heads 0..{layer.layout.h_v - 1}; got {bad}")
        gp, keys = regroup(layer.layout, hs, group)
        if hs or gp != layer.layout.group:
            fn(layer.module, layer.layout, keys)
        out[li] = adapter.layout_of(layer.module)
    return out
