"""Built-in task generators, scorer, Wilson CI and the evaluation loop (tiny random model)."""

import math

import pytest
import torch

torch.set_num_threads(1)

from staterank.errors import UserError  # noqa: E402
from staterank.tasks import EVAL_SEED_BASE, TASKS, extract_answer, get_task, niah_grid, score, train_text  # noqa: E402
from staterank.tasks.evaluate import accuracy_ci, evaluate, greedy_continuations, perplexity  # noqa: E402
from staterank.tasks.niah import QUESTION  # noqa: E402
from staterank.tasks.prose import prose_texts  # noqa: E402
from staterank.tasks.synthetic import _arith_heldout  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """A small byte-level BPE trained in-process (digits one per token, BOS added), like the built-in one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator([prose_texts("train")[0][:50_000]], trainer=tr)
    t.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_lands_at_requested_depth_in_tokens(tok, depth):
    for it in TASKS["niah"].generate(4, 3, context_tokens=400, depth=depth, tokenizer=tok):
        needle = f"The special magic number is {it.answer}."
        hay = it.prompt[: -len(QUESTION)]
        assert hay.count(needle) == 1 and it.prompt.endswith(QUESTION)
        n_hay = len(tok(hay, add_special_tokens=False)["input_ids"])
        assert 0.9 * 400 <= n_hay <= 400  # haystack incl. needle fills the requested token budget
        before = len(tok(hay[: hay.index(needle)], add_special_tokens=False)["input_ids"])
        n_needle = len(tok(needle, add_special_tokens=False)["input_ids"])
        assert abs(before / (n_hay - n_needle) - depth) <= 0.06  # depth as a fraction of the prose


def test_needle_depth_without_tokenizer():
    for d in (0.1, 0.6, 0.9):
        for it in TASKS["niah"].generate(3, 11, context_tokens=1024, depth=d):
            assert abs(it.meta["needle_depth_chars"] - d) <= 0.04


def test_niah_grid_and_heldout_split(tok):
    items = niah_grid((64, 128), (0.0, 1.0), 2, EVAL_SEED_BASE, tokenizer=tok)
    assert len(items) == 8 and len({it.id for it in items}) == 8
    assert all(it.meta["split"] == "heldout" for it in items)
    assert TASKS["niah"].generate(1, 5)[0].meta["split"] == "train"
    # the held-out tail never overlaps the training part
    for tr, ho in zip(prose_texts("train"), prose_texts("heldout")):
        assert ho[:200] not in tr
    # the held-out part halves into the contexts' text and the probe's scored text, at a paragraph start
    for ho, ctx, ev in zip(prose_texts("heldout"), prose_texts("contexts"), prose_texts("eval")):
        assert ctx + ev == ho and ev.startswith(ho[len(ctx):]) and ctx.endswith("\n")
        assert 0.4 < len(ctx) / len(ho) < 0.6 and ev[:200] not in ctx


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_deterministic_and_seed_dependent(name):
    g = TASKS[name].generate
    a, b, c = g(6, 123), g(6, 123), g(6, 124)
    assert [(i.prompt, i.answer) for i in a] == [(i.prompt, i.answer) for i in b]
    assert [i.prompt for i in a] != [i.prompt for i in c]
    for it in a:
        assert it.answer and it.answer == it.answer.strip() and "\n" not in it.answer
        assert train_text(it).endswith(it.answer)


def test_task_answers_are_right():
    for it in TASKS["arith"].generate(20, 7):
        a, b = it.prompt.rstrip("=").split("+")
        assert int(it.answer) == int(a) + int(b)
    for it in TASKS["mqar"].generate(20, 7, n_pairs=6, n_queries=3):
        key = it.prompt.rsplit(" ", 1)[-1].rstrip("=")
        assert f"{key}={it.answer}," in it.prompt or f"{key}={it.answer}." in it.prompt
    for it in TASKS["multihop"].generate(20, 7, hops=3, n_distractors=2):
        env = {}
        for s in it.prompt[len("Vars: "):].split(". ")[0].split("; "):
            k, v = s.split("=")
            env[k] = env[v] if v in env else v
        assert env[it.prompt.split(". ")[-1].split("=")[0]] == it.answer


def test_arith_eval_problems_never_trained_on():
    assert all(_arith_heldout(*map(int, it.prompt[:-1].split("+"))) for it in TASKS["arith"].generate(50, EVAL_SEED_BASE))
    assert not any(_arith_heldout(*map(int, it.prompt[:-1].split("+"))) for it in TASKS["arith"].generate(50, 1))


def test_arith_heldout_split_is_independent_of_the_answer():
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    held = [(a, b) for a, b in pairs if _arith_heldout(a, b)]
    assert 0.08 < len(held) / len(pairs) < 0.12
    assert all(_arith_heldout(b, a) for a, b in held)  # b+a is held out with a+b
    # every units digit and every sum length appears among held-out answers, in roughly training's proportions
    for digit in range(10):
        share = sum((a + b) % 10 == digit for a, b in held) / len(held)
        assert 0.05 < share < 0.15, (digit, share)
    assert {len(str(a + b)) for a, b in held} == {2, 3}


def test_scorer_exact():
    assert extract_answer(" 4821\nThe rest") == "4821"
    # a model not trained on the format goes on after the number: the leading integer is the answer,
    # all of its digits (a longer number stays wrong), and a line not starting with one stays as it is
    assert extract_answer(" 8328.") == "8328" and extract_answer("66, dx=12") == "66"
    assert extract_answer("83281 is it") == "83281" and not score(extract_answer("83281"), "8328")
    assert extract_answer("-5 apples") == "-5" and extract_answer("The number is 8328") == "The number is 8328"
    assert extract_answer("110.5") == "110.5" and not score(extract_answer("110.5"), "110")  # not an integer
    assert extract_answer("1,000 or so") == "1,000 or so" and extract_answer("8328.") == "8328"
    assert score("4821", " 4821 ") and not score("482", "4821") and not score("48210", "4821")
    assert not score("", "0")


def test_get_task_unknown_lists_names():
    with pytest.raises(UserError, match="arith.*mqar.*multihop.*niah"):
        get_task("nope")


def test_wilson_known_values():
    acc, lo, hi = accuracy_ci([True] * 8 + [False] * 2)
    assert acc == 0.8 and math.isclose(lo, 0.4902, abs_tol=1e-4) and math.isclose(hi, 0.9433, abs_tol=1e-4)
    acc, lo, hi = accuracy_ci([False] * 20)
    assert acc == 0 and lo == 0 and math.isclose(hi, 0.1611, abs_tol=1e-4)
    from scipy.stats import binomtest
    ci = binomtest(37, 64).proportion_ci(method="wilson")
    _, lo, hi = accuracy_ci([True] * 37 + [False] * 27)
    assert math.isclose(lo, ci.low, abs_tol=1e-9) and math.isclose(hi, ci.high, abs_tol=1e-9)


def _tiny_model(tok):
    from transformers import AutoModelForCausalLM, Qwen3NextConfig

    torch.manual_seed(0)
    cfg = Qwen3NextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          layer_types=["linear_attention", "full_attention"], num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, linear_num_key_heads=1, linear_num_value_heads=2,
                          linear_key_head_dim=16, linear_value_head_dim=16, num_experts=0,
                          bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_evaluate_end_to_end_tiny_model(tok):
    model = _tiny_model(tok)
    items = TASKS["arith"].generate(6, 1) + TASKS["mqar"].generate(3, 1, n_pairs=3, n_queries=2)
    rows = evaluate(model, tok, items, max_new_tokens=4, batch_size=4)
    assert [r["id"] for r in rows] == [it.id for it in items]
    assert all(set(r) == {"id", "pred", "answer", "correct"} for r in rows)
    assert all(r["correct"] == (r["pred"] == r["answer"]) for r in rows)
    # batching (equal-length groups, no padding) gives exactly the one-by-one continuations
    prompts = [it.prompt for it in items]
    assert greedy_continuations(model, tok, prompts, 4, batch_size=8) == greedy_continuations(model, tok, prompts, 4, 1)
    p = perplexity(model, tok, prose_texts("heldout")[0], max_tokens=200, window=64)
    assert 1 < p < 10 * len(tok)


def test_perplexity_builds_no_autograd_graph(tok):
    model = _tiny_model(tok)
    seen = []
    model.register_forward_hook(lambda m, a, out: seen.append(torch.is_grad_enabled()))
    perplexity(model, tok, prose_texts("heldout")[0], max_tokens=100, window=64)
    assert seen and not any(seen)


@pytest.mark.parametrize("kw", [{"context_tokens": 0}, {"context_tokens": -5}, {"depth": 1.5}, {"depth": -0.5}])
def test_niah_refuses_bad_cells_in_one_line(kw):
    with pytest.raises(UserError) as e:
        TASKS["niah"].generate(1, EVAL_SEED_BASE, **kw)
    assert "\n" not in str(e.value)


def test_niah_reads_the_given_data_dir(tmp_path):
    (tmp_path / "prose").mkdir()
    (tmp_path / "prose" / "y.txt").write_text("".join(f"A quokka named {i} sat.\n\n" for i in range(3000)))
    items = niah_grid((64,), (0.0, 1.0), 2, EVAL_SEED_BASE, data_dir=tmp_path)
    assert len(items) == 4 and all("quokka" in it.prompt for it in items)
    with pytest.raises(UserError, match="no such directory"):
        niah_grid((64,), (0.5,), 1, EVAL_SEED_BASE, data_dir=tmp_path / "absent")


def test_chance_is_the_best_guess_without_the_skill():
    """MQAR and multihop can be guessed far above 1/#answers by copying a value from the prompt, and
    copying the commonest candidate beats copying one at random: "chance" (the no-skill-to-lose bar)
    must be the better guess, measured here on eval items; addition's, the best constant answer."""
    import random
    import re
    from collections import Counter

    from staterank.tasks import EVAL_SEED_BASE, TASKS

    rng, n = random.Random(0), 20000

    def guesses(cands, answer):
        top = Counter(cands).most_common()
        best = [v for v, c in top if c == top[0][1]]
        return rng.choice(cands) == answer, rng.choice(best) == answer

    for name, candidates in (
            ("multihop", lambda p: re.findall(r"\b[a-z]=(\d)\b", p)),
            ("mqar", lambda p: [v for k, v in re.findall(r"([a-z]{2})=(\d\d)", p.split("Queries")[0])
                                if k not in set(re.findall(r"([a-z]{2})=\d\d", p.split("Queries")[1]))])):
        hits = [guesses(candidates(it.prompt), it.answer) for it in TASKS[name].generate(n, EVAL_SEED_BASE + 7)]
        at_random, commonest = (sum(h[i] for h in hits) / n for i in (0, 1))
        assert at_random < commonest, name
        assert abs(commonest - TASKS[name].chance) < 0.01, (name, commonest, TASKS[name].chance)

    held = TASKS["arith"].generate(761, EVAL_SEED_BASE + 7)  # all held-out problems, each once
    answers = Counter(it.answer for it in held)
    assert answers.most_common(1)[0][1] / len(held) == pytest.approx(TASKS["arith"].chance, abs=1e-12)


