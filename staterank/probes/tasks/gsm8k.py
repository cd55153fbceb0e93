"""gsm8k: GSM8K test questions, greedy, final-number exact match (chat template when the tokenizer
has one), and the final-number extraction it scores with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import torch

from ...errors import UserError
from ...tasks import Item
from .base import ProbeTask, TaskOptions, register

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


def load_gsm8k(split: str = "test", data_dir=None) -> list[dict]:
    """GSM8K records {question, answer}: ``<data>/gsm8k/<split>.jsonl`` if present, else the HF
    dataset ``openai/gsm8k`` (``datasets`` is imported only then)."""
    from ...data import check_given, read_gsm8k
    from ...data import data_dir as resolve

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


@register("gsm8k", "GSM8K test questions, greedy, final-number exact match (needs the data dir or HF datasets)")
def build(o: TaskOptions) -> ProbeTask:
    return Gsm8kTask(data_dir=o.data_dir, n_shot=o.n_shot, **o.common())
