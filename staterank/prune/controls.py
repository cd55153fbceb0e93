"""Random controls of a prune plan (issue #9): count-, layer- and byte-matched random plans, and the
summary of their accuracies over seeds that prune.json carries."""

from __future__ import annotations

import numpy as np

from ..models import Loaded
from ..stratify import HeadStats
from .config import PruneConfig
from .plan import Plan, make_plan
from .scores import Budget, get_method


def control_plans(loaded: Loaded, stats: HeadStats, head_bytes: np.ndarray, plan: Plan,
                  cfg: PruneConfig) -> dict[str, list[Plan]]:
    """Random controls for ``plan`` (issue #9), one per seed, each matched to what the plan
    actually removed (not to the budget asked for: a ``--plan`` file has its own):
    count_matched — as many heads, anywhere; layer_matched — as many in each layer;
    byte_matched — at least as many recurrent-state bytes, anywhere; and for a key_groups plan
    group_matched — as many whole key groups (a key head with all its value heads) in each layer, so the
    control has the plan's layout, key heads and conv state too. Each kind draws from its own seed
    stream, so two kinds never share a random plan by construction."""
    kinds = {
        "count_matched": (Budget("count", len(plan.removed)), "global"),
        "layer_matched": (Budget("layer_counts", tuple(plan.counts())), "global"),
        "byte_matched": (Budget("bytes", plan.removed_state_bytes()), "global"),
    }
    groups = {hv // hk for hk, hv, _, _ in plan.facts["layouts"]}
    group = groups.pop() if len(groups) == 1 else 1
    if plan.ranking == "key_groups" and group > 1:
        kinds["group_matched"] = (Budget("layer_counts", tuple(plan.counts())), "key_groups")
    out: dict[str, list[Plan]] = {}
    for k, (kind, (b, ranking)) in enumerate(kinds.items()):
        out[kind] = []
        for s in range(cfg.random_seeds):
            seed = 1000 + 100_000 * k + s
            sc = get_method("random", seed=seed)
            out[kind].append(make_plan(loaded.model, sc.select(stats, b, ranking, head_bytes, group), model_id=loaded.spec,
                                       method="random", params={"seed": seed, "control": kind},
                                       ranking=ranking, budget=b.to_dict(), scores=sc.score(stats),
                                       calibration=plan.calibration))
    return out


def control_notes(head_bytes: np.ndarray, plan: Plan) -> list[str]:
    """Where two controls draw from the same distribution (so they are one control, twice)."""
    notes = []
    if np.ptp(np.asarray(head_bytes, dtype=float)) == 0:
        notes.append("byte_matched draws like count_matched: every value head holds the same state bytes")
    if len(plan.counts()) == 1:
        notes.append("layer_matched draws like count_matched: the model has one linear-attention layer")
    return notes


def _summ(accs: list[dict]) -> dict:
    """Mean and std over control seeds, per task."""
    out = {}
    for t in accs[0] if accs else {}:
        v = np.array([a[t]["acc"] for a in accs])
        out[t] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n_seeds": len(v),
                  "per_seed": v.tolist()}
    return out
