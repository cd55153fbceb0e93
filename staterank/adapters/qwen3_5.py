"""Qwen3.5 (text part): Gated DeltaNet with separate ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``,
``in_proj_a``; scalar decay per value head. A ConditionalGeneration checkpoint loads its text part."""

import torch
import torch.nn as nn

from .base import Adapter, HeadLayout
from .slicing import KeyHeads, gdn_common, gdn_conv_channels, rows, span, value_heads


def slice_heads(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Separate projections: in_proj_qkv rows = conv channels [q all | k all | v all]; in_proj_z
    rows per value head (V each); in_proj_b, in_proj_a one row per value head."""
    vals = value_heads(keys)
    rows(m.in_proj_qkv, gdn_conv_channels(lo, keys))
    rows(m.in_proj_z, span([j * lo.v for j in vals], lo.v))
    vi = torch.tensor(vals, dtype=torch.long)
    rows(m.in_proj_b, vi)
    rows(m.in_proj_a, vi)
    gdn_common(m, lo, keys)


def tiny_config(h_k, h_v, k, v, **common):
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(**common, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                             linear_num_key_heads=h_k, linear_num_value_heads=h_v, linear_key_head_dim=k,
                             linear_value_head_dim=v, tie_word_embeddings=True)


ADAPTER = Adapter(
    model_type="qwen3_5",
    modeling_module="transformers.models.qwen3_5.modeling_qwen3_5",
    layer_class="Qwen3_5GatedDeltaNet",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
    slice_heads=slice_heads,
    tiny_config=tiny_config,
)
