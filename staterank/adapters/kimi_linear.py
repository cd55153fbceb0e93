"""Kimi Linear: Kimi Delta Attention, H_k = H_v, K = V, per-channel decay g [B, T, H, K]."""

from .base import Adapter

ADAPTER = Adapter(
    model_type="kimi_linear",
    modeling_module="transformers.models.kimi_linear.modeling_kimi_linear",
    layer_class="KimiLinearDeltaAttention",
    out_proj="o_proj",
    chunk_rule="chunk_kimi_delta_attention",
    recurrent_rule="recurrent_kimi_delta_attention",
    decay="channel",
    layout_attrs=("num_heads", "num_heads", "head_dim", "head_dim"),
)
