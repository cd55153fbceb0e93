"""The context suite: deterministic, of the requested length, user contexts, clean errors."""

import subprocess
import sys

import pytest

from staterank import contexts as cx
from staterank.errors import UserError
from staterank.testing import char_tokenizer


def bpe_tokenizer():
    """A small byte-level BPE (merges make token counts differ from character counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from staterank.tasks.prose import prose_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([prose_texts("train")[2][:5000]], tr)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>")


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_default_suite_has_every_kind():
    assert cx.SUITES["default"] == ("prose", "math", "code", "dialogue", "random", "repeat_rare", "repeat_number")


@pytest.mark.parametrize("tokens", [50, 300])
def test_requested_length_with_tokenizer(bpe, tokens):
    for c in cx.suite(tokens=tokens, tokenizer=bpe):
        # cut at a token boundary: re-encoding may merge across the cut by a token or two
        assert tokens <= ntok(bpe, c.text) <= tokens + 2, c.name


def test_length_without_tokenizer_is_chars_estimate():
    for c in cx.suite(tokens=100):
        assert len(c.text) == 100 * cx.CHARS_PER_TOKEN, c.name


def test_deterministic(bpe):
    a = cx.suite(tokens=120, tokenizer=bpe)
    b = cx.suite(tokens=120, tokenizer=bpe)
    assert [c.text for c in a] == [c.text for c in b]
    assert cx.suite_hash(a) == cx.suite_hash(b)
    other = {c.name: c.text for c in cx.suite(tokens=120, tokenizer=bpe, seed=1)}
    same = {c.name: c.text for c in a}
    # seeded generators change with the seed; data-backed ones do not
    assert other["code"] != same["code"] and other["random"] != same["random"]
    assert other["prose"] == same["prose"] and other["math"] == same["math"]
    assert cx.suite_hash(a) != cx.suite_hash(cx.suite(tokens=120, tokenizer=bpe, seed=1))


def test_content_of_each_context(bpe):
    c = {x.name: x for x in cx.suite(tokens=200, tokenizer=bpe)}
    assert set(c["repeat_rare"].text) == {cx.REPEAT_RARE}
    assert c["repeat_number"].text.split() == ["1"] * len(c["repeat_number"].text.split())
    assert c["math"].text.startswith("Question: ") and "<<" not in c["math"].text and "####" not in c["math"].text
    assert "def " in c["code"].text or "class " in c["code"].text
    lines = c["dialogue"].text.splitlines()
    assert all(l.startswith(("A: ", "B: ")) for l in lines) and lines[0][0] != lines[1][0]
    # held-out prose: not in the training split the builtin model saw
    from staterank.tasks.prose import prose_texts

    assert c["prose"].text[:200] not in "".join(prose_texts("train"))


def test_random_context_uses_vocab_without_specials():
    tok = char_tokenizer()
    c = cx.builtin_context("random", tokens=500, tokenizer=tok)
    ids = tok(c.text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 500 and not set(ids) & set(tok.all_special_ids)
    assert len(set(ids)) > 50  # spread over the vocabulary, not one repeated token


def test_from_file(tmp_path):
    p = tmp_path / "my notes.txt"
    p.write_text("hello there\n" * 10)
    c = cx.from_file(p)
    assert c.name == "my notes" and c.kind == "file" and c.text == "hello there\n" * 10
    assert cx.from_file(p, name="x").name == "x"
    with pytest.raises(UserError, match="missing.txt: no such file$"):
        cx.from_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        cx.from_file(tmp_path / "empty.txt")
    # issue #22: a binary file was decoded with replacement characters and measured as if it were text
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="model.bin: not UTF-8 text"):
        cx.from_file(tmp_path / "model.bin")
    (tmp_path / "nul.txt").write_bytes(b"text\x00with a NUL")
    with pytest.raises(UserError, match="nul.txt: a binary file"):
        cx.from_file(tmp_path / "nul.txt")
    with pytest.raises(UserError, match="a directory"):
        cx.from_file(tmp_path)


def test_errors():
    with pytest.raises(UserError, match="unknown suite"):
        cx.suite("nope")
    with pytest.raises(UserError, match="unknown context"):
        cx.suite(only=["prose", "poetry"])
    with pytest.raises(UserError, match="DATASET"):
        cx.from_hf("just_a_name")
    with pytest.raises(UserError, match="ran out"):
        cx.builtin_context("dialogue", tokens=10**8)


def test_datasets_not_imported_unless_used():
    code = "import sys, staterank.contexts; assert 'datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_hf_with_a_stand_in_datasets_module(monkeypatch):
    import types

    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return ({"text": f"row {i} " * 5, "other": i} for i in range(1000))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    c = cx.from_hf("someone/corpus:wiki:validation:text", tokens=40)
    assert calls == [("someone/corpus", "wiki", "validation", True)]
    assert c.kind == "hf" and c.name == "someone_corpus_validation_text" and c.text.startswith("row 0 row 0")
    assert len(c.text) == 40 * cx.CHARS_PER_TOKEN
    assert cx.from_hf("corpus:train:text", tokens=10, name="mine").name == "mine"


def test_contexts_are_disjoint_from_what_the_probe_scores(bpe):
    """The contexts rank the heads the probe then ablates: none of their text is a scored item
    (perplexity windows read the held-out prose's second half; GSM8K items are the first test rows)."""
    import json

    from staterank.data import data_dir
    from staterank.probes.tasks import PerplexityTask
    from staterank.tasks.prose import prose_texts

    c = {x.name: x.text for x in cx.suite(tokens=2048, tokenizer=bpe)}
    scored = "".join(prose_texts("eval"))
    for name in ("prose", "dialogue"):
        assert c[name][:300] not in scored
    first_window = bpe.decode(PerplexityTask(limit=1).items(bpe)[0].meta["ids"])
    assert first_window[:200] in scored and first_window[:200] not in "".join(prose_texts("contexts"))
    rows = [json.loads(l) for l in (data_dir() / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    probe_questions = {r["question"] for r in rows[:1000]}
    shown = [q.split("\nAnswer:")[0] for q in c["math"].split("Question: ")[1:]]
    assert shown[0] == rows[-1]["question"] and shown[1] == rows[-2]["question"]  # from the end of the file
    assert not probe_questions.intersection(shown[:-1])  # (the last one may be cut mid-question)
