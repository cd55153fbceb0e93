"""One declaration per option (staterank.options): the command line, YAML and validate() all read the
config field; one progress mechanism (staterank.progress)."""

import argparse
import dataclasses
import logging

import pytest

from staterank import progress
from staterank.analyze import AnalyzeConfig
from staterank.cli import build_parser
from staterank.cli.common import Parser, add_options, config_from, is_list_option
from staterank.configtypes import coerce, field_types
from staterank.errors import UserError
from staterank.options import NONNEG, POS, UNIT, check_fields, default_of, flag_of, opt, options
from staterank.pipeline import PIPELINE, RunConfig
from staterank.probes.config import ProbeConfig
from staterank.prune.config import PruneConfig, SweepConfig
from staterank.stratify.config import StratifyConfig


@dataclasses.dataclass
class Toy:
    n: int = opt(4, POS, "how many")
    share: float | None = opt(None, UNIT, "a share", group="g")
    count: int | None = opt(None, NONNEG, "a count", group="g")
    xs: list[int] = opt((1, 2), POS, "items")
    mode: str = opt("a", None, "a mode", choices=("a", "b"))
    keep: bool = opt(True, None, "drop it")  # on by default: the flag is --no-keep
    seed: int = opt(0, None, cli=False)


def _parse(cls, argv):
    p = Parser(prog="toy")
    add_options(p, cls)
    return p, p.parse_args(argv)


def test_a_field_is_a_flag_a_yaml_key_and_a_check():
    p, a = _parse(Toy, [])
    assert config_from(Toy, a, seed=7) == Toy(seed=7)  # not given: the field defaults
    _, a = _parse(Toy, ["--n", "3", "--xs", "5,6", "--mode", "b", "--no-keep", "--share", "0.5"])
    assert config_from(Toy, a) == Toy(n=3, xs=[5, 6], mode="b", keep=False, share=0.5)
    assert "how many (default 4)" in " ".join(p.format_help().split())
    for bad in (["--n", "0"], ["--mode", "c"], ["--share", "0.5", "--count", "1"], ["--seed", "1"]):
        with pytest.raises(SystemExit):
            _parse(Toy, bad)
    _, a = _parse(Toy, ["--xs", "1,0"])  # list items are checked after parsing, as YAML values are
    with pytest.raises(UserError, match="xs must be >= 1, got 0"):
        check_fields(config_from(Toy, a))
    assert coerce("toy.xs", "3,4", field_types(Toy)["xs"]) == [3, 4]
    with pytest.raises(UserError, match="toy.mode 'c'"):
        check_fields(Toy(mode="c"), "toy.")


@pytest.mark.parametrize("command,classes", [
    ("analyze", [AnalyzeConfig]), ("stratify", [StratifyConfig]), ("probe", [ProbeConfig]), ("prune", [PruneConfig, SweepConfig])])
def test_every_config_option_is_its_commands_flag(command, classes):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for cls in classes:
        for f in options(cls):
            if not f.metadata["cli"]:
                continue
            action = flags[flag_of(f)]
            if not isinstance(default_of(f), bool) and not is_list_option(cls, f.name):
                assert action.type is f.metadata["type"], (command, f.name)
            assert action.default in (None, False)  # "given" is knowable; the field holds the default
    assert parser.format_help()  # renders (mutually exclusive groups are not empty)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def test_pipeline_sections_are_the_stage_configs_with_stated_overrides():
    cfg = RunConfig()
    for name, cls in (("stratify", StratifyConfig), ("probe", ProbeConfig), ("prune", PruneConfig)):
        sec = getattr(cfg, name)
        assert type(sec) is cls
        stage = cls()
        differ = {f.name for f in dataclasses.fields(cls) if _norm(getattr(sec, f.name)) != _norm(getattr(stage, f.name))}
        assert differ == {k for k, v in PIPELINE[name].items() if _norm(v) != _norm(getattr(stage, k))}, name
        keys = set(cfg.to_dict()[name])
        assert keys == {f.name for f in options(cls) if f.metadata["run"]}
    assert cfg.prune.ranking == "per_layer" and PruneConfig().ranking == "key_groups"


