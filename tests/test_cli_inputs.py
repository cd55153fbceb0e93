"""Bad input on the command line: one line, exit 2, and no run folder left behind."""

import json

import pytest

from staterank.cli import main as _main


def main(argv) -> int:
    try:
        return _main(argv)
    except SystemExit as e:  # argparse rejects while parsing
        return e.code


@pytest.mark.parametrize("argv,says", [
    (["analyze", "--prompt", "hi", "--eps", "inf"], "finite"),
    (["analyze", "--prompt", "hi", "--eps", "1"], "(0, 1)"),
    (["analyze", "--prompt", "hi", "--max-state-mb", "inf"], "finite"),
    (["probe", "--seed", "-1"], ">= 0"),
    (["probe", "--groups", ""], "--groups is empty"),
    (["prune", "--alpha", "nan"], "finite"),
    (["prune", "--calib", "bogus"], "unknown calibration suite"),
    (["prune", "--sweep", "--fractions", ""], "at least one"),
    (["prune", "--sweep", "--method", "rank"], "--method do(es) not apply"),
    (["prune", "--sweep", "--fraction", "0.2"], "--fraction do(es) not apply"),
    (["prune", "--sweep", "--no-export"], "--no-export do(es) not apply"),
    (["prune", "--alphas", "0,1"], "grid of --sweep"),
    (["prune", "--fractions", "0.2"], "grid of --sweep"),
    (["stratify", "--threshold", "0.5"], "only with --rule threshold"),
    (["stratify", "--max-tokens", "1"], ">= 2"),
    # issue #22
    (["analyze", "--prompt", "hi", "--max-state-mb", "1e308"], "2**30"),
    (["analyze", "--prompt", "hi", "--seed", str(2**64)], "2**63"),
    (["prune", "--fraction", "0"], "(0, 1)"),
    (["prune", "--count", "0"], ">= 1"),
    (["prune", "--bytes", "0"], ">= 1"),
    (["prune", "--alphas", "0,nan", "--sweep"], "finite"),
    (["probe", "--single-limit", "5"], "only with --single-head"),
    (["stratify", "--no-init", "--init-gates", "fla"], "with --no-init"),
])
def test_bad_option_is_one_line_and_leaves_no_folder(argv, says, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_plan_with_scoring_options_is_refused(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"method": "jrnp"}))
    assert main(["prune", "--plan", str(plan), "--method", "rank", "--out", str(tmp_path / "run")]) == 2
    assert "--method" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # given explicitly, even at its default value, an option the plan overrides is refused
    for opt in (["--alpha", "0.5"], ["--alpha", "0"], ["--ranking", "global"], ["--fraction", "0.389"], ["--sweep"],
                ["--alphas", "1"]):
        assert main(["prune", "--plan", str(plan), *opt, "--out", str(tmp_path / "run")]) == 2
        assert opt[0] in capsys.readouterr().err and not (tmp_path / "run").exists()
    for body in (b"\x00\xff\xfe binary", b"[]", b"{not json"):
        plan.write_bytes(body)
        assert main(["prune", "--plan", str(plan), "--out", str(tmp_path / "run")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_same_text_twice_is_refused(tmp_path, capsys):
    a = tmp_path / "a.txt"
    a.write_text("some text here")
    (tmp_path / "sub").mkdir()
    assert main(["analyze", "--text", str(a), str(tmp_path / "sub" / ".." / "a.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_verify_only_reads(tmp_path, capsys):
    """verify prints the claims of a run without writing into it (a read-only or archived run)."""
    run = tmp_path / "run"
    (run / "prune").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    acc = {"acc": 0.6, "lo": 0.5, "hi": 0.7, "n": 100}
    (run / "prune" / "prune.json").write_text(json.dumps({
        "method": "jrnp", "head_fraction_removed": 0.375, "fraction_saved": {"linear_state": 0.375},
        "accuracy": {"before": {"t": acc}, "after": {"t": acc}, "controls": {}}}))
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["verify", str(run)]) == 0
    assert "| claim |" in capsys.readouterr().out
    assert sorted(p.name for p in run.rglob("*")) == before


# Values of numeric options that mean something documented in their --help (everything else the walk
# below tries must be refused while parsing).
_DOCUMENTED = {("--seed", "0"), ("--n-shot", "0"), ("--random-seeds", "0"), ("--alpha", "0")}
_EDGE = ("0", "-1", "nan", "inf", "1e308", str(2**64))


def _numeric_options():
    import argparse

    from staterank.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.type is not None and action.option_strings and action.type is not str:
                yield name, action


def test_every_numeric_option_refuses_edge_values_while_parsing():
    """Issue #22: every subcommand's numeric options, with 0, -1, nan, inf, 1e308 and 2**64: a
    one-line refusal (argparse's ArgumentTypeError) or a documented meaning, never a traceback later."""
    import argparse

    seen = 0
    for cmd, action in _numeric_options():
        assert action.type not in (int, float), f"{cmd} {action.option_strings[0]}: use a checked type"
        flag = action.option_strings[-1]
        for v in _EDGE:
            try:
                action.type(v)
            except argparse.ArgumentTypeError as e:
                assert "\n" not in str(e)
                continue
            assert (flag, v) in _DOCUMENTED, f"{cmd} {flag} {v} is accepted"
        seen += 1
    assert seen >= 30  # the walk found the options (analyze, stratify, probe, prune, run)


def test_directories_and_binary_files_are_named_for_what_they_are(tmp_path, capsys):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01 not text")
    for argv, says in ((["prune", "--plan", str(tmp_path)], "a directory"),
                       (["stratify", "--context-file", str(tmp_path)], "a directory"),
                       (["analyze", "--text", str(tmp_path / "bin.txt")], "a binary file")):
        assert main(argv + ["--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


def test_verify_on_a_torn_config_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(b"\x00garbage{")
    assert main(["verify", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json: not a JSON file" in err and len(err.splitlines()) == 1, err
