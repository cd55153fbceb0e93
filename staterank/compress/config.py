"""Settings of the compress stage, checked before anything runs (``CompressConfig.validate``: one-line
UserError). Every field is written to the run's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..options import NONNEG, POS, SHARE, UNIT, check_fields, opt, section
from .quant import PRECISIONS, check_precision


@dataclass
class CompressConfig:
    """Every option declared once (``staterank.options``): the command's flags come from these fields."""

    budgets: list[float] = opt((0.75, 0.5, 0.25, 0.125), SHARE, "shares of the fp32 state bytes", run=True)
    methods: list[str] = opt(("jrnp",), None, "head orders for pruning-/precision-only: jrnp, rank, norm, inverse, ...", run=True)
    alpha: float = opt(0.5, UNIT, "JRNP weight of rank vs norm", run=True)
    ladder: list[str] = opt(("bf16", "int8_head"), None, "precision-only rungs, coarser last", run=True)
    sensitivity: list[str] = opt(("bf16", "fp8_e4m3_head", "int8_head", "drop"), None,
                                 "precisions of the per-head table, the planner's options", run=True)
    all_heads: list[str] = opt(("int8_head", "int8_row"), None, "precisions applied to every head vs the unmodified model", run=True)
    chunk: int = opt(64, POS, "prefill tokens between stored (rounded) states", run=True)
    tasks: list[str] = opt(("mqar", "niah"), None, "comma-separated builtin tasks", flag="--eval", run=True)
    eval_n: int = opt(32, POS, "items per task for accuracy", run=True)
    eval_seed: int = opt(10**9, None, cli=False)  # held-out evaluation seeds (tasks.EVAL_SEED_BASE)
    sens_n: int = opt(8, POS, "items per task for the sensitivity table (the planner's costs)", run=True)
    sens_seed: int = opt(10**9 + 10**7, None, cli=False)  # other held-out items than the evaluation's
    max_new_tokens: int = opt(8, POS, "greedy tokens per answer", run=True)
    random_seeds: int = opt(2, NONNEG, "random controls per plan", run=True)
    controls: list[str] = opt(("any",), None, "random controls: any (same precisions on random heads: count- and "
                              "byte-matched), layer (within each layer: layer-matched too), or any,layer", run=True)
    calib_suite: str = opt("natural", None, "calibration context suite for rank and norm", flag="--calib", run=True)
    calib_tokens: int = opt(256, POS, "tokens per calibration context", run=True)
    calib_stride: int = opt(8, POS, "measure the rank every N tokens")
    seed: int = opt(0, None, cli=False)  # the run's --seed
    data_dir: str | None = opt(None, None, cli=False)  # the run's --data-dir

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix)
        with section(prefix):
            self._validate()

    def _validate(self) -> None:
        from ..contexts import SUITES
        from ..prune.scores import get_method
        from ..tasks import get_task

        if not self.budgets or not all(0 < b < 1 for b in self.budgets):
            raise UserError(f"budgets are shares of the fp32 state bytes in (0, 1), got {list(self.budgets)}")
        if not self.methods:
            raise UserError("give at least one head-ordering method")
        for m in self.methods:
            get_method(m, alpha=self.alpha, seed=self.seed)
        for p in (*self.ladder, *self.sensitivity, *self.all_heads):
            check_precision(p)
        if not self.ladder or "drop" in self.ladder or "fp32" in self.ladder:
            raise UserError(f"the precision ladder needs rungs other than fp32 and drop, got {list(self.ladder)}")
        if "fp32" in self.sensitivity:
            raise UserError("fp32 is the reference of the sensitivity table (identity); leave it out")
        if self.chunk < 1 or self.eval_n < 1 or self.sens_n < 1 or self.random_seeds < 0 or self.max_new_tokens < 1:
            raise UserError("chunk, eval_n, sens_n, max_new_tokens must be >= 1 and random_seeds >= 0")
        if not set(self.controls) <= {"any", "layer"}:
            raise UserError(f"random controls are any and/or layer, got {list(self.controls)}")
        if self.sens_seed == self.eval_seed:
            raise UserError("the sensitivity items must not be the evaluation items: give another sens_seed")
        if self.calib_suite not in SUITES:
            raise UserError(f"unknown calibration suite {self.calib_suite!r}; choose one of {', '.join(SUITES)}")
        for t in self.tasks:
            get_task(t)
        if not self.tasks:
            raise UserError("give at least one task")


__all__ = ["CompressConfig", "PRECISIONS"]
