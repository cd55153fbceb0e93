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

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import runio
from .configtypes import coerce, field_types, unwrap_optional
from .data import check_given, read_user_text
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
    def from_dict(cls, d: dict) -> RunConfig:
        """A validated RunConfig from a (YAML-parsed) mapping. Every value is checked against its
        field's type (a list field also takes one string, comma-separated); then ``validate``."""
        d = dict(d or {})
        kw: dict[str, Any] = {}
        hints = field_types(cls)
        for k, v in d.items():
            if k not in hints:
                raise UserError(f"unknown config key {k!r}; known: {', '.join(sorted(hints))}")
            if k in _SECTIONS:
                if v is None:
                    v = {}
                if not isinstance(v, dict):
                    raise UserError(f"config section {k!r} must be a mapping")
                sub = field_types(_SECTIONS[k])
                bad = [x for x in v if x not in sub]
                if bad:
                    raise UserError(f"unknown key {k}.{bad[0]}; known: {', '.join(sorted(sub))}")
                kw[k] = _SECTIONS[k](**{x: coerce(f"{k}.{x}", y, sub[x]) for x, y in v.items()})
            else:
                kw[k] = coerce(k, v, hints[k])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
        d: dict = {}
        if path:
            p = Path(path)
            text = read_user_text(p, f"--config {p}", allow_empty=True)  # an empty config: all defaults
            try:
                d = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise UserError(f"{p}: not valid YAML ({_first_line(e)})") from None
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
            try:
                value = yaml.safe_load(val)
            except yaml.YAMLError as e:
                raise UserError(f"override {ov!r}: not a valid YAML value ({_first_line(e)})") from None
            if value is not None and not isinstance(value, str) and _is_str_field(key.strip()):
                value = val.strip()  # --model 123 / --set dtype=1e-3: a name, as typed, not YAML's number
            node[leaf] = value
        return cls.from_dict(d)

    def validate(self) -> None:
        """Every check the stages would make on their own configs, made now: a bad option must fail
        before the run folder exists (it cannot be corrected in place later)."""
        from .contexts import SUITES
        from .probes import groups as G
        from .probes.ablate import MODES
        from .probes.tasks import make_task

        bad = [s for s in self.stages if s not in self.STAGES]
        if bad:
            raise UserError(f"unknown stage {bad[0]!r}; stages are {', '.join(self.STAGES)}")
        if not self.stages:
            raise UserError(f"stages is empty; choose from {', '.join(self.STAGES)}")
        if not self.model:
            raise UserError("model is empty: give an HF id, a local folder, 'builtin' or 'negative-control'")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")
        check_given(self.data_dir)
        for name, f in (("probe.fraction", self.probe.fraction), ("prune.fraction", self.prune.fraction)):
            if not 0 < f < 1:
                raise UserError(f"{name} must be in (0, 1), got {f}")
        if not 0 <= self.prune.alpha <= 1:
            raise UserError(f"prune.alpha must be in [0, 1], got {self.prune.alpha}")

        # stratify: the suite, then the StratifyConfig the stage builds, checked by its own validate
        s = self.stratify
        if s.suite not in SUITES:
            raise UserError(f"unknown stratify.suite {s.suite!r}; choose one of {', '.join(SUITES)}")
        if s.stride < 1:
            raise UserError(f"stratify.stride must be >= 1, got {s.stride}")
        _at("stratify", lambda: self.stratify_config().validate())

        # probe: each task as the stage makes it (names, limit, NIAH grid), the groups and seeds
        p = self.probe
        if not p.tasks:
            raise UserError("probe.tasks is empty")
        for key, v in (("probe.limit", p.limit), ("probe.single_limit", p.single_limit)):
            if v is not None and v < 1:
                raise UserError(f"{key} must be >= 1 (or null for all items), got {v}")
        if p.seeds < 1:
            raise UserError(f"probe.seeds must be >= 1, got {p.seeds}")
        if p.mode not in MODES:
            raise UserError(f"unknown probe.mode {p.mode!r}; choose one of {', '.join(MODES)}")
        if p.niah_lengths is not None and any(n < 1 for n in p.niah_lengths):
            raise UserError(f"probe.niah_lengths must be >= 1 tokens each, got {p.niah_lengths}")
        niah = ["niah"] if "niah" not in p.tasks and (p.niah_lengths or p.niah_depths) else []
        for t in [*p.tasks, *niah]:  # a NIAH grid is checked even when niah is not (yet) among the tasks
            _at("probe", lambda t=t: make_task(t, limit=p.limit, seed=self.seed, data_dir=self.data_dir,
                                               niah_lengths=p.niah_lengths, niah_depths=p.niah_depths))
        _at("probe", lambda: G.check_kinds(p.groups, p.seeds))

        # prune: the PruneConfig the stage builds, checked by its own validate (suite, method, budget...)
        q = self.prune
        if q.calib_tokens < 1:
            raise UserError(f"prune.calib_tokens must be >= 1, got {q.calib_tokens}")
        _at("prune", lambda: self.prune_config().validate())

    def stratify_config(self):
        """The stratify stage's StratifyConfig (t_late clamped to max_tokens, t_early below it)."""
        from .stratify import StratifyConfig

        s = self.stratify
        t_late = min(s.t_late, s.max_tokens)
        return StratifyConfig(rule=s.rule, max_tokens=s.max_tokens, stride=s.stride, init=s.init,
                              t_early=min(s.t_early, t_late // 2), t_late=t_late, init_seed=self.seed)

    def prune_config(self):
        """The prune stage's PruneConfig."""
        from .prune.run import PruneConfig

        q = self.prune
        return PruneConfig(method=q.method, alpha=q.alpha, fraction=q.fraction, ranking=q.ranking,
                           tasks=tuple(q.tasks), eval_n=q.eval_n, random_seeds=q.random_seeds,
                           calib_suite=q.calib_suite, calib_tokens=q.calib_tokens, state_context=q.state_context,
                           seed=self.seed, data_dir=self.data_dir)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


_SECTIONS = {"stratify": StratifySection, "probe": ProbeSection, "prune": PruneSection}


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_str_field(key: str) -> bool:
    """Whether dotted ``key`` names a (possibly optional) str field."""
    *parents, leaf = key.split(".")
    cls = RunConfig if not parents else _SECTIONS.get(parents[0]) if len(parents) == 1 else None
    tp = field_types(cls).get(leaf) if cls is not None else None
    return tp is not None and unwrap_optional(tp)[0] is str


def _at(section: str, check) -> None:
    """Run a stage's own check; its one-line error names the config section."""
    try:
        check()
    except UserError as e:
        raise UserError(f"{section}: {e}") from None


def _say(msg: str) -> None:
    print(f"[staterank run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_model(cfg: RunConfig, loaded) -> None:
    """The checks that need the model, made before the run folder exists: the pruning budget must be
    one this model can meet (the same ``select`` run_prune calls before its own folder)."""
    if "prune" not in cfg.stages:
        return
    import numpy as np

    from .prune.run import gva_group
    from .prune.scores import select

    pcfg = cfg.prune_config()
    layers = loaded.adapter.linear_layers(loaded.model)
    _at("prune", lambda: select(np.zeros((len(layers), max(l.layout.h_v for l in layers))), pcfg.budget(),
                                pcfg.ranking, [l.index for l in layers], [l.layout.k * l.layout.v * 4 for l in layers],
                                gva_group(layers)))


def run(cfg: RunConfig, out: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the whole pipeline into ``out``; returns the run folder."""
    from .models import load_model

    say = _say if progress else (lambda m: None)
    cfg.validate()  # a RunConfig built by hand is checked as one from load() is
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)  # bad --model: no folder left behind
    _check_model(cfg, loaded)
    from .data import prose_files

    prose_files(cfg.data_dir)  # every stage reads prose (contexts, scores, calibration): missing data fails here

    def make():  # under torchrun rank 0 alone makes the folder; each stage shards its own work
        d = runio.new_run_dir(out, {"stage": "run", **cfg.to_dict()})
        if not (d / "run.yaml").exists():
            runio.atomic_write_text(d / "run.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return d

    from . import distributed

    folder = distributed.on_main(make)
    say = say if distributed.world().main else (lambda m: None)
    say(f"model {cfg.model}: {loaded.config.get('model_type')}, {len(loaded.adapter.linear_layers(loaded.model))} linear-attention layers")

    def stratify_stage():
        from .contexts import suite
        from .stratify import run_stratify

        s = cfg.stratify
        say(f"stratify: suite {s.suite!r}, {s.max_tokens} tokens per context, init baseline {s.init}")
        ctx = suite(s.suite, tokens=s.max_tokens, tokenizer=loaded.tokenizer, seed=cfg.seed, data=cfg.data_dir)
        run_stratify(loaded, ctx, folder / "stratify", cfg.stratify_config(), log=say, progress=progress)

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
        from .prune.run import run_prune

        q = cfg.prune
        say(f"prune: {q.method} (alpha {q.alpha}) at fraction {q.fraction:.3f}, {q.ranking} ranking")
        run_prune(loaded, cfg.prune_config(), folder / "prune", progress=progress)

    for name, stage in (("stratify", stratify_stage), ("probe", probe_stage), ("prune", prune_stage)):
        if name not in cfg.stages:
            continue
        if (folder / name / f"{name}.json").exists():
            say(f"{name}: done already")
        else:
            stage()

    from .claims import write_claims

    distributed.on_main(lambda: write_claims(folder))
    return folder
