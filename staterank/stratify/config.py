"""``StratifyConfig``: every setting of the stratify stage, each declared once (``staterank.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..contexts import SUITES
from ..errors import UserError
from ..initmodel import INIT_GATES
from ..options import EPS, POS, SHARE1, check_fields, opt, record, section
from .heads import RULES


@dataclass
class StratifyConfig:
    # which contexts: the stage records their names and hash, so the suite's name is not recorded
    suite: str = opt("default", None, "context suite: default (7 contexts incl. the two repetition attacks) or natural",
                     choices=tuple(SUITES), run=True, record=False)
    rule: str = opt("two_cluster", None, "class rule on mean rank / bound: optimal two-cluster split or a fixed --threshold",
                    choices=RULES, run=True)
    threshold: float | None = opt(None, SHARE1, "with --rule threshold: low iff mean rank / bound < this")
    # the paper compares t=128 with t=2048; shorter contexts clamp both (stratify.json says so)
    t_early: int = opt(128, POS, "early position for the rank-order Spearman", run=True)
    t_late: int = opt(2048, POS, "late position (shorter contexts use their last)", run=True)
    max_tokens: int = opt(2048, POS, "tokens per context", run=True)
    stride: int = opt(4, POS, "measure every STRIDE-th token, plus t-early, t-late, last", run=True)
    init: bool = opt(True, None, "skip the same-architecture-at-initialisation baseline", run=True)
    init_gates: str = opt("auto", None, "gate init of the baseline: model (its own _init_weights), fla (FLA/Mamba-style), "
                          "auto = model unless that init is memoryless (median decay < 0.5 per token, as "
                          "transformers' Qwen3-Next/Qwen3.5 init), then fla", choices=INIT_GATES)
    init_seed: int = opt(0, None, cli=False)  # the run's --seed
    eps: float = opt(1e-4, EPS, "threshold-rank epsilon (paper Eq. 6)")

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix)
        with section(prefix):
            if self.rule == "threshold" and self.threshold is None:
                raise UserError("--rule threshold needs --threshold in (0, 1] (a normalised rank r̄_h / d)")
            if self.rule != "threshold" and self.threshold is not None:
                raise UserError(f"--threshold applies only with --rule threshold (the rule is {self.rule})")
            if self.max_tokens < 2:  # one token: every state has rank <= 1, nothing to stratify
                raise UserError(f"max_tokens must be >= 2, got {self.max_tokens}")
            if not 1 <= self.t_early < self.t_late:
                raise UserError(f"need 1 <= t_early < t_late, got {self.t_early}, {self.t_late}")

    def record(self) -> dict:
        """What the stage writes to config.json."""
        return record(self)
