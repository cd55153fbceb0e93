"""Greedy exact-match evaluation and windowed perplexity (Wilson intervals: ``staterank.stats``).

Batching never pads: prompts are grouped by exact token length and each group is decoded as one
batch, so every sequence sees exactly what it would see alone (padding tokens would otherwise pass
through the recurrent state of the Gated DeltaNet layers and shift rotary positions).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..stats import accuracy_ci, wilson_interval  # noqa: F401  (moved to stats; prune.run, builtin.evaluate import them from here)
from . import Item, extract_answer, score


@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int = 8,
                         batch_size: int = 16) -> list[str]:
    """Greedy continuation of every prompt (decoded text, special tokens dropped)."""
    model.eval()
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    outs: list[str] = [""] * len(prompts)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for chunk in length_batches([len(ids) for ids in enc], batch_size):
        x = torch.tensor([enc[i] for i in chunk], dtype=torch.long, device=model.device)
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                           do_sample=False, eos_token_id=eos, pad_token_id=pad)
        for r, i in enumerate(chunk):
            outs[i] = tokenizer.decode(y[r, x.shape[1]:], skip_special_tokens=True)
    return outs


def length_batches(lengths: list[int], batch_size: int = 16) -> list[list[int]]:
    """The batches ``greedy_continuations`` decodes, as prompt indices: prompts of one token length,
    at most ``batch_size`` each, shortest first (a batch passed alone is decoded exactly so)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    return [idx[s:s + batch_size] for _, idx in sorted(groups.items()) for s in range(0, len(idx), batch_size)]


def evaluate(model, tokenizer, items: list[Item], max_new_tokens: int = 8, batch_size: int = 16) -> list[dict]:
    """Per item: id, pred (``extract_answer`` of the continuation), answer, correct."""
    conts = greedy_continuations(model, tokenizer, [it.prompt for it in items], max_new_tokens, batch_size)
    rows = []
    for it, c in zip(items, conts):
        pred = extract_answer(c)
        rows.append({"id": it.id, "pred": pred, "answer": it.answer, "correct": score(pred, it.answer)})
    return rows


def perplexity_ids(tokenizer, text: str, max_tokens: int = 16384) -> list[int]:
    """The token ids ``perplexity`` scores: the first ``max_tokens`` of ``text``, no special tokens."""
    # tokenise only a prefix long enough for max_tokens (>= 1 char per token)
    return tokenizer(text[: 16 * max_tokens], add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]


@torch.no_grad()
def perplexity(model, tokenizer, text: str, max_tokens: int = 16384, window: int = 512) -> float:
    """Perplexity of the first ``max_tokens`` tokens of ``text`` over non-overlapping windows.

    Each window starts fresh with BOS (no carried state), so it measures in-window modelling at
    context <= ``window``; every token after the window's first is scored once.
    """
    model.eval()
    ids = perplexity_ids(tokenizer, text, max_tokens)
    bos = tokenizer.bos_token_id
    nll, count = 0.0, 0
    for s in range(0, len(ids), window - 1):
        chunk = ids[s:s + window - 1]
        if not chunk:
            break
        x = torch.tensor([[bos] + chunk] if bos is not None else [chunk], device=model.device)
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])
        nll -= lp.sum().item()
        count += lp.numel()
    return math.exp(nll / max(1, count))
