"""Public-domain prose (Austen, KJV) normalised and split into train / held-out parts.

Split rule (documented in the built-in model card): the first 90 % of the characters of every prose
file is training text, the last 10 % is held out (perplexity, evaluation haystacks). The held-out part
halves, again at a paragraph start, into "contexts" (stratify's prose and dialogue contexts) and "eval"
(the probe's perplexity windows). Files are read
from the data directory (``staterank.data``), never copied into the repository.
"""

from __future__ import annotations

import functools
import re

from ..data import prose_files, read_user_text
from ..errors import UserError

TRAIN_FRACTION = 0.9
# "contexts" and "eval" are the two halves of each file's held-out part: the text that stratify's
# contexts measure ranks on (which then pick the heads to ablate) is never a perplexity window, the
# probe's one task that scores the text itself (NIAH scores only its needle and draws haystacks from
# the whole held-out part)
SPLITS = ("train", "heldout", "contexts", "eval")

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
        # a binary or non-UTF-8 file in a user's data folder is refused, not decoded into haystacks
        text = normalise(read_user_text(f, f"prose file {f}"), drop_verse_numbers=f.name == "kjv.txt")
        cut = int(len(text) * TRAIN_FRACTION)
        # move the cut to a paragraph start so neither side begins mid-word
        nl = text.find("\n", cut)
        cut = nl + 1 if nl >= 0 else cut
        part = text[:cut] if split == "train" else text[cut:]
        if split in ("contexts", "eval"):
            half = part.find("\n", len(part) // 2)  # at a paragraph start, as above
            if half < 0:
                half = part.rfind("\n", 0, len(part) // 2)
            half = half + 1 if half >= 0 else len(part) // 2
            part = part[:half] if split == "contexts" else part[half:]
        out.append(part)
    return tuple(out)
