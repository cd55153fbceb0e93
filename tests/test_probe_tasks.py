"""Probe tasks: the GSM8K final-number extractor on tricky answers, GSM8K prompts (plain and chat),
the NIAH grid as probe items, perplexity windows, and the task registry. (NIAH needle depth and the
exact-match scorer are tested in test_tasks.py.)"""

import math

import pytest
import torch
from test_probe_run import byte_tokenizer

from staterank.errors import UserError
from staterank.probes.tasks import (
    Gsm8kTask,
    NiahTask,
    PerplexityTask,
    extract_final_number,
    gsm8k_gold,
    load_gsm8k,
    make_task,
    normalize_number,
    strip_thinking,
)

TRICKY = [
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("The total is 3 + 4 = 7.\n#### -12", "-12"),
    ("So she pays $1,250.50 in total.", "1250.5"),
    ("The answer is 5.00", "5"),
    ("The answer is: $42.", "42"),
    ("the answer is **17**", "17"),
    ("Thus \\boxed{3,000} dollars; check: 3000 - 100 = 2900", "3000"),
    ("<think>maybe 12? or 15</think>\nShe has 14 apples.\n#### 14", "14"),
    ("so it could be 99</think>The final answer is 8", "8"),  # template opened <think> in the prompt
    ("<think>I think 12 ... 7 ... (cut off)", None),  # unfinished thinking: no answer
    ("He lost -$5 overall", "-5"),
    ("It takes 2.5 hours and then 10.", "10"),
    ("#### 18\n\nQuestion: A farmer has 20 cows... 20", "18"),  # first #### wins over later text
    ("0.50 + 0.50 = 1.0", "1"),
    ("no digits here", None),
    ("Answer: 1,000,000", "1000000"),
    ("The temperature fell to -3.", "-3"),
]


@pytest.mark.parametrize("text,want", TRICKY)
def test_extract_final_number(text, want):
    assert extract_final_number(text) == want


def test_numbers_compare_numerically():
    assert normalize_number("5.00") == normalize_number("5") == "5"
    assert normalize_number("$1,000") == "1000"
    assert normalize_number("-0") == "0"
    assert normalize_number("1e5") is None or normalize_number("1e5") == "100000"
    assert normalize_number("abc") is None
    assert strip_thinking("<think>a</think>b<think>c</think>d") == "bd"


def test_gsm8k_gold_and_local_data():
    assert gsm8k_gold("step 1\nstep 2\n#### 1,234") == "1234"
    recs = load_gsm8k("test")
    assert len(recs) == 1319 and all("####" in r["answer"] for r in recs[:50])
    assert gsm8k_gold(recs[0]["answer"]) == "18"  # Janet's ducks


def test_gsm8k_prompts_plain_and_chat():
    tok = byte_tokenizer()
    plain = Gsm8kTask(limit=3).items(tok)
    assert [it.id for it in plain] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert plain[0].prompt.startswith("Question: Janet") and plain[0].prompt.endswith("\nAnswer:")
    assert plain[0].answer == "18"
    shots = Gsm8kTask(limit=1, n_shot=2).items(tok)[0].prompt
    assert shots.count("Question:") == 3 and shots.count("####") == 2
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    chat = Gsm8kTask(limit=1).items(tok)[0]
    assert chat.meta["chat"] and chat.prompt.startswith("<|user|>Janet") and chat.prompt.endswith("<think>\n")


def test_gsm8k_run_on_a_tiny_model():
    from staterank.testing import tiny_model

    tok = byte_tokenizer()
    model = tiny_model("qwen3_5", vocab=len(tok))
    task = Gsm8kTask(limit=2, max_new_tokens=6)
    rows = task.run(model, tok, task.items(tok))
    assert [r["id"] for r in rows] == ["gsm8k-0", "gsm8k-1"]
    assert all(r["correct"] == (r["pred"] == r["answer"]) for r in rows)


