"""``ProbeConfig``: every setting of one probe run, with its defaults, checked in one place."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..data import check_given
from ..errors import UserError
from . import groups as G
from .ablate import MODES
from .scores import HeadScores
from .tasks import ProbeTask, check_seed, make_task


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """What ``probe`` runs and where it writes (``probe(loaded, **fields)`` builds one).

    ``out``: the run folder to create or resume. ``tasks``: probe task names (``make_task``), or
    ``task_objects``: ready ProbeTask objects instead (tests, custom tasks). ``groups``: group
    kinds (``groups.make_groups``) of ``fraction`` of all value heads or ``count`` heads, random
    controls drawn ``seeds`` times from ``seed`` (>= 0; also the tasks' evaluation seed).
    ``mode``: zero or mean ablation. ``single_head``: also every head alone, on the first
    ``single_limit`` items. ``scores``: HeadScores or a JSON file of them (stratify ``HeadStats``);
    measured on ``calib_texts`` prose segments of ``calib_tokens`` tokens when None and low/high
    groups are asked for. ``data_dir``: where niah / ppl / calibration prose and gsm8k data are
    read (must exist when given). ``limit``, ``batch_size``, ``niah_lengths``, ``niah_depths``,
    ``max_new_tokens``, ``n_shot``: passed to ``make_task``. ``lm_eval_tasks``: lm-evaluation-
    harness tasks run on every non-single-head condition (``lm_eval_limit`` items each, batches of
    ``lm_eval_batch_size``), with task YAMLs also read from the ``lm_eval_include`` folders.

    Constructing one checks mode, seed, data_dir and the group kinds (one-line UserErrors); the
    group size, the tasks and their data are checked by ``probe`` before a run folder exists.
    """

    out: str | os.PathLike
    tasks: Sequence[str] = ("niah",)
    groups: Sequence[str] = ("low", "high", "random", "layer_random")
    fraction: float | None = None
    count: int | None = None
    seeds: int = 5
    seed: int = 0
    limit: int | None = None
    mode: str = "zero"
    single_head: bool = False
    single_limit: int | None = None
    scores: HeadScores | str | os.PathLike | None = None
    batch_size: int = 16
    data_dir: str | None = None
    niah_lengths: Sequence[int] | None = None
    niah_depths: Sequence[float] | None = None
    max_new_tokens: int | None = None
    n_shot: int = 0
    calib_texts: int = 8
    calib_tokens: int = 512
    progress: bool = True
    task_objects: Sequence[ProbeTask] | None = None
    lm_eval_tasks: Sequence[str] = ()
    lm_eval_limit: int | None = None
    lm_eval_include: Sequence[str | os.PathLike] = ()
    lm_eval_batch_size: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"unknown --mode {self.mode!r}; choose one of {', '.join(MODES)}")
        check_seed(self.seed)
        check_given(self.data_dir)
        G.check_kinds(self.groups, self.seeds)
        for d in self.lm_eval_include:  # before a run folder exists
            if not os.path.isdir(d):
                raise UserError(f"--lm-eval-include {d}: no such folder")

    def make_tasks(self) -> list[ProbeTask]:
        """``task_objects`` when given, else the named tasks built with this run's options."""
        if self.task_objects is not None:
            return list(self.task_objects)
        return [make_task(t, limit=self.limit, seed=self.seed, batch_size=self.batch_size, data_dir=self.data_dir,
                          niah_lengths=self.niah_lengths, niah_depths=self.niah_depths,
                          max_new_tokens=self.max_new_tokens, n_shot=self.n_shot) for t in self.tasks]
