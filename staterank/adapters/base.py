"""What an adapter declares about one architecture family.

An adapter is a small frozen dataclass of *facts*: which modeling module holds the delta-rule
functions the layers call (transformers 5 looks them up as module globals at call time, so wrapping
them there sees exactly what the model computes), which module class is the linear-attention
layer, how to read its head layout, how pruning slices its tensors (``slice_heads``), which config
fields an export rewrites (``config_keys``), and the tiny random config tests build
(``tiny_config``). Everything family-specific lives in the family's module; see
docs/adding-a-family.md.

Shapes: B batch, T tokens, L layers, H heads (H_k key heads, H_v value heads), K key dim, V value dim.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch.nn as nn


@dataclass(frozen=True)
class HeadLayout:
    """Head layout of one linear-attention layer. Value head j reads key head j // (H_v // H_k)."""

    h_k: int
    h_v: int
    k: int
    v: int

    @property
    def group(self) -> int:
        return self.h_v // self.h_k

    def key_head(self, v_head: int) -> int:
        return v_head // self.group

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Per-sequence recurrent state shape [H_v, K, V]."""
        return (self.h_v, self.k, self.v)

    def state_bytes(self, dtype_bytes: int = 4) -> int:
        return self.h_v * self.k * self.v * dtype_bytes


@dataclass(frozen=True)
class LinearLayer:
    index: int  # the model's own layer index (into config.layer_types)
    module: nn.Module
    layout: HeadLayout


# The rule functions' parameters in call order: transformers' signatures, the same in all four
# families from 5.20 to 5.25. Calls are bound by these names, never by the signature of whatever
# object sits in the module: since 5.25 that is a hub-kernel wrapper taking (*args, **kwargs).
CHUNK_PARAMS = ("query", "key", "value", "g", "beta", "chunk_size", "initial_state", "output_final_state",
                "use_qk_l2norm_in_kernel")
RECURRENT_PARAMS = ("query", "key", "value", "g", "beta", "initial_state", "output_final_state",
                    "use_qk_l2norm_in_kernel")


@dataclass(frozen=True)
class Adapter:
    model_type: str
    modeling_module: str  # dotted path of the transformers modeling module
    layer_class: str  # class name of the linear-attention module
    chunk_rule: str  # name of the prefill (chunked) rule function in modeling_module
    recurrent_rule: str  # name of the one-token decode rule function
    # tiny_config(h_k=, h_v=, k=, v=, **common) -> a tiny random config of this family (tests, the
    # load-time self-test); ``common`` holds vocab_size, hidden_size, intermediate_size,
    # num_hidden_layers, layer_types, max_position_embeddings (see staterank.testing.tiny_config)
    tiny_config: Callable[..., Any]
    decay: str = "head"  # "head": g [B, T, H_v]; "channel": g [B, T, H_v, K] (Kimi)
    # attribute names on the layer module: (H_k, H_v, K, V)
    layout_attrs: tuple[str, str, str, str] = ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim")
    # the layer's output projection: its input [B, T, H_v·V] is every head's gated, normed output
    out_proj: str = "out_proj"
    # head pruning: slice_heads(layer, layout, keys) slices the layer's tensors in place (written
    # with adapters.slicing; see there for the arguments). None: this family cannot be pruned.
    slice_heads: Callable[..., None] | None = None
    # export: the config fields holding (H_k, H_v) (one field twice when the family has one count),
    # and a dict-valued config field whose "num_heads" the loader prefers to them ("": none)
    config_keys: tuple[str, str] = ("linear_num_key_heads", "linear_num_value_heads")
    config_dict: str = ""
    chunk_params: tuple[str, ...] = CHUNK_PARAMS
    recurrent_params: tuple[str, ...] = RECURRENT_PARAMS

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.modeling_module)

    @property
    def rule_names(self) -> tuple[str, str]:
        return (self.chunk_rule, self.recurrent_rule)

    def params_of(self, rule: str) -> tuple[str, ...]:
        return self.chunk_params if rule == self.chunk_rule else self.recurrent_params

    def layout_of(self, layer: nn.Module) -> HeadLayout:
        hk, hv, k, v = (int(getattr(layer, a)) for a in self.layout_attrs)
        return HeadLayout(h_k=hk, h_v=hv, k=k, v=v)

    def linear_layers(self, model: nn.Module) -> list[LinearLayer]:
        """All linear-attention layers of ``model`` in depth order."""
        out = []
        for mod in model.modules():
            if type(mod).__name__ == self.layer_class:
                out.append(LinearLayer(index=int(mod.layer_idx), module=mod, layout=self.layout_of(mod)))
        out.sort(key=lambda l: l.index)
        return out
