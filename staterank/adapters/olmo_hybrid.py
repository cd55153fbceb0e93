"""OLMo-hybrid: Gated DeltaNet (same rule as Qwen3-Next; beta may be scaled to [0, 2] by
``allow_neg_eigval`` before the rule is called, which the capture sees as passed)."""

from .base import Adapter

ADAPTER = Adapter(
    model_type="olmo_hybrid",
    modeling_module="transformers.models.olmo_hybrid.modeling_olmo_hybrid",
    layer_class="OlmoHybridGatedDeltaNet",
    out_proj="o_proj",
    chunk_rule="torch_chunk_gated_delta_rule",
    recurrent_rule="torch_recurrent_gated_delta_rule",
)