def test_niah_probe_items_cover_the_grid():
    tok = byte_tokenizer()
    t = NiahTask(limit=8, lengths=(48, 96), depths=(0.0, 1.0))
    items = t.items(tok)
    assert len(items) == 8
    cells = {(it.meta["context_tokens"], it.meta["depth"]) for it in items}
    assert cells == {(48, 0.0), (48, 1.0), (96, 0.0), (96, 1.0)}
    assert len({it.id for it in items}) == 8


def test_perplexity_task_matches_evaluate_perplexity():
    from staterank.tasks.evaluate import perplexity
    from staterank.tasks.prose import prose_texts
    from staterank.testing import tiny_model

    tok = byte_tokenizer()
    model = tiny_model("qwen3_next", vocab=len(tok))
    t = PerplexityTask(limit=200, window=64)
    items = [it for it in t.items(tok) if it.id.startswith("ppl-0-")][:3]
    assert [it.id for it in items] == ["ppl-0-0", "ppl-0-63", "ppl-0-126"]
    rows = t.run(model, tok, items)
    ppl = math.exp(sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows))
    ref = perplexity(model, tok, prose_texts("eval")[0], max_tokens=3 * 63, window=64)
    assert ppl == pytest.approx(ref, rel=1e-5)


def test_make_task():
    assert make_task("mqar", limit=5).limit == 5
    assert make_task("niah").limit == 60
    with pytest.raises(UserError, match="did you mean gsm8k"):
        make_task("gsm8")
    with pytest.raises(UserError, match="limit"):
        make_task("niah", limit=0)


def test_lm_eval_missing_is_one_line_user_error(monkeypatch):
    import sys
    from types import SimpleNamespace

    from staterank.probes.lmeval import lm_eval_probe

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails even where it is installed
    with pytest.raises(UserError, match="staterank\\[eval\\]"):
        lm_eval_probe(SimpleNamespace(model=None, tokenizer=None), ["gsm8k"])


def test_lm_eval_sees_the_ablated_model(monkeypatch, tmp_path):
    """A stand-in lm_eval: its evaluate runs the HFLM's model; the ablation must be active there,
    and gsm8k_local must be offered through include_path."""
    import sys
    import types
    from types import SimpleNamespace

    import yaml

    from staterank.adapters import get_adapter
    from staterank.probes.lmeval import lm_eval_probe
    from staterank.testing import tiny_model

    model = tiny_model("qwen3_next")
    ids = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
    seen = {}

    class HFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            self.model = pretrained

    class TaskManager:
        def __init__(self, include_path=None):
            seen["yaml"] = yaml.safe_load(open(f"{include_path}/gsm8k_local.yaml")) if include_path else None

    def simple_evaluate(model, tasks, **kw):
        with torch.no_grad():
            d = (model.model(ids).logits - base).abs().max().item()
        return {"results": {t: {"max_logit_change": d, "alias": t} for t in tasks}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = HFLM
    tm = types.ModuleType("lm_eval.tasks")
    tm.TaskManager = TaskManager
    for name, mod in {"lm_eval": fake, "lm_eval.models": types.ModuleType("lm_eval.models"),
                      "lm_eval.models.huggingface": hf, "lm_eval.tasks": tm}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    # the stand-in has no task files: give it a gsm8k.yaml of the installed shape
    import staterank.probes.lmeval as lmeval_mod

    src = tmp_path / "gsm8k.yaml"
    src.write_text("task: gsm8k\ndataset_path: openai/gsm8k\ndataset_name: main\noutput_type: generate_until\n")
    monkeypatch.setattr(lmeval_mod, "_installed_gsm8k_yaml", lambda: src)
    loaded = SimpleNamespace(model=model, tokenizer=None, adapter=get_adapter(model))
    li = loaded.adapter.linear_layers(model)[0].index
    r0 = lm_eval_probe(loaded, ["gsm8k_local"])
    r1 = lm_eval_probe(loaded, ["gsm8k_local"], heads={li: [0, 1]})
    assert r0["gsm8k_local"]["max_logit_change"] == 0.0
    assert r1["gsm8k_local"]["max_logit_change"] > 0
    assert seen["yaml"]["task"] == "gsm8k_local" and seen["yaml"]["dataset_path"] == "json"
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)  # ablation undone afterwards


