"""What a probe measures: per-item results that can be paired across ablation conditions.

A ``ProbeTask`` builds its items once (deterministic in ``seed``) and runs a batch of them on a
model, returning one dict per item with ``id`` and either ``correct`` (accuracy tasks) or ``nll``
and ``tokens`` (perplexity). The runner appends those dicts to ``items.jsonl`` as they come, so an
interrupted probe resumes item by item.

Tasks: the built-in generators (``staterank.tasks``: niah as a context-length × depth grid, mqar,
multihop, arith; scored by ``tasks.evaluate.evaluate``), GSM8K (chat template when the tokenizer
has one, greedy, final-number exact match) and perplexity on held-out prose.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

import torch

from ..errors import UserError
from ..tasks import EVAL_SEED_BASE, Item, get_task, niah

# ---------------------------------------------------------------- GSM8K answer extraction

_NUM = r"-?\$?\s?-?\d[\d,]*(?:\.\d+)?"
_THINK = re.compile(r"<think>.*?</think>", re.S)


def strip_thinking(text: str) -> str:
    """Drop reasoning blocks. A template that opens ``<think>`` in the prompt leaves only the
    closing tag in the output: keep what follows the last ``</think>``. An unclosed ``<think>``
    (generation cut off while thinking) has no final answer: keep only what precedes it."""
    text = _THINK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text[: text.index("<think>")]
    return text


def normalize_number(s: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-$5' -> '-5', '5.00' -> '5'; None if not a number."""
    s = s.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    neg = s.count("-") % 2 == 1
    s = s.replace("-", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    d = -d if neg else d
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def extract_final_number(text: str) -> str | None:
    """The final answer of a GSM8K solution, normalized; None if there is none.

    Order: the first ``#### n``, else the last ``\\boxed{n}``, else the last "answer is n", else
    the last number in the text (after thinking blocks are removed)."""
    text = strip_thinking(text)
    m = re.search(r"####\s*(" + _NUM + ")", text)
    if m:
        return normalize_number(m.group(1))
    for pat in (r"\\boxed\{\s*(" + _NUM + r")\s*\}", r"answer\s*(?:is|:)\s*[:*\s]*(" + _NUM + ")"):
        ms = re.findall(pat, text, flags=re.I)
        if ms:
            return normalize_number(ms[-1])
    ms = re.findall(_NUM, text)
    return normalize_number(ms[-1]) if ms else None


def gsm8k_gold(answer_field: str) -> str:
    """Gold number of a GSM8K record's ``answer`` ('... #### 1,234')."""
    g = normalize_number(answer_field.rsplit("####", 1)[1].strip())
    if g is None:
        raise UserError(f"GSM8K record has no '#### n' answer: {answer_field[-40:]!r}")
    return g


# ---------------------------------------------------------------- tasks

class ProbeTask:
    """Base: ``items(tokenizer)`` once, then ``run(model, tokenizer, items)`` in batches."""

    name: str = ""
    metric: str = "accuracy"  # or "perplexity"

    def items(self, tokenizer) -> list[Item]:
        raise NotImplementedError

    def run(self, model, tokenizer, items: list[Item]) -> list[dict]:
        raise NotImplementedError


@dataclass
class BuiltinTask(ProbeTask):
    """A generator from ``staterank.tasks`` at its default parameters, on evaluation seeds."""

    name: str
    limit: int = 100
    seed: int = 0
    max_new_tokens: int = 8
    batch_size: int = 16

    def items(self, tokenizer) -> list[Item]:
        t = get_task(self.name)
        return t.generate(self.limit, EVAL_SEED_BASE + self.seed, **t.default_params)

    def run(self, model, tokenizer, items):
        from ..tasks.evaluate import evaluate

        return evaluate(model, tokenizer, items, self.max_new_tokens, self.batch_size)


@dataclass
class NiahTask(BuiltinTask):
    """Single-needle NIAH over a context-length × depth grid, on held-out prose from ``data_dir``.
    Lengths are measured with the model's tokenizer; lengths must be whole numbers >= 1, depths in
    [0, 1], neither repeated.

    ``limit`` is the number of items in all (as for every task), never more: each of the C =
    len(lengths) × len(depths) cells gets ``limit // C`` items and the ``limit % C`` left over go
    one each to cells spread evenly over the grid (cells in length-major order; extra item j to
    cell ``(2j + 1) C // (2 (limit % C))``). So with ``limit`` < C only ``limit`` cells are
    measured, one item each, spread over the grid (``limit=1``: the middle cell). A cell's items
    are the first ones of a longer run of the same cell, so raising ``limit`` only adds items."""

    name: str = "niah"
    lengths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    data_dir: Any = None

    def __post_init__(self):
        from ..tasks.niah import check_cell

        self.lengths, self.depths = tuple(self.lengths), tuple(self.depths)
        if not self.lengths or not self.depths:
            raise UserError("NIAH needs at least one context length and one depth")
        for L in self.lengths:
            check_cell(L, 0.0)
        for d in self.depths:
            check_cell(1, d)
        for what, xs in (("lengths", self.lengths), ("depths", self.depths)):
            if len(set(xs)) != len(xs):
                raise UserError(f"NIAH {what} repeat a value: {', '.join(f'{x:g}' for x in xs)}")
        if self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")

    def cell_counts(self) -> list[tuple[int, float, int]]:
        """(length, depth, items) for every cell, length-major; the counts sum to ``limit``."""
        cells = [(L, d) for L in self.lengths for d in self.depths]
        q, r = divmod(self.limit, len(cells))
        extra = {(2 * j + 1) * len(cells) // (2 * r) for j in range(r)}
        return [(L, d, q + (k in extra)) for k, (L, d) in enumerate(cells)]

    def items(self, tokenizer) -> list[Item]:
        items: list[Item] = []
        for L, d, n in self.cell_counts():
            if n:
                items += niah(n, EVAL_SEED_BASE + self.seed, context_tokens=L, depth=d, tokenizer=tokenizer,
                              data_dir=self.data_dir)
        return items

    def run(self, model, tokenizer, items):
        rows = super().run(model, tokenizer, items)
        for r, it in zip(rows, items):
            r["cell"] = f"{it.meta['context_tokens']}@{it.meta['depth']:g}"
        return rows


def load_gsm8k(split: str = "test", data_dir=None) -> list[dict]:
    """GSM8K records {question, answer}: ``<data>/gsm8k/<split>.jsonl`` if present, else the HF
    dataset ``openai/gsm8k`` (``datasets`` is imported only then)."""
    from ..data import check_given, data_dir as resolve, read_gsm8k

    check_given(data_dir)
    root = resolve(data_dir, required=False)
    path = root / "gsm8k" / f"{split}.jsonl" if root else None
    if path is not None and path.is_file():
        return read_gsm8k(path)
    where = f"no gsm8k/{split}.jsonl under {root}" if root else "no data directory"
    try:
        import datasets
    except ImportError:
        raise UserError(f"{where}, and the `datasets` package is not installed to download openai/gsm8k; "
                        "pip install datasets or pass --data-dir") from None
    try:
        return [dict(r) for r in datasets.load_dataset("openai/gsm8k", "main", split=split)]
    except Exception as e:  # offline, hub down, gated: one line, not a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{where}, and downloading openai/gsm8k failed ({type(e).__name__}: {msg}); "
                        f"pass --data-dir with gsm8k/{split}.jsonl") from None


GSM8K_INSTRUCTION = "Solve the problem step by step. End with the final answer as '#### <number>'."


@dataclass
class Gsm8kTask(ProbeTask):
    """GSM8K test questions, greedy, final-number exact match.

    With a chat template (Instruct / Thinking models) the question goes in one user turn with an
    instruction to end with '#### n'; otherwise the prompt is ``n_shot`` train examples and
    "Question: q\\nAnswer:" (the lm-eval gsm8k format), stopping at a blank line or "Question:"."""

    name: str = "gsm8k"
    limit: int = 100
    seed: int = 0
    max_new_tokens: int | None = None  # None: 256 for plain prompts, 1024 with a chat template (reasoning)
    n_shot: int = 0
    data_dir: Any = None
    use_chat_template: bool | None = None  # None: when the tokenizer has one

    def items(self, tokenizer) -> list[Item]:
        recs = load_gsm8k("test", self.data_dir)
        shots = ""
        if self.n_shot:
            train = load_gsm8k("train", self.data_dir)
            shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train[: self.n_shot])
        chat = self._chat(tokenizer)
        out = []
        for i, r in enumerate(recs[: self.limit]):
            if chat:
                msgs = [{"role": "user", "content": f"{r['question']}\n{GSM8K_INSTRUCTION}"}]
                prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            else:
                prompt = f"{shots}Question: {r['question']}\nAnswer:"
            out.append(Item(f"gsm8k-{i}", prompt, gsm8k_gold(r["answer"]), {"chat": chat}))
        return out

    def _chat(self, tokenizer) -> bool:
        if self.use_chat_template is not None:
            return self.use_chat_template
        return bool(getattr(tokenizer, "chat_template", None))

    @torch.no_grad()
    def run(self, model, tokenizer, items):
        dev = next(model.parameters()).device
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        rows = []
        for it in items:
            chat = it.meta.get("chat", False)
            stops = [] if chat else ["\n\n", "Question:"]
            # the chat template already holds the special tokens
            x = tokenizer(it.prompt, return_tensors="pt", add_special_tokens=not chat)["input_ids"].to(dev)
            kw = {"stop_strings": stops, "tokenizer": tokenizer} if stops else {}
            budget = self.max_new_tokens or (1024 if chat else 256)
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=budget,
                               do_sample=False, eos_token_id=eos, pad_token_id=pad, **kw)
            new = y[0, x.shape[1]:]
            text = tokenizer.decode(new, skip_special_tokens=True)
            # hit the budget without an end: the answer may be missing for want of tokens, not of skill
            truncated = len(new) >= budget and (eos is None or int(new[-1]) != eos) and not any(s in text for s in stops)
            for s in stops:
                text = text.split(s, 1)[0]
            if it.prompt.rfind("<think>") > it.prompt.rfind("</think>"):
                # the template opened the reasoning block: without its close in the output, generation
                # stopped mid-thought and there is no answer (not the last number of the reasoning).
                # Some tokenizers make </think> a special token, which the decode above dropped.
                if "</think>" not in text:
                    close = tokenizer.convert_tokens_to_ids("</think>")
                    hits = (new == close).nonzero() if isinstance(close, int) and close != tokenizer.unk_token_id else []
                    text = ("</think>" + tokenizer.decode(new[int(hits[-1]) + 1:], skip_special_tokens=True)
                            if len(hits) else "<think>" + text)
            pred = extract_final_number(text)
            rows.append({"id": it.id, "pred": pred, "answer": it.answer, "correct": pred == it.answer,
                         "truncated": bool(truncated)})
        return rows


