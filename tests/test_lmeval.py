"""The lm-eval bridge on a local perplexity task (a tiny random model gives non-trivial numbers there):
the same numbers as the real `lm_eval` command line on the same model folder and task, per-item
samples kept, batch size honoured. Runs where lm-eval (the `eval` extra) is importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (the eval extra) is not installed")

from staterank.errors import UserError  # noqa: E402
from staterank.models import load_model  # noqa: E402
from staterank.probes.lmeval import lm_eval_probe  # noqa: E402
from staterank.testing import byte_tokenizer, tiny_model  # noqa: E402

DOCS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
        "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
        "The quick brown fox jumps over the lazy dog; the dog sleeps on.",
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
        "Call the numbers: 3, 14, 15, 92, 65 and 35 — then add them up."]
METRICS = ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmeval")
    # a byte-level tokenizer with an end-of-text token (lm-eval's rolling windows start with it)
    model = tiny_model("qwen3_next", h_k=2, h_v=4, k=8, v=8, vocab=len(byte_tokenizer()))
    model.save_pretrained(tmp / "m")
    byte_tokenizer().save_pretrained(tmp / "m")
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tasks / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'docs.jsonl'}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n")
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    return tmp, tasks


def _cli(tmp: Path, tasks: Path, batch: int) -> tuple[dict, list[dict]]:
    """The real lm_eval command line on the saved folder: its results and logged samples."""
    out = tmp / f"cli{batch}"
    env = {**os.environ, **OFFLINE}
    subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf",
                    "--model_args", f"pretrained={tmp / 'm'},dtype=float32", "--tasks", "tiny_ppl",
                    "--include_path", str(tasks), "--batch_size", str(batch), "--device", "cpu",
                    "--output_path", str(out), "--log_samples"], check=True, env=env, capture_output=True, timeout=600)
    (res,) = out.rglob("results_*.json")
    (smp,) = out.rglob("samples_tiny_ppl_*.jsonl")
    return json.loads(res.read_text())["results"]["tiny_ppl"], [json.loads(x) for x in smp.read_text().splitlines()]


def test_local_task_equals_the_lm_eval_cli(setup):
    tmp, tasks = setup
    loaded = load_model(str(tmp / "m"), device="cpu")
    ours = lm_eval_probe(loaded, ["tiny_ppl"], include=[tasks], samples_path=tmp / "samples.jsonl")["tiny_ppl"]
    cli, cli_samples = _cli(tmp, tasks, 1)
    for m in METRICS:
        assert 0.0 < ours[m] < float("inf"), (m, ours[m])  # a random model: finite, far from perfect
        assert ours[m] == pytest.approx(cli[m], rel=1e-9, abs=0), m
    samples = [json.loads(x) for x in (tmp / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(DOCS) and all(s["task"] == "tiny_ppl" for s in samples)
    by_doc = {s["doc_id"]: s for s in cli_samples}
    for s in samples:  # every item's log-likelihood, as the command line logs it
        assert s["doc"]["text"] == DOCS[s["doc_id"]]
        assert s["resps"][0][0] == pytest.approx(float(by_doc[s["doc_id"]]["resps"][0][0]), rel=1e-9)  # the CLI writes it as text


def test_batch_size_changes_nothing_on_perplexity(setup):
    tmp, tasks = setup
    loaded = load_model(str(tmp / "m"), device="cpu")
    one = lm_eval_probe(loaded, ["tiny_ppl"], include=[tasks], batch_size=1)["tiny_ppl"]
    eight = lm_eval_probe(loaded, ["tiny_ppl"], include=[tasks], batch_size=8)["tiny_ppl"]
    for m in METRICS:
        assert eight[m] == pytest.approx(one[m], rel=1e-5), m


def test_bad_task_or_folder_is_one_line(setup, tmp_path):
    tmp, tasks = setup
    loaded = load_model(str(tmp / "m"), device="cpu")
    with pytest.raises(UserError, match="unknown lm-eval task"):
        lm_eval_probe(loaded, ["no_such_task_xyz"], include=[tasks])
    with pytest.raises(UserError, match="not found"):
        lm_eval_probe(loaded, ["tiny_ppl"], include=[tmp_path / "absent"])
    with pytest.raises(UserError, match="at least 1"):
        lm_eval_probe(loaded, ["tiny_ppl"], include=[tasks], batch_size=0)


def test_probe_with_only_lm_eval_on_a_local_task(setup, capsys):
    """`staterank probe --tasks '' --lm-eval T --lm-eval-include DIR`: per-condition results and samples
    files, and a report with the lm-eval section and no empty Table 1."""
    from staterank.cli import main

    tmp, tasks = setup
    out = tmp / "probe"
    assert main(["probe", "--model", str(tmp / "m"), "--tasks", "", "--lm-eval", "tiny_ppl", "--lm-eval-include", str(tasks),
                 "--lm-eval-batch-size", "2", "--groups", "low,random", "--seeds", "1", "--count", "2",
                 "--calib-texts", "1", "--calib-tokens", "32", "--quiet", "--out", str(out)]) == 0
    files = sorted(p.name for p in (out / "lm_eval").iterdir())
    assert "base.json" in files and "base.samples.jsonl" in files and "low.samples.jsonl" in files
    base = json.loads((out / "lm_eval" / "base.json").read_text())["tiny_ppl"]
    assert len((out / "lm_eval" / "base.samples.jsonl").read_text().splitlines()) == len(DOCS)
    report = (out / "report.md").read_text()
    assert "## lm-evaluation-harness" in report and "Table 1" not in report
    assert f"{base['word_perplexity,none']}"[:8] in report
    assert (out / "report.html").is_file()
    capsys.readouterr()
    assert main(["probe", "--model", str(tmp / "m"), "--lm-eval", "tiny_ppl", "--lm-eval-include", str(tmp / "absent"),
                 "--out", str(tmp / "p2")]) == 2
    assert "no such folder" in capsys.readouterr().err and not (tmp / "p2").exists()
