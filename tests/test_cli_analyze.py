"""`staterank analyze` and `staterank ls` from the command line: complete run folder, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_models import save_tiny

from staterank.cli import main
from staterank.runio import read_npz


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    save_tiny(d, "qwen3_next", h_k=1, h_v=4, k=8, v=12)
    return d


def _texts(tmp_path):
    a, b = tmp_path / "austen.txt", tmp_path / "genesis.txt"
    a.write_text("It is a truth universally acknowledged, that a single man in possession")
    b.write_text("In the beginning God created the heaven")  # 39 tokens
    return a, b


def test_analyze_writes_complete_run_folder(model_dir, tmp_path, capsys):
    a, b = _texts(tmp_path)
    out = tmp_path / "run"
    argv = ["analyze", "--model", str(model_dir), "--text", str(a), str(b), "--max-tokens", "40",
            "--stride", "2", "--keep-states", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    for f in ("config.json", "dynamics.npz", "heads.csv", "texts.csv", "report.md", "rank_dynamics.png",
              "rank_heatmap.png", "rank_hist.png", "states/0000.safetensors", "states/0001.safetensors"):
        assert (out / f).is_file(), f
    z = read_npz(out / "dynamics.npz")
    assert list(z["texts"]) == ["austen", "genesis"]
    assert z["threshold_rank"].shape == (2, 3, 4, 20) and list(z["positions"]) == list(range(2, 41, 2))
    assert not np.isnan(z["threshold_rank"][0]).any() and np.isnan(z["threshold_rank"][1, ..., -1]).all()
    report = (out / "report.md").read_text()
    assert "| austen | 40 | 20 |" in report and "layer 0" not in report  # table rows, not figure titles
    assert f"wrote {out}" in capsys.readouterr().out
    # the same command again finds the finished run
    assert main(argv) == 0
    # a different run into the same folder: refused, one line
    assert main(argv[:-2] + ["--eps", "1e-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different config" in err


def test_prompt_and_log_positions(model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["analyze", "--model", str(model_dir), "--prompt", "The quick brown fox jumps over the lazy dog",
                 "--log-positions", "--quiet", "--out", str(out)]) == 0
    z = read_npz(out / "dynamics.npz")
    assert list(z["positions"]) == [1, 2, 4, 8, 16, 32] and list(z["texts"]) == ["prompt"]


@pytest.mark.parametrize("case", ["unsupported", "missing_model", "missing_text", "empty_text", "no_source", "bad_out"])
def test_errors_are_one_line(case, model_dir, tmp_path, capsys):
    from transformers import LlamaConfig

    good = tmp_path / "t.txt"
    good.write_text("hello")
    model, text = str(model_dir), ["--text", str(good)]
    if case == "unsupported":
        LlamaConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32).save_pretrained(tmp_path / "llama")
        model, msg = str(tmp_path / "llama"), "unsupported model_type"
    elif case == "missing_model":
        model, msg = str(tmp_path / "absent"), "no such folder"
    elif case == "missing_text":
        text, msg = ["--text", str(tmp_path / "absent.txt")], "no such file"
    elif case == "empty_text":
        (tmp_path / "e.txt").write_text("\n  \n")
        text, msg = ["--text", str(good), str(tmp_path / "e.txt")], "is empty"
    elif case == "bad_out":  # the file system refuses the run folder: an OSError, still one line
        (tmp_path / "run").write_text("a file, not a folder")
        msg = "Not a directory"
    else:
        text, msg = [], "one of the arguments --prompt --text is required"
    out = tmp_path / "run" / "x" if case == "bad_out" else tmp_path / "run"
    argv = ["analyze", "--model", model, *text, "--quiet", "--out", str(out)]
    if case == "no_source":
        with pytest.raises(SystemExit) as e:  # argparse's own usage error
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert err.count("\n") == 1 and (case == "bad_out" or not (tmp_path / "run").exists())


@pytest.mark.parametrize("argv,msg", [
    (["analyze", "--prompt", "hi", "--max-tokens", "-3"], "argument --max-tokens: must be >= 1, got -3"),
    (["analyze", "--prompt", "hi", "--stride", "0"], "argument --stride: must be >= 1, got 0"),
    (["analyze", "--prompt", "hi", "--eps", "abc"], "argument --eps: 'abc' is not a number"),
    (["probe", "--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
    (["prune", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_argument_errors_are_one_line_before_any_model_loads(argv, msg, tmp_path, capsys, monkeypatch):
    from staterank import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model for a bad argument"))
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "run")] if argv[0] != "nope" else argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "usage:" not in err
    assert not (tmp_path / "run").exists()


def test_subprocess_error_and_ls(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "staterank.cli", "analyze", "--model", str(tmp_path / "nope"),
                        "--prompt", "hi", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("staterank: error: --model") and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "staterank.cli", "ls"], capture_output=True, text=True, env=env)
    assert r.returncode == 0
    for t in ("qwen3_next", "qwen3_5", "kimi_linear", "olmo_hybrid"):
        assert f"  {t}\n" in r.stdout
    for t in ("niah", "mqar", "multihop", "arith", "gsm8k", "ppl"):  # every name --tasks accepts
        assert f"\n  {t} " in r.stdout


def test_failed_self_check_is_one_line_and_exit_3(monkeypatch, capsys):
    from staterank.cli import ls
    from staterank.prune.run import CheckFailed

    def boom(args):
        raise CheckFailed("pruned model differs from the masked model by 0.5 > 0.0001 (see runs/x/prune.json)")

    monkeypatch.setattr(ls, "command", boom)
    assert main(["ls"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["staterank: check failed: pruned model differs from the masked model by 0.5 > 0.0001 "
                   "(see runs/x/prune.json)"]


def test_cpu_runs_drop_transformers_install_fla_advice():
    import logging

    from staterank import cli

    log = logging.getLogger("transformers.integrations.hub_kernels")
    rec = lambda msg: logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, None, None)  # noqa: E731
    advice = ("`chunk_gated_delta_rule` is falling back to its reference PyTorch implementation because "
              "`flash-linear-attention` is not installed.")
    before = list(log.filters)
    log.filters[:] = [f for f in before if not getattr(f, "_staterank", False)]  # earlier tests ran the CLI
    try:
        assert log.filter(rec(advice))
        cli._quiet_cpu_kernel_advice("cpu")
        cli._quiet_cpu_kernel_advice("cpu")
        assert sum(getattr(f, "_staterank", False) for f in log.filters) == 1
        assert not log.filter(rec(advice)) and log.filter(rec("some other warning"))
    finally:
        log.filters[:] = before
