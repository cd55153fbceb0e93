"""`staterank run` validates its whole config before the run folder exists: a bad option of any
stage, a value of the wrong type, or an unreadable --config is one line (exit 2) and no folder."""

import re

import pytest

from staterank.cli import main
from staterank.errors import UserError
from staterank.pipeline import RunConfig

# a quick, otherwise valid run: every case below must fail in validation, before any model work
QUICK = ["--set", "stratify.max_tokens=128", "--set", "stratify.init=false", "--set", "probe.tasks=[mqar]",
         "--set", "probe.limit=4", "--set", "probe.seeds=1", "--set", "probe.single_head=false"]


@pytest.fixture(autouse=True)
def no_run_folder(monkeypatch):
    """Making a run folder is a failure here (and keeps a missed check from running the pipeline)."""
    from staterank import runio

    def refuse(*a, **k):
        raise AssertionError("a run folder was made before the config was refused")

    monkeypatch.setattr(runio, "new_run_dir", refuse)


def _refused(tmp_path, capsys, *sets, extra=(), match=None):
    out = tmp_path / "r"
    args = ["run", "--model", "builtin", "--quiet", *QUICK, *[x for s in sets for x in ("--set", s)], *extra,
            "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if match:
        assert match in err, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("bad,match", [
    ("prune.method=bogus", "unknown pruning method 'bogus'"),
    ("stratify.suite=bogus", "unknown stratify.suite 'bogus'"),
    ("probe.limit=-3", "probe.limit must be >= 1"),
    ("probe.limit=0", "probe.limit must be >= 1"),
    ("probe.single_limit=0", "probe.single_limit must be >= 1"),
    ("probe.seeds=0", "probe.seeds must be >= 1"),
    ("probe.groups=[bogus]", "unknown group"),
    ("probe.groups=[random,layer_random]", "add low and/or high"),
    ("probe.tasks=[bogus]", "unknown probe task 'bogus'"),
    ("probe.tasks=[]", "probe.tasks is empty"),
    ("probe.mode=bogus", "unknown probe.mode 'bogus'"),
    ("probe.niah_depths=[2]", "[0, 1]"),  # checked even when niah is not among the tasks
    ("probe.niah_lengths=[0]", ">= 1"),
    ("stratify.rule=bogus", "unknown stratify.rule 'bogus'"),  # one choices check for CLI, YAML, library
    ("stratify.stride=0", "stratify.stride must be >= 1"),
    ("stratify.t_early=0", "t_early"),
    ("prune.ranking=bogus", "unknown prune.ranking 'bogus'"),
    ("prune.tasks=[bogus]", "unknown task 'bogus'"),
    ("prune.eval_n=0", "eval_n"),
    ("prune.random_seeds=-1", "random_seeds"),
    ("prune.calib_suite=bogus", "'bogus'"),
    ("prune.calib_tokens=0", "prune.calib_tokens must be >= 1"),
    ("seed=-1", "seed must be >= 0"),
    ("stages=[]", "stages is empty"),
])
def test_bad_stage_option_fails_before_the_run_folder(tmp_path, capsys, bad, match):
    _refused(tmp_path, capsys, bad, match=match)


@pytest.mark.parametrize("bad,match", [
    ("probe.limit=abc", "probe.limit must be an integer (or null), got 'abc'"),
    ("probe.limit=2.5", "probe.limit must be an integer"),
    ("stratify.max_tokens=abc", "stratify.max_tokens must be an integer, got 'abc'"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("seed=true", "seed must be an integer"),
    ("stratify.init=maybe", "stratify.init must be true or false"),
    ("probe.fraction=abc", "probe.fraction must be a number"),
    ("prune.alpha=[1]", "prune.alpha must be a number"),
    ("probe.tasks={a: 1}", "probe.tasks must be a list of names"),
    ("probe.niah_lengths=[a]", "probe.niah_lengths must be a list of integers"),
    ("probe.limit=[", "not a valid YAML value"),
])
def test_wrong_type_is_one_line_naming_the_key(tmp_path, capsys, bad, match):
    _refused(tmp_path, capsys, bad, match=match)


@pytest.mark.parametrize("d,match", [
    ({"stratify": {"suite": ["natural"]}}, "stratify.suite must be a string"),
    ({"model": None}, "model must be a string, got nothing"),
    ({"model": ""}, "model is empty"),
    ({"probe": {"seeds": [1]}}, "probe.seeds must be an integer"),
    ({"probe": {"tasks": [["niah"]]}}, "probe.tasks must be a list of names"),
    ({"probe": 3}, "config section 'probe' must be a mapping"),
])
def test_from_dict_checks_types(d, match):
    with pytest.raises(UserError, match=re.escape(match)):
        RunConfig.from_dict(d)


def test_a_bare_or_comma_separated_string_is_a_list_of_names():
    assert RunConfig.load(None, ["probe.tasks=niah"]).probe.tasks == ["niah"]
    cfg = RunConfig.load(None, ["probe.tasks=niah, mqar", "prune.tasks=arith", "probe.groups=low,random",
                                "probe.niah_lengths=64,128", "probe.niah_depths=0.5"])
    assert cfg.probe.tasks == ["niah", "mqar"] and cfg.prune.tasks == ["arith"]
    assert cfg.probe.groups == ["low", "random"]
    assert cfg.probe.niah_lengths == [64, 128] and cfg.probe.niah_depths == [0.5]
    # the letters of 'niah' are not tasks
    with pytest.raises(UserError, match="unknown probe task 'nope'"):
        RunConfig.load(None, ["probe.tasks=nope"])


def test_values_keep_their_meaning():
    cfg = RunConfig.load(None, ["probe.limit=null", "probe.single_head=no", "stratify.init=false",
                                "probe.fraction=0.25", "prune.alpha=1", "model=123", "dtype=float32", "seed=3"])
    assert cfg.probe.limit is None and cfg.probe.single_head is False and cfg.stratify.init is False
    assert cfg.probe.fraction == 0.25 and cfg.prune.alpha == 1 and cfg.seed == 3
    assert cfg.model == "123" and cfg.dtype == "float32"  # a name stays as typed
    assert cfg.to_dict() == RunConfig.from_dict(cfg.to_dict()).to_dict()  # what run.yaml holds reads back


def test_yaml_file_values_are_checked_too(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("probe:\n  limit: abc\n")
    with pytest.raises(UserError, match="probe.limit must be an integer"):
        RunConfig.load(y)
    y.write_text("probe:\n  tasks: niah\n  limit: '8'\nprune:\n  alpha: '0.25'\n")
    cfg = RunConfig.load(y)
    assert cfg.probe.tasks == ["niah"] and cfg.probe.limit == 8 and cfg.prune.alpha == 0.25
    y.write_text("probe:\n")  # an empty section keeps its defaults
    assert RunConfig.load(y).probe.tasks == ["niah", "mqar", "multihop"]


def test_binary_config_file_is_one_line(tmp_path, capsys):
    b = tmp_path / "cfg.bin"
    b.write_bytes(bytes(range(256)) * 4)
    err = _refused(tmp_path, capsys, extra=["--config", str(b)])
    assert "not UTF-8 text" in err


def test_config_that_is_a_folder_is_one_line(tmp_path, capsys):
    _refused(tmp_path, capsys, extra=["--config", str(tmp_path)], match="a directory")


def test_budget_this_model_cannot_meet_fails_before_the_run_folder(tmp_path, capsys):
    # 0.95 of the heads per layer would leave a layer without a value head: found before any folder
    _refused(tmp_path, capsys, "prune.fraction=0.95", "prune.ranking=per_layer", match="prune:")


def test_data_dir_must_exist(tmp_path, capsys):
    _refused(tmp_path, capsys, extra=["--data-dir", str(tmp_path / "nope")], match="no such directory")
