"""The main job: analyze over the context suite → stratify (with the initialisation baseline) →
probe (low / high / random controls) → prune (JRNP + random baselines) → claims.

    cfg = RunConfig.load("run.yaml", overrides=["probe.limit=32"])
    run(cfg, "runs/demo")

One run folder; each stage is its own complete run folder inside it (``stratify/``, ``probe/``,
``prune/``), so a killed run resumes stage by stage and, inside a stage, item by item. The
configuration is saved as ``run.yaml`` and in ``config.json``; a folder holding another config is
never overwritten.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import runio
from .errors import UserError


@dataclass
class StratifySection:
    suite: str = "default"
    max_tokens: int = 2048
    stride: int = 4
    rule: str = "two_cluster"
    init: bool = True
    # the paper compares t=128 with t=2048; shorter contexts clamp both (stratify.json says so)
    t_early: int = 128
    t_late: int = 2048


@dataclass
class ProbeSection:
    tasks: list[str] = field(default_factory=lambda: ["niah", "mqar", "multihop"])
    groups: list[str] = field(default_factory=lambda: ["low", "high", "random", "layer_random"])
    fraction: float = 7 / 18
    seeds: int = 5
    limit: int | None = 64
    mode: str = "zero"
    single_head: bool = True
    single_limit: int | None = 24
    niah_lengths: list[int] | None = None
    niah_depths: list[float] | None = None


@dataclass
class PruneSection:
    method: str = "jrnp"
    alpha: float = 0.5
    fraction: float = 7 / 18
    ranking: str = "per_layer"
    tasks: list[str] = field(default_factory=lambda: ["niah", "mqar", "multihop"])
    eval_n: int = 100
    random_seeds: int = 5
    calib_suite: str = "natural"
    calib_tokens: int = 512
    state_context: int = 2048


@dataclass
class RunConfig:
    model: str = "builtin"
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    data_dir: str | None = None
    stages: list[str] = field(default_factory=lambda: ["stratify", "probe", "prune"])
    stratify: StratifySection = field(default_factory=StratifySection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    prune: PruneSection = field(default_factory=PruneSection)

    STAGES = ("stratify", "probe", "prune")

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d or {})
        sections = {"stratify": StratifySection, "probe": ProbeSection, "prune": PruneSection}
        kw: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for k, v in d.items():
            if k not in names:
                raise UserError(f"unknown config key {k!r}; known: {', '.join(sorted(names))}")
            if k in sections:
                if not isinstance(v, dict):
                    raise UserError(f"config section {k!r} must be a mapping")
                sub = {f.name for f in dataclasses.fields(sections[k])}
                bad = [x for x in v if x not in sub]
                if bad:
                    raise UserError(f"unknown key {k}.{bad[0]}; known: {', '.join(sorted(sub))}")
                kw[k] = sections[k](**v)
            else:
                kw[k] = v
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "RunConfig":
        d: dict = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise UserError(f"config file not found: {p}")
            try:
                d = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(d, dict):
                raise UserError(f"{p}: the config must be a mapping")
        for ov in overrides or []:
            if "=" not in ov:
                raise UserError(f"override {ov!r} is not KEY=VALUE (e.g. probe.limit=32)")
            key, val = ov.split("=", 1)
            node = d
            *parents, leaf = key.strip().split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"override {ov!r}: {part} is not a section")
            node[leaf] = yaml.safe_load(val)
        return cls.from_dict(d)

    def validate(self) -> None:
        bad = [s for s in self.stages if s not in self.STAGES]
        if bad:
            raise UserError(f"unknown stage {bad[0]!r}; stages are {', '.join(self.STAGES)}")
        for name, f in (("probe.fraction", self.probe.fraction), ("prune.fraction", self.prune.fraction)):
            if not 0 < f < 1:
                raise UserError(f"{name} must be in (0, 1), got {f}")
        if not 0 <= self.prune.alpha <= 1:
            raise UserError(f"prune.alpha must be in [0, 1], got {self.prune.alpha}")
        if self.stratify.max_tokens < 2:
            raise UserError("stratify.max_tokens must be >= 2")

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


def _say(msg: str) -> None:
    print(f"[staterank run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cfg: RunConfig, out: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the whole pipeline into ``out``; returns the run folder."""
    from .models import load_model

    say = _say if progress else (lambda m: None)
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)  # bad --model: no folder left behind
    folder = runio.new_run_dir(out, {"stage": "run", **cfg.to_dict()})
    if not (folder / "run.yaml").exists():
        runio.atomic_write_text(folder / "run.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    say(f"model {cfg.model}: {loaded.config.get('model_type')}, {len(loaded.adapter.linear_layers(loaded.model))} linear-attention layers")

    def stratify_stage():
        from .contexts import suite
        from .stratify import StratifyConfig, run_stratify

        s = cfg.stratify
        say(f"stratify: suite {s.suite!r}, {s.max_tokens} tokens per context, init baseline {s.init}")
        ctx = suite(s.suite, tokens=s.max_tokens, tokenizer=loaded.tokenizer, seed=cfg.seed, data=cfg.data_dir)
        t_late = min(s.t_late, s.max_tokens)
        scfg = StratifyConfig(rule=s.rule, max_tokens=s.max_tokens, stride=s.stride, init=s.init,
                              t_early=min(s.t_early, t_late // 2), t_late=t_late)
        run_stratify(loaded, ctx, folder / "stratify", scfg, log=say, progress=progress)

    def probe_stage():
        from .probes.run import probe

        p = cfg.probe
        scores = folder / "stratify" / "stratify.json"
        say(f"probe: tasks {p.tasks}, groups {p.groups}, fraction {p.fraction:.3f}, {p.seeds} seeds")
        probe(loaded, p.tasks, p.groups, out=folder / "probe", fraction=p.fraction, seeds=p.seeds, seed=cfg.seed,
              limit=p.limit, mode=p.mode, single_head=p.single_head, single_limit=p.single_limit,
              scores=scores if scores.exists() else None, data_dir=cfg.data_dir,
              niah_lengths=p.niah_lengths, niah_depths=p.niah_depths, progress=progress)

    def prune_stage():  # prunes ``loaded`` in place: it must stay the last stage
        from .prune.run import PruneConfig, run_prune

        q = cfg.prune
        say(f"prune: {q.method} (alpha {q.alpha}) at fraction {q.fraction:.3f}, {q.ranking} ranking")
        pcfg = PruneConfig(method=q.method, alpha=q.alpha, fraction=q.fraction, ranking=q.ranking,
                           tasks=tuple(q.tasks), eval_n=q.eval_n, random_seeds=q.random_seeds,
                           calib_suite=q.calib_suite, calib_tokens=q.calib_tokens, state_context=q.state_context,
                           seed=cfg.seed, data_dir=cfg.data_dir)
        run_prune(loaded, pcfg, folder / "prune", progress=progress)

    for name, stage in (("stratify", stratify_stage), ("probe", probe_stage), ("prune", prune_stage)):
        if name not in cfg.stages:
            continue
        if (folder / name / f"{name}.json").exists():
            say(f"{name}: done already")
        else:
            stage()

    from .claims import write_claims

    write_claims(folder)
    return folder
