"""Needle in a haystack (gkamradt-style, single needle) over public-domain prose.

The needle "The special magic number is NNNN." is inserted at fraction ``depth`` (0 = start, 1 = end)
of a haystack of ``context_tokens`` tokens, at the nearest sentence boundary (else word boundary);
the question comes last. Without a tokenizer, lengths are approximated as 4 characters per token.
"""

from __future__ import annotations

import bisect
import numbers
import random

from ..errors import UserError
from . import Item, is_eval_seed
from .prose import prose_texts

QUESTION = "\nWhat is the special magic number? The special magic number is"
CHARS_PER_TOKEN = 4  # only used when no tokenizer is given


def _ntok(tokenizer, text: str) -> int:
    if tokenizer is None:
        return max(1, len(text) // CHARS_PER_TOKEN)
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _cut_to_tokens(tokenizer, text: str, budget: int) -> str:
    """Longest prefix of ``text`` ending at a word boundary with at most ``budget`` tokens."""
    if tokenizer is None:
        cut = budget * CHARS_PER_TOKEN
    else:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offs = enc["offset_mapping"]
        cut = offs[budget][0] if len(offs) > budget else len(text)
    head = text[:cut]
    if cut < len(text):
        sp = max(head.rfind(" "), head.rfind("\n"))
        head = head[:sp] if sp > 0 else head
    return head.rstrip()


def _insert_at(hay: str, depth: float, needle: str) -> tuple[str, int]:
    """Insert the needle near char fraction ``depth``; return the text and the needle's char offset."""
    target = round(depth * len(hay))
    if target <= 0:
        return needle + " " + hay, 0
    if target >= len(hay):
        return hay + " " + needle, len(hay) + 1
    window = max(40, int(0.03 * len(hay)))
    # boundaries: just after a sentence end, else just after a space
    cands = [i + 2 for i in range(max(0, target - window), min(len(hay) - 1, target + window))
             if hay[i] in ".?!" and hay[i + 1] in " \n"]
    if not cands:
        cands = [i + 1 for i in range(max(0, target - window), min(len(hay), target + window)) if hay[i] == " "]
    pos = min(cands, key=lambda c: abs(c - target)) if cands else target
    return hay[:pos] + needle + " " + hay[pos:], pos


def check_cell(context_tokens, depth) -> None:
    """One-line UserError unless ``context_tokens`` is an integer >= 1 and ``depth`` lies in [0, 1]."""
    if isinstance(context_tokens, bool) or not isinstance(context_tokens, numbers.Integral) or context_tokens < 1:
        raise UserError(f"NIAH context lengths must be whole numbers of tokens >= 1, got {context_tokens!r}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0.0 <= depth <= 1.0:
        raise UserError(f"NIAH depths must lie in [0, 1], got {depth!r}")


def niah(n: int, seed: int, context_tokens: int = 256, depth: float = 0.5, tokenizer=None,
         split: str | None = None, data_dir=None) -> list[Item]:
    """``n`` needle items. ``split`` defaults to held-out prose for eval seeds (>= 10**9), else train.
    Prose is read from ``data_dir`` (default: ``staterank.data.data_dir``'s resolution order)."""
    check_cell(context_tokens, depth)
    split = split or ("heldout" if is_eval_seed(seed) else "train")
    texts = prose_texts(split, None if data_dir is None else str(data_dir))
    cum = [0]
    for t in texts:
        cum.append(cum[-1] + len(t))
    rng = random.Random(f"niah:{seed}:{context_tokens}:{depth}")
    need_chars = context_tokens * 8  # generous; cut to the token budget below
    items = []
    for i in range(n):
        num = str(rng.randint(1000, 9999))
        needle = f"The special magic number is {num}."
        budget = max(1, context_tokens - _ntok(tokenizer, needle) - 1)
        # a file chosen in proportion to its length, a start at a paragraph beginning
        ti = bisect.bisect_right(cum, rng.randrange(cum[-1])) - 1
        t = texts[ti]
        start = rng.randrange(max(1, len(t) - need_chars))
        nl = t.find("\n", start)
        start = nl + 1 if 0 <= nl < len(t) - need_chars else start
        src = t[start:start + need_chars]
        for j in range(1, len(texts)):  # a file shorter than the haystack: go on into the next ones
            if len(src) >= need_chars:
                break
            src = (src + "\n" + texts[(ti + j) % len(texts)])[:need_chars]
        hay = _cut_to_tokens(tokenizer, src, budget)
        if len(src) < need_chars and _ntok(tokenizer, hay) < budget - 32:
            raise UserError(f"a NIAH context of {context_tokens} tokens needs more {split} prose than there is "
                            f"(about {_ntok(tokenizer, hay)} tokens); use shorter contexts")
        text, pos = _insert_at(hay, depth, needle)
        meta = {"context_tokens": context_tokens, "depth": depth, "needle_char": pos,
                "needle_depth_chars": pos / max(1, len(hay)), "split": split}
        items.append(Item(f"niah-{seed}-{context_tokens}-{depth:g}-{i}", text + QUESTION, num,
                          {**meta, "join": " "}))
    return items


def niah_grid(lengths=(256, 512, 1024), depths=(0.0, 0.25, 0.5, 0.75, 1.0), n_per_cell: int = 20,
              seed: int = 10**9, tokenizer=None, data_dir=None) -> list[Item]:
    """Items for every context length x depth cell (meta carries the cell)."""
    items = []
    for L in lengths:
        for d in depths:
            items += niah(n_per_cell, seed, context_tokens=L, depth=d, tokenizer=tokenizer, data_dir=data_dir)
    return items
