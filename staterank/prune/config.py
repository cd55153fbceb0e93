"""Settings of the prune stage and of its sweep, each declared once (``staterank.options``), checked
before anything runs.

``PruneConfig.validate`` fails (UserError, one line) on every setting that can be wrong before a run
folder exists; ``run.run_prune`` calls it first. Every field is written to the run's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..options import NONNEG, POS, SHARE, UNIT, check_fields, opt, section
from .scores import METHODS, RANKINGS, Budget, get_method

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PruneConfig:
    method: str = opt("jrnp", None, lambda: f"scoring method: {', '.join(METHODS)}", run=True)
    alpha: float = opt(0.5, UNIT, "JRNP weight of rank vs norm, in [0, 1]", run=True)
    # the budget: exactly one of fraction / count / bytes
    fraction: float | None = opt(0.389, SHARE, "share of value heads to remove (0.389 = 7/18)", group="budget", run=True)
    count: int | None = opt(None, POS, "number of value heads to remove", group="budget")
    bytes: int | None = opt(None, POS, "recurrent-state bytes per sequence to free (at least)", group="budget")
    # whole key groups by default: the export then shrinks every state and decodes faster (issue #21);
    # the paper's global top-k usually leaves uneven heads per layer, which stock configs cannot hold
    ranking: str = opt("key_groups", None, "whole key-head groups (a key head with all its value heads), round(fraction "
                       "x H_k) from every layer: exportable, no key head duplicated, every state shrinks; per_layer: "
                       "the same number of value heads from every layer (exportable; may duplicate key heads); global: "
                       "the paper's top-k over all heads (usually uneven: pruned in memory, not exported)",
                       choices=RANKINGS, run=True)
    calib_suite: str = opt("natural", None, "calibration context suite", flag="--calib", run=True)
    calib_tokens: int = opt(512, POS, "tokens per calibration context", run=True)
    calib_stride: int = opt(8, POS, "measure the rank every N tokens (for the time-mean rank r̄)")
    tasks: tuple[str, ...] = opt(("mqar", "niah"), None, "comma-separated builtin tasks", flag="--eval", run=True)
    eval_n: int = opt(100, POS, "items per task", run=True)
    eval_seed: int = opt(10**9, None, cli=False)  # held-out evaluation seeds (tasks.EVAL_SEED_BASE)
    max_new_tokens: int = opt(8, POS, cli=False)
    random_seeds: int = opt(5, NONNEG, "seeds per random control (0: no random controls)", run=True)
    state_context: int = opt(2048, POS, "context length for state bytes", run=True)
    state_batch: int = opt(1, POS, "batch size for state bytes")
    decode_tokens: int = opt(32, POS, "tokens for the decode-speed measurement")
    export: bool = opt(True, None, "prune in memory only (any plan; no DIR/model/)")
    export_dtype: str | None = opt(None, None, "dtype of the exported checkpoint (default: the checkpoint's own, e.g. "
                                   "bf16 stays bf16 when pruned on CPU)", choices=EXPORT_DTYPES)
    # absolute floor; the check allows max(this, 3e-5 (fp32) or 1e-2 (half) x max |logit|)
    check_tol: float = opt(1e-4, None, cli=False)
    seed: int = opt(0, None, cli=False)  # the run's --seed
    plan_file: str | None = opt(None, None, "apply this plan.json instead of scoring", flag="--plan")
    data_dir: str | None = opt(None, None, cli=False)  # the run's --data-dir (calibration prose)

    def budget(self) -> Budget:
        given = [(k, v) for k, v in (("fraction", self.fraction), ("count", self.count), ("bytes", self.bytes))
                 if v is not None]
        if len(given) != 1:
            raise UserError("give exactly one of --fraction, --count, --bytes")
        return Budget(*given[0])

    def validate(self, prefix: str = "") -> None:
        from ..contexts import SUITES
        from ..tasks import get_task

        check_fields(self, prefix)
        with section(prefix):
            self.budget()
            if not self.plan_file:  # a given plan names its own method
                get_method(self.method, alpha=self.alpha, seed=self.seed)
            if self.calib_suite not in SUITES:
                raise UserError(f"unknown calibration suite {self.calib_suite!r}; choose one of {', '.join(SUITES)}")
            for t in self.tasks:
                get_task(t)


@dataclass
class SweepConfig:
    base: PruneConfig = field(default_factory=PruneConfig)
    alphas: tuple[float, ...] = opt((0.0, 0.25, 0.5, 0.75, 1.0), UNIT, "sweep: alphas")
    fractions: tuple[float, ...] = opt((0.125, 0.25, 0.389, 0.5), SHARE, "sweep: fractions")
    methods_extra: tuple[str, ...] = ("inverse",)  # plotted beside JRNP at α = base.alpha

    def validate(self) -> None:
        check_fields(self)
        if not self.alphas or not self.fractions:
            raise UserError("--sweep needs at least one alpha and one fraction")
        self.base.validate()
