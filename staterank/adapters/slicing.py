"""Tensor-slicing helpers an adapter's ``slice_heads`` is written with (a leaf: imports torch only).

``slice_heads(m, lo, keys)`` keeps, in place, the heads that ``keys`` lists: ``m`` the
linear-attention layer, ``lo`` its HeadLayout before surgery, ``keys`` the new key heads in order,
each (original key head, its value heads); see ``staterank.prune.surgery`` for how they are chosen.

Shapes: H_k key heads, H_v value heads, K key dim, V value dim.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

KeyHeads = list[tuple[int, list[int]]]  # new key heads in order: (original key head, its value heads)


def value_heads(keys: KeyHeads) -> list[int]:
    """The surviving value heads, in their new order."""
    return [j for _, vs in keys for j in vs]


def span(starts: Iterable[int], width: int) -> torch.Tensor:
    """Indices s..s+width-1 for every start s, in order."""
    return torch.tensor([s + r for s in starts for r in range(width)], dtype=torch.long)


def set_param(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(mod, name)
    setattr(mod, name, nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad))


def rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` of a linear layer."""
    set_param(lin, "weight", lin.weight.data[idx.to(lin.weight.device)])
    if lin.bias is not None:
        set_param(lin, "bias", lin.bias.data[idx.to(lin.bias.device)])
    lin.out_features = len(idx)


def cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` of a linear layer."""
    set_param(lin, "weight", lin.weight.data[:, idx.to(lin.weight.device)])
    lin.in_features = len(idx)


def conv(c: nn.Conv1d, idx: torch.Tensor) -> None:
    """Depthwise conv1d (groups == channels): keep channels ``idx``."""
    set_param(c, "weight", c.weight.data[idx.to(c.weight.device)])
    if c.bias is not None:
        set_param(c, "bias", c.bias.data[idx.to(c.bias.device)])
    c.in_channels = c.out_channels = c.groups = len(idx)


def gdn_conv_channels(lo, keys: KeyHeads) -> torch.Tensor:
    """Channels of a Gated DeltaNet's [q all | k all | v all] conv for the new head set."""
    kd = lo.h_k * lo.k
    q = span([g * lo.k for g, _ in keys], lo.k)
    k = span([kd + g * lo.k for g, _ in keys], lo.k)
    v = span([2 * kd + j * lo.v for j in value_heads(keys)], lo.v)
    return torch.cat([q, k, v])


def gdn_common(m: nn.Module, lo, keys: KeyHeads, out: str = "out_proj") -> None:
    """What every Gated DeltaNet family slices alike: the conv, A_log and dt_bias [H_v], the output
    projection's columns (``out``: its name), and the layer's size attributes."""
    vals = value_heads(keys)
    vi = torch.tensor(vals, dtype=torch.long)
    conv(m.conv1d, gdn_conv_channels(lo, keys))
    set_param(m, "A_log", m.A_log.data[vi.to(m.A_log.device)])
    set_param(m, "dt_bias", m.dt_bias.data[vi.to(m.dt_bias.device)])
    cols(getattr(m, out), span([j * lo.v for j in vals], lo.v))
    m.num_k_heads, m.num_v_heads = len(keys), len(vals)
    m.key_dim, m.value_dim = m.num_k_heads * lo.k, m.num_v_heads * lo.v
    m.conv_dim = 2 * m.key_dim + m.value_dim
