"""Zero-shot head pruning: scores -> plan -> surgery -> export, verified against the masked model.

    stats = stratify.head_stats(dyn)                           # r̄, n̄, d per head [L, H]
    removed = get_method("jrnp", alpha=0.5).select(stats, Budget("fraction", 0.389), "per_layer")
    plan = make_plan(model, removed, model_id=..., method="jrnp", ...)
    export(model, plan, "out/model")                           # physical surgery + save_pretrained
"""

from .plan import Plan, fingerprint, make_plan, model_facts
from .scores import METHODS, RANKINGS, Budget, Scorer, get_method, select
from .surgery import prune_heads, regroup

__all__ = ["Plan", "fingerprint", "make_plan", "model_facts", "METHODS", "RANKINGS", "Budget",
           "Scorer", "get_method", "select", "prune_heads", "regroup"]
