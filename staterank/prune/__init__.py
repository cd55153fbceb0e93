"""Zero-shot head pruning: scores -> plan -> surgery -> export, verified against the masked model.

    stats = head_stats(trace.dynamics(), head_bytes)          # calibration statistics [L, H]
    plan = make_plan(model, get_method("jrnp", alpha=0.5).select(stats, Budget("fraction", 0.389), "per_layer"), ...)
    export(model, plan, "out/model")                           # physical surgery + save_pretrained
"""

from .plan import Plan, fingerprint, make_plan, model_facts
from .scores import METHODS, RANKINGS, Budget, HeadStats, Scorer, get_method, head_stats, select
from .surgery import prune_heads, regroup

__all__ = ["Plan", "fingerprint", "make_plan", "model_facts", "METHODS", "RANKINGS", "Budget", "HeadStats",
           "Scorer", "get_method", "head_stats", "select", "prune_heads", "regroup"]
