"""The shipped built-in model loads with stock transformers classes and behaves like an HF model."""

import json
import statistics

import pytest
import torch

torch.set_num_threads(1)

from staterank.builtin import BUILTIN_DIR, load_builtin  # noqa: E402

needs_model = pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="built-in model not shipped")


@needs_model
def test_config_is_hybrid_qwen3_next_with_gva():
    cfg = json.loads((BUILTIN_DIR / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_next"
    assert cfg["layer_types"].count("linear_attention") >= 1 and "full_attention" in cfg["layer_types"]
    assert cfg["linear_num_value_heads"] // cfg["linear_num_key_heads"] >= 2  # GVA ratio as in the paper
    assert cfg["num_experts"] == 0


@needs_model
def test_folder_small():
    assert (BUILTIN_DIR / "model.safetensors").stat().st_size <= 16 * 2**20
    assert (BUILTIN_DIR / "README.md").is_file()
    assert sum(f.stat().st_size for f in BUILTIN_DIR.iterdir()) <= 20 * 2**20


@needs_model
def test_stock_classes_load_and_forward():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BUILTIN_DIR)
    model = AutoModelForCausalLM.from_pretrained(BUILTIN_DIR).eval()
    assert type(model).__name__ == "Qwen3NextForCausalLM"
    x = tok("Pairs: ab=12, cd=34.\nQueries: cd=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=x)
    assert out.logits.shape == (1, x.shape[1], model.config.vocab_size)
    assert torch.isfinite(out.logits).all()


@needs_model
def test_tokenizer_round_trip_and_digits():
    _, tok = load_builtin()
    text = "It is a truth universally acknowledged; 4821 + 37 = 4858.\nThe end."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("4821", add_special_tokens=False)["input_ids"]) == list("4821")
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


@needs_model
def test_load_builtin_eval_fp32():
    model, _ = load_builtin()
    assert not model.training and next(model.parameters()).dtype == torch.float32


def test_fla_gate_init_gives_long_memory():
    """The recipe's gate init: median per-token decay near 0.95, not the default's near 0."""
    from transformers import AutoModelForCausalLM, Qwen3NextConfig

    from staterank.builtin.train import fla_gate_init

    cfg = Qwen3NextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          layer_types=["linear_attention"] * 2, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16, linear_num_key_heads=4, linear_num_value_heads=32, linear_key_head_dim=8,
                          linear_value_head_dim=8, num_experts=0)
    model = AutoModelForCausalLM.from_config(cfg)
    assert fla_gate_init(model, torch.Generator().manual_seed(0)) == 2
    decays = []
    for m in model.modules():
        if hasattr(m, "A_log"):
            # decay at zero input: exp(-A * softplus(dt_bias))
            decays += torch.exp(-m.A_log.exp() * torch.nn.functional.softplus(m.dt_bias)).tolist()
    assert 0.8 < statistics.median(decays) < 0.999


def test_copy_drill_repeats_distinct_single_token_words():
    from staterank.builtin.train import DataStream, train_tokenizer

    tok = train_tokenizer(1024, seed=0)  # the drill needs a vocabulary with whole-word tokens
    ids, _ = DataStream(tok, seed=0, mix={"copy": 1.0}).batch(step=0, T=256, B=1)
    doc = tok.decode(ids[0], skip_special_tokens=False).split("<|eos|>")[0].removeprefix("<|bos|>")
    first, second = doc.removeprefix("Copy:").split("\nAgain:")
    words = first.split()
    assert second == first and len(words) >= 4 and len(set(words)) == len(words)
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words)


@needs_model
def test_early_mixture_applies_before_early_until_only():
    from staterank.builtin.train import DataStream

    _, tok = load_builtin()
    ds = DataStream(tok, seed=0, mix={"arith": 1.0, "mqar": 0.0}, early_mix={"mqar": 1.0}, early_until=0.3)
    early, _ = ds.batch(step=0, T=128, B=2, progress=0.1)
    late, _ = ds.batch(step=0, T=128, B=2, progress=0.5)
    assert tok.decode(early[0]).count("Pairs:") >= 1
    assert "Pairs:" not in tok.decode(late[0]) and "+" in tok.decode(late[0])