@dataclass
class PerplexityTask(ProbeTask):
    """Held-out prose in windows of ``window`` tokens (each starts fresh with BOS, as in
    ``tasks.evaluate.perplexity``); an item is one window; per item the summed NLL and count.
    Prose is the second half of the held-out part of every file under ``data_dir`` (default:
    ``staterank.data``'s resolution order); stratify's contexts read the first half."""

    name: str = "ppl"
    metric: str = "perplexity"
    limit: int = 32
    window: int = 512
    data_dir: Any = None

    def items(self, tokenizer) -> list[Item]:
        from ..tasks.prose import prose_texts

        out = []
        # the second half of the held-out prose: stratify's contexts (which pick the heads) read the first
        for fi, text in enumerate(prose_texts("eval", None if self.data_dir is None else str(self.data_dir))):
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            for s in range(0, len(ids) - self.window + 1, self.window - 1):
                out.append(Item(f"ppl-{fi}-{s}", "", "", {"ids": ids[s:s + self.window - 1]}))
        # interleave files so a small limit still covers every file
        out.sort(key=lambda it: (int(it.id.rsplit("-", 1)[1]), it.id))
        return out[: self.limit]

    @torch.no_grad()
    def run(self, model, tokenizer, items):
        dev = next(model.parameters()).device
        bos = tokenizer.bos_token_id
        rows = []
        for it in items:
            ids = ([bos] if bos is not None else []) + list(it.meta["ids"])
            x = torch.tensor([ids], device=dev)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])
            rows.append({"id": it.id, "nll": -lp.sum().item(), "tokens": int(lp.numel())})
        return rows