def test_gsm8k_missing_data_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such directory"):
        load_gsm8k("test", data_dir=tmp_path / "absent")
    import sys
    import types

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)\nmore detail")

    # a stand-in `datasets` whose download fails as it does offline (the real one may not be installed)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UserError) as e:
        load_gsm8k("test", data_dir=tmp_path)  # exists, holds no gsm8k/
    assert "ConnectionError: Couldn't reach" in str(e.value) and "\n" not in str(e.value)
    assert "gsm8k/test.jsonl" in str(e.value)


# ---------------------------------------------------------------- review fixes: limits, grid, data dir, seed

def _prose_dir(root, word="zebra"):
    """A data folder whose only prose file says ``word`` in every paragraph."""
    (root / "prose").mkdir(parents=True)
    (root / "prose" / "x.txt").write_text("".join(f"The {word} number {i} walked on.\n\n" for i in range(3000)))
    return root


@pytest.mark.parametrize("limit", [1, 2, 6, 14, 15, 17, 60])
def test_niah_limit_is_the_number_of_items(limit):
    t = make_task("niah", limit=limit)  # default grid: 3 lengths x 5 depths = 15 cells
    counts = t.cell_counts()
    assert sum(c for *_, c in counts) == limit
    assert max(c for *_, c in counts) - min(c for *_, c in counts) <= 1  # spread evenly
    items = t.items(None)
    assert len(items) == limit and len({it.id for it in items}) == limit
    cells = {(it.meta["context_tokens"], it.meta["depth"]) for it in items}
    assert len(cells) == min(limit, 15)


def test_niah_small_limit_takes_cells_spread_over_the_grid():
    assert [(L, d) for L, d, c in make_task("niah", limit=1).cell_counts() if c] == [(512, 0.5)]  # the middle cell
    two = [(L, d) for L, d, c in make_task("niah", limit=2).cell_counts() if c]
    assert len(two) == 2 and two[0][0] != two[1][0]  # different lengths, not the first two cells
    # raising the limit only adds items
    small, big = (make_task("niah", limit=k, niah_lengths=[48, 96]).items(None) for k in (7, 23))
    assert {it.id for it in small} <= {it.id for it in big}


@pytest.mark.parametrize("lengths,depths,match", [
    ([-5], None, "lengths"), ([0], None, "lengths"), ([2.5], None, "whole"), ([64, 64], None, "repeat"),
    (None, [1.5], r"\[0, 1\]"), (None, [-0.1], r"\[0, 1\]"), (None, [float("nan")], r"\[0, 1\]"),
    (None, [0.5, 0.5], "repeat")])
def test_niah_bad_grid_is_a_one_line_user_error(lengths, depths, match):
    with pytest.raises(UserError, match=match) as e:
        make_task("niah", niah_lengths=lengths, niah_depths=depths)
    assert "\n" not in str(e.value)


def test_niah_task_checks_its_grid_when_built_directly():
    for kw in ({"lengths": (-5,)}, {"lengths": ()}, {"depths": (2.0,)}, {"limit": 0}):
        with pytest.raises(UserError):
            NiahTask(**kw)


def test_make_task_refuses_a_negative_seed_and_a_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="seed"):
        make_task("arith", seed=-1)
    for name in ("ppl", "niah", "gsm8k"):
        with pytest.raises(UserError, match="no such directory"):
            make_task(name, data_dir=tmp_path / "absent")