@needs_model
def test_copy_drill_refuses_a_vocabulary_without_words():
    from staterank.builtin.train import DataStream

    _, tok = load_builtin()
    if len(DataStream(tok, seed=0, mix={"arith": 1.0}).words) >= 8:
        pytest.skip("the shipped vocabulary has whole-word tokens")
    with pytest.raises(SystemExit, match="copy drill needs"):
        DataStream(tok, seed=0, mix={"arith": 0.5, "copy": 0.5})


@pytest.mark.parametrize("argv,msg", [
    (["--mix", "mqar"], "bad mixture"),
    (["--mix", "mqar=0.5,bogus=0.5"], "unknown mixture kinds"),
    (["--mix", "mqar=1", "--early-mix", "copy=1"], "--early-mix kinds must also appear"),
    (["--early-loss", "answers"], "--early-loss applies to the --early-mix phase"),
])
def test_train_bad_arguments_one_line_and_nothing_written(tmp_path, argv, msg):
    from staterank.builtin.train import main

    with pytest.raises(SystemExit, match=msg):
        main(["--out", str(tmp_path / "run"), *argv])
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_folder_holding_a_run(tmp_path):
    from staterank.builtin.train import main

    (tmp_path / "train_log.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="already holds a training run"):
        main(["--out", str(tmp_path)])
    assert (tmp_path / "train_log.jsonl").read_text() == "{}\n"


@needs_model
def test_card_single_stage_recipe(tmp_path):
    import shutil

    from staterank.builtin.card import write_card

    folder = tmp_path / "m"
    shutil.copytree(BUILTIN_DIR, folder)
    st = json.loads((folder / "training_state.json").read_text())
    st["previous"] = None
    st["args"].update(init_from=None, mix="mqar=0.5,copy=0.5", early_mix="copy=1", early_until=0.25, early_loss=None,
                      max_len=256)
    st["mix"] = {"mqar": 0.5, "copy": 0.5}
    (folder / "training_state.json").write_text(json.dumps(st))
    text = write_card(folder)
    assert "One command, from scratch" in text and "STAGE" not in text
    assert f"--out DIR --seed {st['args']['seed']}" in text and f"--vocab {st['args']['vocab']}" in text
    assert "--early-mix copy=1 --early-until 0.25" in text and "(before 25% of the schedule: copy=1)" in text
    assert "copy drill" in text and "GSM8K train question" not in text
    curriculum = next(line for line in text.splitlines() if "sequence-length curriculum" in line)
    assert curriculum.endswith("128 tokens until 15 % of the schedule, 256 tokens until 100 % of the schedule.")


@needs_model
@pytest.mark.parametrize("T,niah_min", [(128, 8), (256, 64)])
def test_niah_training_docs_keep_their_whole_answer(T, niah_min):
    # a haystack sized without the question used to push the answer past the row end
    from staterank.builtin.train import DataStream

    _, tok = load_builtin()
    ds = DataStream(tok, seed=0, mix={"niah": 1.0}, loss="answers", niah_min=niah_min)
    n_docs = 0
    for step in range(3):
        x, y = ds.batch(step=step, T=T, B=4)
        for row in x.tolist():
            text = tok.decode(row, skip_special_tokens=False)
            for doc in text.split("<|bos|>")[1:]:
                if "What is the special magic number?" in doc:
                    n_docs += 1
                    needle = doc.split("The special magic number is ")[1][:4]
                    assert doc.endswith(f"The special magic number is {needle}<|eos|>"), doc[-80:]
    assert n_docs >= 8


@needs_model
def test_early_loss_masks_prose_only_in_the_early_phase():
    from staterank.builtin.train import DataStream

    _, tok = load_builtin()
    ds = DataStream(tok, seed=0, mix={"prose": 1.0}, loss="answers+prose",
                    early_mix={"prose": 1.0}, early_until=0.5, early_loss="answers")
    x, early = ds.batch(step=0, T=64, B=2, progress=0.1)
    _, late = ds.batch(step=0, T=64, B=2, progress=0.9)
    assert bool((early == -100).all())  # prose carries no loss while answers-only
    assert bool((late != -100).all()) and torch.equal(late, x)


def test_balanced_loss_averages_the_answer_and_prose_means():
    from staterank.builtin.train import balanced_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 5, generator=g)
    x = torch.tensor([[1, 2, 3, 4, 0, 1]])
    kind = torch.tensor([[0, 1, 0, 2, 2, 2]])  # one answer token (pos 1), three prose tokens
    labels = x.masked_fill(kind == 0, -100)
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none")  # predicts pos 1..5
    expected = (ce[0] + ce[2:].mean()) / 2
    torch.testing.assert_close(balanced_loss(logits, labels, kind), expected)
    only = torch.tensor([[0, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(balanced_loss(logits, x.masked_fill(only == 0, -100), only), ce[0])


def test_copy_stage_logs_numbers_earlier_stages(tmp_path):
    from staterank.builtin.train import copy_stage_logs

    s1 = tmp_path / "s1"
    (s1 / "final").mkdir(parents=True)
    (s1 / "train_log.jsonl").write_text("one\n")
    s2 = tmp_path / "s2" / "final"
    s2.mkdir(parents=True)
    copy_stage_logs(s1 / "final", s2)
    (s2 / "train_log.jsonl").write_text("two\n")
    s3 = tmp_path / "s3" / "final"
    s3.mkdir(parents=True)
    copy_stage_logs(s2, s3)
    assert (s3 / "train_log_stage1.jsonl").read_text() == "one\n"
    assert (s3 / "train_log_stage2.jsonl").read_text() == "two\n"


def test_compare_reproduction_verdict(tmp_path, capsys):
    from staterank.builtin.compare import compare, main

    ref = json.loads((BUILTIN_DIR / "eval_results.json").read_text())
    rows, ok = compare(ref, ref)
    assert ok and {"task niah", "task mqar"} <= {r["name"] for r in rows}
    worse = json.loads(json.dumps(ref))
    worse["tasks"]["niah"].update(acc=0.5, lo=0.38, hi=0.62)
    rows, ok = compare(worse, ref)
    assert not ok and [r["name"] for r in rows if r["differs"]] == ["task niah"]
    assert [r["name"] for r in rows if not r["new_in_ref_ci"]] == ["task niah"]
    # one more or fewer correct answer moves a point estimate outside a CI but is no significant difference
    near = json.loads(json.dumps(ref))
    c = near["tasks"]["mqar"]
    c.update(acc=c["acc"] + 1 / c["n"] if c["acc"] < 0.5 else c["acc"] - 1 / c["n"])
    rows, ok = compare(near, ref)
    assert ok and next(r for r in rows if r["name"] == "task mqar")["p_fisher"] > 0.5
    (tmp_path / "eval_results.json").write_text(json.dumps(worse))
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("does NOT reproduce: task niah differ significantly "
                                                        "(Fisher exact, p < 0.05)")
    with pytest.raises(SystemExit, match="eval_results.json not found"):
        main([str(tmp_path / "missing")])


def test_card_reproduction_section_from_compare(tmp_path):
    import shutil

    from staterank.builtin.card import write_card
    from staterank.builtin.compare import main

    folder, rerun = tmp_path / "m", tmp_path / "rerun"
    shutil.copytree(BUILTIN_DIR, folder)
    (folder / "reproduction.json").unlink(missing_ok=True)
    assert "## Reproduction" not in write_card(folder)
    rerun.mkdir()
    res = json.loads((folder / "eval_results.json").read_text())
    res["tasks"]["mqar"].update(acc=0.9, lo=0.8, hi=0.95)
    (rerun / "eval_results.json").write_text(json.dumps(res))
    main([str(rerun), "--against", str(folder), "--out", str(folder / "reproduction.json")])
    text = write_card(folder)
    assert "## Reproduction" in text and "Not reproduced" in text
    row = next(line for line in text.splitlines() if line.startswith("| task mqar |"))
    assert row.endswith("| 0.900 [0.800, 0.950] | " + row.split(" | ")[-2] + " | no |") and "**differs**" in row
