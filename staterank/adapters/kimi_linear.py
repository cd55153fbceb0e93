"""Kimi Linear: Kimi Delta Attention, H_k = H_v, K = V, per-channel decay g [B, T, H, K]."""

import torch
import torch.nn as nn

from .base import Adapter, HeadLayout
from .slicing import KeyHeads, cols, conv, rows, set_param, span, value_heads


def slice_heads(m: nn.Module, lo: HeadLayout, keys: KeyHeads) -> None:
    """Kimi Delta Attention (H_k = H_v, K = V = head_dim): q/k/v_proj rows, conv channels of q, k
    and v, the forget gate's f_b_proj rows, dt_bias [H·K] and A_log [1, 1, H, 1], b_proj rows
    (beta), g_b_proj rows (output gate), o_proj columns."""
    hs = value_heads(keys)
    d, n = lo.k, lo.h_v
    ch = span([h * d for h in hs], d)
    for lin in (m.q_proj, m.k_proj, m.v_proj, m.g_b_proj, m.forget_gate.f_b_proj):
        rows(lin, ch)
    conv(m.conv1d, torch.cat([ch, ch + n * d, ch + 2 * n * d]))
    fg = m.forget_gate
    set_param(fg, "dt_bias", fg.dt_bias.data[ch.to(fg.dt_bias.device)])
    set_param(fg, "A_log", fg.A_log.data[:, :, torch.tensor(hs).to(fg.A_log.device)])
    rows(m.b_proj, torch.tensor(hs, dtype=torch.long))
    cols(m.o_proj, ch)
    m.num_heads = fg.num_heads = len(hs)
    m.qkv_dim = fg.qkv_dim = len(hs) * d
    m.conv_dim = 3 * m.qkv_dim


def tiny_config(h_k, h_v, k, v, **common):
    """H_k = H_v and K = V here: ``h_k`` and ``v`` are not used."""
    from transformers import KimiLinearConfig

    return KimiLinearConfig(**common, num_attention_heads=2, num_key_value_heads=2, linear_num_heads=h_v,
                            linear_head_dim=k, pad_token_id=0, bos_token_id=1, eos_token_id=2)


ADAPTER = Adapter(
    model_type="kimi_linear",
    modeling_module="transformers.models.kimi_linear.modeling_kimi_linear",
    layer_class="KimiLinearDeltaAttention",
    out_proj="o_proj",
    chunk_rule="chunk_kimi_delta_attention",
    recurrent_rule="recurrent_kimi_delta_attention",
    decay="channel",
    layout_attrs=("num_heads", "num_heads", "head_dim", "head_dim"),
    config_keys=("linear_num_heads", "linear_num_heads"),
    config_dict="linear_attn_config",  # a checkpoint's sub-dict, preferred to linear_num_heads on load
    slice_heads=slice_heads,
    tiny_config=tiny_config,
)
