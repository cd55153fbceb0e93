"""Settings of the compress stage, checked before anything runs (``CompressConfig.validate``: one-line
UserError). Every field is written to the run's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .quant import PRECISIONS, check_precision


@dataclass
class CompressConfig:
    budgets: tuple[float, ...] = (0.75, 0.5, 0.25, 0.125)  # shares of the fp32 state bytes
    methods: tuple[str, ...] = ("jrnp",)  # head orders for pruning-only / precision-only (prune.scores)
    alpha: float = 0.5
    ladder: tuple[str, ...] = ("bf16", "int8_head")  # precision-only rungs, coarser last
    sensitivity: tuple[str, ...] = ("bf16", "fp8_e4m3_head", "int8_head", "drop")  # the planner's options too
    all_heads: tuple[str, ...] = ("int8_head", "int8_row")  # each applied to every head, vs the unmodified model
    chunk: int = 64  # prefill chunk between stored (rounded) states, tokens
    tasks: tuple[str, ...] = ("mqar", "niah")
    eval_n: int = 32
    eval_seed: int = 10**9  # held-out evaluation seeds (tasks.EVAL_SEED_BASE)
    sens_n: int = 8  # items per task for the per-head sensitivity table (the planner's costs)
    sens_seed: int = 10**9 + 10**7  # other held-out items than the evaluation's
    max_new_tokens: int = 8
    random_seeds: int = 2
    controls: tuple[str, ...] = ("any",)  # random controls: "any" (count/byte-matched), "layer" (layer-matched too)
    calib_suite: str = "natural"
    calib_tokens: int = 256
    calib_stride: int = 8
    seed: int = 0
    data_dir: str | None = None

    def validate(self) -> None:
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
