"""Qwen3-Next (the paper's model): Gated DeltaNet with a fused, per-key-group interleaved
``in_proj_qkvz`` / ``in_proj_ba`` layout; scalar decay per value head."""

from .base import Adapter

ADAPTER = Adapter(
    model_type="qwen3_next",
    modeling_module="transformers.models.qwen3_next.modeling_qwen3_next",
    layer_class="Qwen3NextGatedDeltaNet",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
)
