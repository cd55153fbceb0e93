"""Qwen3.5 (text part): Gated DeltaNet with separate ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``,
``in_proj_a``; scalar decay per value head. A ConditionalGeneration checkpoint loads its text part."""

from .base import Adapter

ADAPTER = Adapter(
    model_type="qwen3_5",
    modeling_module="transformers.models.qwen3_5.modeling_qwen3_5",
    layer_class="Qwen3_5GatedDeltaNet",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
)
