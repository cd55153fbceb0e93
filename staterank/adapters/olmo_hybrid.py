"""OLMo-hybrid: Gated DeltaNet (same rule as Qwen3-Next; beta may be scaled to [0, 2] by
``allow_neg_eigval`` before the rule is called, which the capture sees as passed)."""

import torch
import torch.nn as nn

from .base import Adapter, HeadLayout
from .slicing import KeyHeads, gdn_common, rows, span, value_heads


def slice_heads(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Fully separate projections: q_proj, k_proj rows per key head (K each); v_proj and the
    output gate g_proj rows per value head (V each); a_proj, b_proj one row per value head; the
    conv sees [q all | k all | v all]; o_proj columns per value head."""
    vals = value_heads(keys)
    for lin in (m.q_proj, m.k_proj):
        rows(lin, span([g * lo.k for g, _ in keys], lo.k))
    for lin in (m.v_proj, m.g_proj):
        rows(lin, span([j * lo.v for j in vals], lo.v))
    vi = torch.tensor(vals, dtype=torch.long)
    rows(m.a_proj, vi)
    rows(m.b_proj, vi)
    gdn_common(m, lo, keys, out="o_proj")


def tiny_config(h_k, h_v, k, v, **common):
    from transformers import OlmoHybridConfig

    return OlmoHybridConfig(**common, num_attention_heads=2, num_key_value_heads=1, linear_num_key_heads=h_k,
                            linear_num_value_heads=h_v, linear_key_head_dim=k, linear_value_head_dim=v,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)


ADAPTER = Adapter(
    model_type="olmo_hybrid",
    modeling_module="transformers.models.olmo_hybrid.modeling_olmo_hybrid",
    layer_class="OlmoHybridGatedDeltaNet",
    out_proj="o_proj",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
    slice_heads=slice_heads,
    tiny_config=tiny_config,
)