def test_progress_is_one_switch(capsys, tmp_path):
    from staterank.cli import main

    assert main(["stratify", "--quiet", "--max-tokens", "1", "--out", str(tmp_path / "r")]) == 2  # refused, quietly
    progress.say("stage: step one")  # --quiet held for that command only
    assert "stage: step one" in capsys.readouterr().err
    with progress.quiet():
        progress.say("hidden")
        assert list(progress.bar(range(3))) == [0, 1, 2] and progress.bar(range(1)).disable
    assert "hidden" not in capsys.readouterr().err
    assert logging.getLogger("staterank").isEnabledFor(logging.INFO)  # restored after the block


# What `make demo` (staterank run on the builtin model) records and hands each stage, as before the
# options were declared once (d9ba5b8): a run folder made then still resumes, and the numbers are the same.
DEMO_RUN = {
    "model": "builtin", "seed": 0, "device": None, "dtype": None, "data_dir": None,
    "stages": ["stratify", "probe", "prune"],
    "stratify": {"suite": "default", "max_tokens": 2048, "stride": 4, "rule": "two_cluster", "init": True,
                 "t_early": 128, "t_late": 2048},
    "probe": {"tasks": ["niah", "mqar", "multihop"], "groups": ["low", "high", "random", "layer_random"],
              "fraction": 7 / 18, "seeds": 5, "limit": 64, "mode": "zero", "single_head": True, "single_limit": 24,
              "niah_lengths": None, "niah_depths": None},
    "prune": {"method": "jrnp", "alpha": 0.5, "fraction": 7 / 18, "ranking": "per_layer",
              "tasks": ["niah", "mqar", "multihop"], "eval_n": 100, "random_seeds": 5, "calib_suite": "natural",
              "calib_tokens": 512, "state_context": 2048},
}
DEMO_STRATIFY = {"rule": "two_cluster", "threshold": None, "t_early": 128, "t_late": 2048, "max_tokens": 2048,
                 "stride": 4, "init": True, "init_gates": "auto", "init_seed": 0, "eps": 1e-4}
DEMO_PRUNE = {"method": "jrnp", "alpha": 0.5, "fraction": 7 / 18, "count": None, "bytes": None, "ranking": "per_layer",
              "calib_suite": "natural", "calib_tokens": 512, "calib_stride": 8, "tasks": ("niah", "mqar", "multihop"),
              "eval_n": 100, "eval_seed": 10**9, "max_new_tokens": 8, "random_seeds": 5, "state_context": 2048,
              "state_batch": 1, "decode_tokens": 32, "export": True, "export_dtype": None, "check_tol": 1e-4, "seed": 0,
              "plan_file": None, "data_dir": None}
DEMO_PROBE = {"out": "OUT", "tasks": ["niah", "mqar", "multihop"], "groups": ["low", "high", "random", "layer_random"],
              "fraction": 7 / 18, "count": None, "seeds": 5, "seed": 0, "limit": 64, "mode": "zero", "single_head": True,
              "single_limit": 24, "scores": None, "batch_size": 16, "data_dir": None, "niah_lengths": None,
              "niah_depths": None, "max_new_tokens": None, "n_shot": 0, "calib_texts": 8, "calib_tokens": 512,
              "task_objects": None, "lm_eval_tasks": [], "lm_eval_limit": None,
              "lm_eval_include": [], "lm_eval_batch_size": 1}


def test_the_demo_config_is_what_it_was():
    cfg = RunConfig.load(None)
    assert cfg.to_dict() == DEMO_RUN
    assert cfg.stratify_config().record() == DEMO_STRATIFY
    assert dataclasses.asdict(cfg.prune_config()) == DEMO_PRUNE
    probe = {f.name: _norm(getattr(cfg.probe_config("OUT"), f.name)) for f in dataclasses.fields(ProbeConfig)}
    assert probe == DEMO_PROBE
