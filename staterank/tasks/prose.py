"""Public-domain prose (Austen, KJV) normalised and split into train / held-out parts.

Split rule (documented in the built-in model card): the first 90 % of the characters of every prose
file is training text, the last 10 % is held out (perplexity, evaluation haystacks). Files are read
from the data directory (``staterank.data``), never copied into the repository.
"""

from __future__ import annotations

import functools
import re

from ..data import prose_files
from ..errors import UserError

TRAIN_FRACTION = 0.9
SPLITS = ("train", "heldout")

_VERSE_NO = re.compile(r"^\s*\d+\s+", re.M)


def normalise(text: str, drop_verse_numbers: bool = False) -> str:
    """Unwrap hard line breaks: one paragraph per line, single spaces inside a paragraph."""
    if drop_verse_numbers:
        # KJV verse numbers would put stray digits into every haystack; the needle is a number.
        text = _VERSE_NO.sub("", text)
    paras = re.split(r"\n\s*\n", text)
    paras = [" ".join(p.split()) for p in paras]
    return "\n".join(p for p in paras if p)


@functools.lru_cache(maxsize=8)
def prose_texts(split: str = "train", data_dir: str | None = None) -> tuple[str, ...]:
    """Normalised texts of every prose file, restricted to ``split`` ("train" or "heldout")."""
    if split not in SPLITS:
        raise UserError(f"unknown prose split {split!r}; choose one of {', '.join(SPLITS)}")
    out = []
    for f in prose_files(data_dir):
        text = normalise(f.read_text(encoding="utf-8", errors="replace"), drop_verse_numbers=f.name == "kjv.txt")
        cut = int(len(text) * TRAIN_FRACTION)
        # move the cut to a paragraph start so neither side begins mid-word
        nl = text.find("\n", cut)
        cut = nl + 1 if nl >= 0 else cut
        out.append(text[:cut] if split == "train" else text[cut:])
    return tuple(out)
