"""``ProbeConfig``: every setting of one probe run, each declared once (``staterank.options``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..data import check_given
from ..errors import UserError
from ..options import NONNEG, POS, SHARE, UNIT, check_fields, opt, section
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

    ``validate`` (called by ``run_probe`` first) checks every field, the tasks as ``make_task``
    builds them and the group kinds; the group size and the task data are checked by ``run_probe``
    before a run folder exists.
    """

    out: str | os.PathLike | None = opt(None, None, cli=False)
    tasks: list[str] = opt(("niah",), None, "comma-separated: niah, mqar, multihop, arith, gsm8k, ppl", run=True)
    groups: list[str] = opt(("low", "high", "random", "layer_random"), None,
                            "comma-separated: low, high, random, layer_random, byte_random", run=True)
    # some heads, not all: ablating every head leaves the random controls nothing else to draw
    fraction: float | None = opt(None, SHARE, "group size as a fraction of all value heads (default 7/18)", group="size",
                                  run=True)
    count: int | None = opt(None, POS, "group size in heads", group="size")
    seeds: int = opt(5, POS, "random draws per control", run=True)
    seed: int = opt(0, None, cli=False)  # the run's --seed
    limit: int | None = opt(None, POS, "items per task, exactly (defaults: niah 60 spread over the grid — fewer than its "
                            "cells measures that many cells spread over it —, others 100, ppl 32 windows)", run=True)
    mode: str = opt("zero", None, "ablation mode", choices=MODES, run=True)
    single_head: bool = opt(False, None, "also ablate every head alone (per-head costs, correlated with rank and "
                            "nuclear norm)", run=True)
    single_limit: int | None = opt(None, POS, "items per task for single-head ablations (default: all)", run=True)
    scores: HeadScores | str | os.PathLike | None = opt(
        None, None, "per-head mean_rank / mean_nuclear (stratify HeadStats JSON) instead of measuring them on prose",
        metavar="JSON")
    batch_size: int = opt(16, POS, "items per batch (equal-length prompts batch without padding)")
    data_dir: str | None = opt(None, None, cli=False)  # the run's --data-dir
    niah_lengths: list[int] | None = opt(None, POS, "NIAH context lengths in tokens, e.g. 256,512,1024 (default)", run=True)
    niah_depths: list[float] | None = opt(None, UNIT, "NIAH needle depths in [0,1], e.g. 0,0.25,0.5,0.75,1 (default)",
                                          run=True)
    max_new_tokens: int | None = opt(None, POS, "generation budget (defaults: 8; gsm8k 256, or 1024 with a chat "
                                     "template — Thinking models may need thousands; the report gives the share of "
                                     "outputs cut at the budget)")
    n_shot: int = opt(0, NONNEG, "GSM8K few-shot examples for prompts without a chat template")
    calib_texts: int = opt(8, POS, "prose segments for scores / mean calibration")
    calib_tokens: int = opt(512, POS, "tokens per calibration segment")
    task_objects: Sequence[ProbeTask] | None = opt(None, None, cli=False)
    lm_eval_tasks: list[str] = opt((), None, "also run these lm-evaluation-harness tasks per condition (gsm8k_local "
                                   "runs offline)", flag="--lm-eval", metavar="TASKS")
    lm_eval_limit: int | None = opt(None, POS, "lm-eval --limit per task")
    lm_eval_include: list[str] = opt((), None, "comma-separated folders of local lm-eval task YAMLs (lm-eval's "
                                     "--include_path); local data runs offline", metavar="DIRS")
    lm_eval_batch_size: int = opt(1, POS, "lm-eval batch size (checked exact for log-likelihood tasks only, see "
                                  "staterank.probes.lmeval)")

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix)
        if self.task_objects is None and not self.tasks and not self.lm_eval_tasks:
            raise UserError(f"{prefix or '--'}tasks is empty")
        if not self.groups:
            raise UserError(f"{prefix or '--'}groups is empty: nothing would be ablated")
        with section(prefix):
            check_seed(self.seed)
            check_given(self.data_dir)
            if self.task_objects is None:
                # a NIAH grid is checked even when niah is not (yet) among the tasks
                niah = ["niah"] if "niah" not in self.tasks and (self.niah_lengths or self.niah_depths) else []
                for t in [*self.tasks, *niah]:
                    make_task(t, limit=self.limit, seed=self.seed, data_dir=self.data_dir,
                              niah_lengths=self.niah_lengths, niah_depths=self.niah_depths)
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