def _descriptions() -> dict[str, str]:
    from ..tasks import TASKS

    return {**{n: t.description for n, t in TASKS.items()},
            "gsm8k": "GSM8K test questions, greedy, final-number exact match (needs the data dir or HF datasets)",
            "ppl": f"perplexity of held-out public-domain prose in {PerplexityTask.window}-token windows"}


PROBE_TASKS: dict[str, str] = _descriptions()  # name -> one line, for `staterank ls`
TASK_NAMES = tuple(PROBE_TASKS)


def check_seed(seed) -> None:
    """One-line UserError unless ``seed`` is a whole number >= 0 (eval items are drawn at
    EVAL_SEED_BASE + seed: a negative seed would reach training items)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"--seed must be a whole number >= 0, got {seed!r}")


def make_task(name: str, *, limit: int | None = None, seed: int = 0, batch_size: int = 16, data_dir=None,
              niah_lengths: Sequence[int] | None = None, niah_depths: Sequence[float] | None = None,
              max_new_tokens: int | None = None, n_shot: int = 0) -> ProbeTask:
    """A probe task by name, with its default item count unless ``limit`` is given. ``data_dir``
    (prose for niah / ppl, gsm8k/*.jsonl for gsm8k) must exist when given."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    from ..data import check_given

    check_seed(seed)
    check_given(data_dir)
    kw: dict = {"seed": seed}
    if limit is not None:
        kw["limit"] = limit
    if max_new_tokens is not None:
        kw["max_new_tokens"] = max_new_tokens
    if name == "niah":
        if niah_lengths:
            kw["lengths"] = tuple(_whole(x) for x in niah_lengths)
        if niah_depths:
            kw["depths"] = tuple(_number(d, "NIAH depths must lie in [0, 1]") for d in niah_depths)
        kw.setdefault("limit", 60)
        return NiahTask(batch_size=batch_size, data_dir=data_dir, **kw)
    if name in ("mqar", "multihop", "arith"):
        return BuiltinTask(name, batch_size=batch_size, **kw)
    if name == "gsm8k":
        return Gsm8kTask(data_dir=data_dir, n_shot=n_shot, **kw)
    if name == "ppl":
        kw.pop("seed"), kw.pop("max_new_tokens", None)
        return PerplexityTask(data_dir=data_dir, **kw)
    import difflib

    hint = difflib.get_close_matches(name, TASK_NAMES, n=1)
    raise UserError(f"unknown probe task {name!r}{f' (did you mean {hint[0]}?)' if hint else ''}; "
                    f"choose from {', '.join(TASK_NAMES)} (any lm-eval task: staterank.probes.lmeval)")


def _number(x, msg: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise UserError(f"{msg}, got {x!r}") from None


def _whole(x) -> int:
    """A NIAH length as an int: 256 and 256.0 pass, 25.5 is refused (one line); the range is
    checked by ``NiahTask``."""
    msg = "NIAH context lengths must be whole numbers of tokens >= 1"
    f = _number(x, msg)
    if not f.is_integer():
        raise UserError(f"{msg}, got {x!r}")
    return int(f)
