"""Physical head removal: slice every tensor coupled to a value head, in place, one function per family.

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
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from ..adapters import HeadLayout, get_adapter
from ..errors import UserError

KeyHeads = list[tuple[int, list[int]]]  # new key heads in order: (original key head, its value heads)


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


def _span(starts: Iterable[int], width: int) -> torch.Tensor:
    return torch.tensor([s + r for s in starts for r in range(width)], dtype=torch.long)


def _set(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(mod, name)
    setattr(mod, name, nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad))


def _rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    _set(lin, "weight", lin.weight.data[idx.to(lin.weight.device)])
    if lin.bias is not None:
        _set(lin, "bias", lin.bias.data[idx.to(lin.bias.device)])
    lin.out_features = len(idx)


def _cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    _set(lin, "weight", lin.weight.data[:, idx.to(lin.weight.device)])
    lin.in_features = len(idx)


def _conv(conv: nn.Conv1d, idx: torch.Tensor) -> None:
    """Depthwise conv1d (groups == channels): keep channels ``idx``."""
    _set(conv, "weight", conv.weight.data[idx.to(conv.weight.device)])
    if conv.bias is not None:
        _set(conv, "bias", conv.bias.data[idx.to(conv.bias.device)])
    conv.in_channels = conv.out_channels = conv.groups = len(idx)


def _gdn_conv_channels(lo: HeadLayout, keys: KeyHeads) -> torch.Tensor:
    """Channels of the [q | k | v] conv (and of Qwen3.5's in_proj_qkv) for the new head set."""
    kd = lo.h_k * lo.k
    q = _span([g * lo.k for g, _ in keys], lo.k)
    k = _span([kd + g * lo.k for g, _ in keys], lo.k)
    v = _span([2 * kd + j * lo.v for _, vs in keys for j in vs], lo.v)
    return torch.cat([q, k, v])


def _gdn_common(m: nn.Module, lo: HeadLayout, keys: KeyHeads, out: str = "out_proj") -> None:
    """Tensors shared by the Gated DeltaNet families: conv, A_log, dt_bias, the output projection
    (``out``: its name); layer attributes."""
    vals = [j for _, vs in keys for j in vs]
    vi = torch.tensor(vals, dtype=torch.long)
    _conv(m.conv1d, _gdn_conv_channels(lo, keys))
    _set(m, "A_log", m.A_log.data[vi.to(m.A_log.device)])
    _set(m, "dt_bias", m.dt_bias.data[vi.to(m.dt_bias.device)])
    _cols(getattr(m, out), _span([j * lo.v for j in vals], lo.v))
    m.num_k_heads, m.num_v_heads = len(keys), len(vals)
    m.key_dim, m.value_dim = m.num_k_heads * lo.k, m.num_v_heads * lo.v
    m.conv_dim = 2 * m.key_dim + m.value_dim


def qwen3_next(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Fused, interleaved per key group (``fix_query_key_value_ordering``):
    in_proj_qkvz rows per group g: [q_g (K) | k_g (K) | v (G·V) | z (G·V)];
    in_proj_ba rows per group g: [b (G) | a (G)]. The conv sees [q all | k all | v all]."""
    G = lo.group
    blk = 2 * lo.k + 2 * G * lo.v
    qkvz, ba = [], []
    for g, vs in keys:
        base = g * blk
        loc = [j - g * G for j in vs]
        qkvz += [_span([base], 2 * lo.k),  # q_g then k_g
                 _span([base + 2 * lo.k + i * lo.v for i in loc], lo.v),
                 _span([base + 2 * lo.k + G * lo.v + i * lo.v for i in loc], lo.v)]
        ba += [torch.tensor([g * 2 * G + i for i in loc]), torch.tensor([g * 2 * G + G + i for i in loc])]
    _rows(m.in_proj_qkvz, torch.cat(qkvz))
    _rows(m.in_proj_ba, torch.cat(ba).long())
    _gdn_common(m, lo, keys)


def qwen3_5(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Separate projections: in_proj_qkv rows = conv channels [q all | k all | v all]; in_proj_z
    rows per value head (V each); in_proj_b, in_proj_a one row per value head."""
    vals = [j for _, vs in keys for j in vs]
    _rows(m.in_proj_qkv, _gdn_conv_channels(lo, keys))
    _rows(m.in_proj_z, _span([j * lo.v for j in vals], lo.v))
    vi = torch.tensor(vals, dtype=torch.long)
    _rows(m.in_proj_b, vi)
    _rows(m.in_proj_a, vi)
    _gdn_common(m, lo, keys)


def olmo_hybrid(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Fully separate projections: q_proj, k_proj rows per key head (K each); v_proj and the
    output gate g_proj rows per value head (V each); a_proj, b_proj one row per value head; the
    conv sees [q all | k all | v all]; o_proj columns per value head."""
    vals = [j for _, vs in keys for j in vs]
    for lin in (m.q_proj, m.k_proj):
        _rows(lin, _span([g * lo.k for g, _ in keys], lo.k))
    for lin in (m.v_proj, m.g_proj):
        _rows(lin, _span([j * lo.v for j in vals], lo.v))
    vi = torch.tensor(vals, dtype=torch.long)
    _rows(m.a_proj, vi)
    _rows(m.b_proj, vi)
    _gdn_common(m, lo, keys, out="o_proj")


def kimi_linear(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Kimi Delta Attention (H_k = H_v, K = V = head_dim): q/k/v_proj rows, conv channels of q, k
    and v, the forget gate's f_b_proj rows, dt_bias [H·K] and A_log [1, 1, H, 1], b_proj rows
    (beta), g_b_proj rows (output gate), o_proj columns."""
    hs = [j for _, vs in keys for j in vs]
    d, n = lo.k, lo.h_v
    ch = _span([h * d for h in hs], d)
    for lin in (m.q_proj, m.k_proj, m.v_proj, m.g_b_proj, m.forget_gate.f_b_proj):
        _rows(lin, ch)
    _conv(m.conv1d, torch.cat([ch, ch + n * d, ch + 2 * n * d]))
    fg = m.forget_gate
    _set(fg, "dt_bias", fg.dt_bias.data[ch.to(fg.dt_bias.device)])
    _set(fg, "A_log", fg.A_log.data[:, :, torch.tensor(hs).to(fg.A_log.device)])
    _rows(m.b_proj, torch.tensor(hs, dtype=torch.long))
    _cols(m.o_proj, ch)
    m.num_heads = fg.num_heads = len(hs)
    m.qkv_dim = fg.qkv_dim = len(hs) * d
    m.conv_dim = 3 * m.qkv_dim


SURGERY: dict[str, Callable[[nn.Module, HeadLayout, KeyHeads], None]] = {
    "qwen3_next": qwen3_next,
    "qwen3_5": qwen3_5,
    "kimi_linear": kimi_linear,
    "olmo_hybrid": olmo_hybrid,
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
    fn = SURGERY.get(adapter.model_type)
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
