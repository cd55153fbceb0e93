"""Settings of the prune stage and of its sweep, checked before anything runs.

``PruneConfig.validate`` fails (UserError, one line) on every setting that can be wrong before a run
folder exists; ``run.run_prune`` calls it first. Every field is written to the run's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .scores import RANKINGS, Budget, get_method

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PruneConfig:
    method: str = "jrnp"
    alpha: float = 0.5
    fraction: float | None = 0.389  # exactly one of fraction / count / bytes
    count: int | None = None
    bytes: int | None = None
    ranking: str = "global"
    calib_suite: str = "natural"
    calib_tokens: int = 512
    calib_stride: int = 8  # positions measured for the time-mean rank r̄ (every 8th token)
    tasks: tuple[str, ...] = ("mqar", "niah")
    eval_n: int = 100
    eval_seed: int = 10**9  # held-out evaluation seeds (tasks.EVAL_SEED_BASE)
    max_new_tokens: int = 8
    random_seeds: int = 5
    state_context: int = 2048
    state_batch: int = 1
    decode_tokens: int = 32
    export: bool = True
    export_dtype: str | None = None  # float32 | bfloat16 | float16; None: the checkpoint's own dtype
    check_tol: float = 1e-4  # absolute floor; the check allows max(this, 3e-5 (fp32) or 1e-2 (half) x max |logit|)
    seed: int = 0
    plan_file: str | None = None  # apply this plan instead of scoring
    data_dir: str | None = None  # calibration data (default: $STATERANK_DATA, else the data bundled with staterank)

    def budget(self) -> Budget:
        given = [(k, v) for k, v in (("fraction", self.fraction), ("count", self.count), ("bytes", self.bytes))
                 if v is not None]
        if len(given) != 1:
            raise UserError("give exactly one of --fraction, --count, --bytes")
        return Budget(*given[0])

    def validate(self) -> None:
        from ..contexts import SUITES

        self.budget()
        if not self.plan_file:  # a given plan names its own method
            get_method(self.method, alpha=self.alpha, seed=self.seed)
        if self.calib_suite not in SUITES:
            raise UserError(f"unknown calibration suite {self.calib_suite!r}; choose one of {', '.join(SUITES)}")
        if self.ranking not in RANKINGS:
            raise UserError(f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")
        if self.eval_n < 1 or self.random_seeds < 0 or self.state_context < 1 or self.state_batch < 1:
            raise UserError("eval_n, state_context, state_batch must be >= 1 and random_seeds >= 0")
        if self.export_dtype is not None and self.export_dtype not in EXPORT_DTYPES:
            raise UserError(f"unknown export dtype {self.export_dtype!r}; choose one of {', '.join(EXPORT_DTYPES)}")
        from ..tasks import get_task

        for t in self.tasks:
            get_task(t)


@dataclass
class SweepConfig:
    base: PruneConfig = field(default_factory=PruneConfig)
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    fractions: tuple[float, ...] = (0.125, 0.25, 0.389, 0.5)
    methods_extra: tuple[str, ...] = ("inverse",)  # plotted beside JRNP at α = base.alpha