def test_niah_long_contexts_have_their_length_or_refuse():
    """A haystack longer than its file goes on into the next files (Austen's held-out parts are
    ~45-90k characters), instead of silently coming out short; longer than all the prose: one line."""
    from staterank.tasks.niah import _ntok

    # without a tokenizer a token is 4 characters: 30000 tokens need 120k, more than any Austen file
    items = TASKS["niah"].generate(8, EVAL_SEED_BASE, context_tokens=30000)
    assert all(30000 - 40 <= _ntok(None, it.prompt) <= 30000 + 40 for it in items)
    with pytest.raises(UserError, match="needs more heldout prose than there is"):
        TASKS["niah"].generate(1, EVAL_SEED_BASE, context_tokens=10**7)


def test_arith_eval_items_are_distinct_and_capped_by_the_pool():
    items = TASKS["arith"].generate(761, EVAL_SEED_BASE)
    assert len({it.prompt for it in items}) == 761  # every held-out 2-digit problem exactly once
    with pytest.raises(UserError, match="761 held-out"):
        TASKS["arith"].generate(762, EVAL_SEED_BASE)
    # training draws stay with replacement (the builtin model's recipe reproduces): 2000 draws from the
    # 7339 training problems repeat some
    assert len({it.prompt for it in TASKS["arith"].generate(2000, 3)}) < 2000


def test_a_binary_prose_file_in_a_data_folder_is_one_line(tmp_path):
    from staterank.tasks.prose import prose_texts

    (tmp_path / "prose").mkdir()
    (tmp_path / "prose" / "a.txt").write_text("A paragraph of prose.\n\n" * 50)
    (tmp_path / "prose" / "b.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 not prose")
    with pytest.raises(UserError, match=r"prose file .*b\.txt: not UTF-8 text"):
        prose_texts("heldout", str(tmp_path))