def test_ppl_and_niah_read_the_given_data_dir(tmp_path):
    d = _prose_dir(tmp_path / "data")
    tok = byte_tokenizer()
    ppl = make_task("ppl", limit=3, data_dir=str(d))
    ppl.window = 32
    texts = [tok.decode(it.meta["ids"]) for it in ppl.items(tok)]
    assert len(texts) == 3 and all("zebra" in t or "number" in t for t in texts)
    assert "zebra" in "".join(texts)
    niah = make_task("niah", limit=2, niah_lengths=[64], niah_depths=[0.5], data_dir=d)
    assert all("zebra" in it.prompt for it in niah.items(tok))
    # a folder that exists but holds no prose: one line, not the default data
    (tmp_path / "empty").mkdir()
    for t in (PerplexityTask(data_dir=tmp_path / "empty"), NiahTask(data_dir=tmp_path / "empty", limit=1)):
        with pytest.raises(UserError, match="prose"):
            t.items(tok)


def test_gsm8k_local_is_lm_evals_gsm8k_on_local_files():
    """Same prompt, metric, regexes, stop sequences, filters and version as the installed task."""
    pytest.importorskip("lm_eval")
    from pathlib import Path

    import lm_eval
    import yaml

    from staterank.probes.lmeval import gsm8k_local_yaml

    ours = yaml.safe_load(gsm8k_local_yaml())
    theirs = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    assert ours.pop("task") == "gsm8k_local" and ours.pop("dataset_path") == "json"
    assert set(ours.pop("dataset_kwargs")["data_files"]) == {"train", "test"}
    for k in ("task", "dataset_path", "dataset_name", "tag"):
        theirs.pop(k, None)
    assert ours == theirs


def test_gsm8k_reasoning_cut_off_inside_a_template_opened_think_block_has_no_answer():
    """The chat template opens <think> in the prompt: an output without </think> stopped mid-thought,
    and its last number is not an answer; with the block closed, the answer after it counts."""
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    task = Gsm8kTask(limit=1, max_new_tokens=64)
    item = task.items(tok)[0]

    class Scripted(torch.nn.Module):
        def __init__(self, reply):
            super().__init__()
            self.p, self.reply = torch.nn.Parameter(torch.zeros(1)), reply

        def generate(self, input_ids, **kw):
            out = tok(self.reply, add_special_tokens=False, return_tensors="pt")["input_ids"]
            return torch.cat([input_ids, out[:, :kw["max_new_tokens"]]], dim=1)

    (cut,) = task.run(Scripted("16 eggs minus 3 is 13, minus 4 is 9, times"), tok, [item])
    (done,) = task.run(Scripted("16 - 3 - 4 = 9; 9 * 2 = 18</think>\nShe makes $18.\n#### 18"), tok, [item])
    assert cut["pred"] is None and not cut["correct"]
    assert done["pred"] == "18" and done["correct"]
    assert not cut["truncated"] and not done["truncated"]  # both ended within the budget
    # a tokenizer that makes </think> a special token: the decode drops the tag, the answer still counts
    tok.add_special_tokens({"additional_special_tokens": ["</think>"]})
    (special,) = task.run(Scripted("9 * 2 = 18</think>\n#### 18"), tok, [item])
    assert special["pred"] == "18" and special["correct"]
    (long,) = Gsm8kTask(limit=1, max_new_tokens=8).run(Scripted("16 - 3 - 4 = 9 and so on"), tok, [item])
    assert long["truncated"] and long["pred"] is None  # 23 tokens > 8: cut at the budget
    assert Gsm8kTask().max_new_tokens is None  # 1024 with a chat template, 256 without (see run)


@pytest.mark.parametrize("body,says", [
    (b'{"question": "q", "answer": "#### 1"}\n{not json\n', "test.jsonl:2: not a JSON line"),
    (b'{"question": "q"}\n', "test.jsonl:1: a GSM8K record needs"),
    (b'["q", "a"]\n', "test.jsonl:1: a GSM8K record needs"),
    (b'\xff\xfe{"question"', "is not UTF-8"),
])
def test_bad_gsm8k_file_is_one_line(tmp_path, body, says):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_bytes(body)
    with pytest.raises(UserError, match=says) as e:
        load_gsm8k("test", tmp_path)
    assert "\n" not in str(e.value)
