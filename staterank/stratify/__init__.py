"""Stratification: low-/high-rank head classes, bimodality, consistency across time and contexts,
decay → rank, each beside the same architecture at initialisation.

    stats = head_stats(dyn)                  # HeadStats: r̄_h, final rank, n̄_h, d, log decay, each [L, H]
    cls = classify(stats)                    # Classes: low / high (layer, head) lists, per-head labels
    summary = stratify_stats(dyn, names)     # every statistic of stratify.json for one model
    run = run_stratify(loaded, contexts, out)  # the stage: analyze model and init, write the run folder

Modules: ``config`` (StratifyConfig, every option declared once), ``heads`` (per-head summaries,
classes), ``consistency`` (the statistics), both pure functions of the dynamics; ``stage`` (run
folder, stratify.json, heads.csv), the only one that touches files. The model at initialisation is built by ``staterank.initmodel``, and dynamics of
several runs are merged by ``staterank.dynamics``.

``dyn`` is what ``analyze`` / ``capture`` produce for N contexts: ``threshold_rank`` and
``nuclear_norm`` [N, L, H, P] (NaN where a context has no token at that position), ``positions`` [P]
(1-based token counts), ``layers`` [L] (model layer indices), ``bound`` [P] or [L, P]
(min(t, K, V)) and ``log_decay`` [N, L, H] (mean log decay per token, log of the gate).

Definitions (documented in ``report.md`` as well):

* mean rank r̄_h: time average of the threshold rank, the trapezoid rule over the scheduled
  positions divided by their span, so a stride, log or mixed schedule all approximate the mean
  over every token; then the mean over contexts. final rank: at each context's last position.
* d: the rank bound at the last position, min(T, K, V), per layer; normalised rank = r̄_h / d.
* classes (``two_cluster``, default): the optimal 2-means split of normalised rank (1-D k-means is
  solved exactly: the best contiguous split of the sorted values, equal to Otsu's threshold); low iff
  below the midpoint between the two clusters. ``gap`` is the distance between the clusters' nearest
  members, ``separation`` the between-cluster share of variance (Otsu's η). ``threshold``: low iff
  normalised rank < the given threshold.
* bimodality coefficient: Sarle's, sample-size corrected,
  BC = (g² + 1) / (κ + 3(n−1)² / ((n−2)(n−3))) with g, κ the bias-corrected sample skewness and
  excess kurtosis (scipy.stats, ``bias=False``); BC > 5/9 suggests bimodality.
* Spearman: per context and layer, between the H-vectors of rank at t_early and t_late; per layer
  the mean over contexts.
* cosine: between contexts' per-head mean-rank (resp. mean-nuclear-norm) vectors over all L·H heads.
  Vectors of positive numbers have high cosines whatever their order, so the centred cosine (Pearson)
  and the initialisation baseline are reported beside it, and ``spearman_contexts``: Spearman ρ of
  the per-head mean-rank vectors between contexts (do heads keep their rank order across inputs?).
* label agreement: share of heads with the same label when each context is classified alone, and
  Cohen's κ (agreement beyond chance).
* decay: x = log(−mean log decay) (log forgetting rate per token); R² of normalised rank on x by a
  linear fit and by a monotone (isotonic) fit (in-sample), Spearman ρ, and the in-sample accuracy of
  the best single decay threshold at reproducing the classes, beside the majority-class rate.
"""

from ..dynamics import merge_dynamics
from ..initmodel import INIT_GATES, MEMORYLESS_DECAY, auto_init_gates, init_copy, own_init_decay
from .config import StratifyConfig
from .consistency import (
                          PAPER,
                          bimodality_coefficient,
                          cosine_matrix,
                          decay_vs_rank,
                          delta,
                          label_agreement,
                          spearman_early_late,
                          stratify_stats,
)
from .heads import RULES, Classes, HeadStats, classify, head_stats, two_means
from .stage import default_positions, jsonable, load_stratify, run_stratify, stratify_from_runs, summarise

__all__ = [
    "PAPER", "RULES", "INIT_GATES", "MEMORYLESS_DECAY", "HeadStats", "Classes", "StratifyConfig",
    "head_stats", "classify", "two_means", "bimodality_coefficient", "spearman_early_late", "cosine_matrix",
    "label_agreement", "decay_vs_rank", "stratify_stats", "delta", "default_positions", "init_copy",
    "own_init_decay", "auto_init_gates", "merge_dynamics", "jsonable", "summarise", "run_stratify",
    "stratify_from_runs", "load_stratify",
]
