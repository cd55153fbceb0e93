"""Qwen3-Next (the paper's model): Gated DeltaNet with a fused, per-key-group interleaved
``in_proj_qkvz`` / ``in_proj_ba`` layout; scalar decay per value head."""

import torch
import torch.nn as nn

from .base import Adapter, HeadLayout
from .slicing import KeyHeads, gdn_common, rows, span


def slice_heads(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Fused, interleaved per key group (``fix_query_key_value_ordering``):
    in_proj_qkvz rows per group g: [q_g (K) | k_g (K) | v (G·V) | z (G·V)];
    in_proj_ba rows per group g: [b (G) | a (G)]. The conv sees [q all | k all | v all]."""
    G = lo.group
    blk = 2 * lo.k + 2 * G * lo.v
    qkvz, ba = [], []
    for g, vs in keys:
        base = g * blk
        loc = [j - g * G for j in vs]
        qkvz += [span([base], 2 * lo.k),  # q_g then k_g
                 span([base + 2 * lo.k + i * lo.v for i in loc], lo.v),
                 span([base + 2 * lo.k + G * lo.v + i * lo.v for i in loc], lo.v)]
        ba += [torch.tensor([g * 2 * G + i for i in loc]), torch.tensor([g * 2 * G + G + i for i in loc])]
    rows(m.in_proj_qkvz, torch.cat(qkvz))
    rows(m.in_proj_ba, torch.cat(ba).long())
    gdn_common(m, lo, keys)


def tiny_config(h_k, h_v, k, v, **common):
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(**common, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           linear_num_key_heads=h_k, linear_num_value_heads=h_v, linear_key_head_dim=k,
                           linear_value_head_dim=v, num_experts=0, tie_word_embeddings=True)


ADAPTER = Adapter(
    model_type="qwen3_next",
    modeling_module="transformers.models.qwen3_next.modeling_qwen3_next",
    layer_class="Qwen3NextGatedDeltaNet",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
    slice_heads=slice_heads,
    tiny_config=tiny_config,
)
