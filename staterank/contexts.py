"""The context suite: named, versioned texts generated deterministically from local data, no network.

Builtin contexts (``BUILTIN``), each at least ``tokens`` tokens long (default 2048):

=================  ==========================================================================
prose              held-out public-domain prose (the last 10 % of each prose file, file order)
math               GSM8K *test* questions with their worked answers ("Question: ... Answer: ...")
code               Python-like code from a seeded template generator (functions, loops, dicts)
dialogue           quoted speech from held-out prose, alternating speakers "A:" / "B:"
random             random token ids of the tokenizer (specials excluded) decoded to text; re-encoding
                   gives a similar but not identical id sequence. Without a tokenizer: random
                   lowercase letter "words" (then the context is random characters, not tokens)
repeat_rare        one rare character repeated (paper App. D attack 1; default ``"~"``)
repeat_number      one common number repeated (paper App. D attack 2; default ``"1 "``)
=================  ==========================================================================

Held-out prose and GSM8K test are used because the builtin model trained on the train splits.
Length: with a (fast) tokenizer a context is cut at a token boundary to ``tokens`` tokens
(``add_special_tokens=False``; re-encoding the cut text may give one or two more); without one, to 4
characters per requested token (an estimate: analyze truncates and records the real length).
Users add their own contexts from text files (:func:`from_file`) or HF datasets (:func:`from_hf`,
imports ``datasets`` only when called).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import data_dir, read_gsm8k, read_user_text
from .errors import UserError

SUITE_VERSION = "1"
CHARS_PER_TOKEN = 4  # only without a tokenizer
REPEAT_RARE = "~"
REPEAT_NUMBER = "1 "


@dataclass(frozen=True)
class Context:
    name: str
    kind: str  # builtin generator name, "file" or "hf"
    text: str
    source: str  # provenance, one line

    def to_dict(self) -> dict:
        return asdict(self)


class _Counter:
    """Token counts through a HF tokenizer, or the characters/4 estimate without one."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __call__(self, text: str) -> int:
        if self.tok is None:
            return len(text) // CHARS_PER_TOKEN
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


def _cut(text: str, tokens: int, count: _Counter) -> str:
    """The shortest prefix ending at a token boundary that still has >= ``tokens`` tokens."""
    if count.tok is None:
        return text[: tokens * CHARS_PER_TOKEN]
    try:
        offsets = count.tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError):  # slow tokenizers have no offsets: keep the whole text
        return text
    if len(offsets) <= tokens:
        return text
    cut = text[: offsets[tokens - 1][1]]
    return cut if count(cut) >= tokens else text


def _grow(name: str, chunks: Iterator[str], tokens: int, count: _Counter) -> str:
    """Concatenate chunks until the whole text has >= ``tokens`` tokens. Per-chunk counts only
    estimate the total (merges across chunk borders), so the full text is recounted before stopping."""
    parts: list[str] = []
    est = 0
    for c in chunks:
        parts.append(c)
        est += count(c)
        if est >= tokens:
            text = "".join(parts)
            if count(text) >= tokens:
                return _cut(text, tokens, count)
            est = count(text)
    raise UserError(f"context {name!r}: its source ran out before {tokens} tokens; ask for fewer tokens")


# ---- generators: each yields text chunks forever or until its source is exhausted -------------------

def _prose(rng: random.Random, tokenizer, data: str | None) -> Iterator[str]:
    from .tasks.prose import prose_texts

    for t in prose_texts("contexts", str(data_dir(data))):
        for para in t.split("\n"):
            yield para + "\n"


def _math(rng: random.Random, tokenizer, data: str | None) -> Iterator[str]:
    # test questions from the END of the file: the probe scores them from its start (the first
    # --limit), and the builtin model was trained on the train split
    path = data_dir(data) / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise UserError(f"GSM8K not found at {path}")
    for row in reversed(read_gsm8k(path)):
        answer = re.sub(r"<<[^>]*>>", "", row["answer"])  # calculator annotations are not prose
        answer = answer.replace("####", "The answer is")
        yield f"Question: {row['question']}\nAnswer: {answer}\n\n"


_WORDS = ("total count item value index node key price rate size name data result buffer item_list "
          "queue score weight offset limit width height user order cache state").split()


def _code(rng: random.Random, tokenizer, data: str | None) -> Iterator[str]:
    ops = ["+", "-", "*", "//", "%"]
    while True:
        f, a, b, c = rng.sample(_WORDS, 4)
        n, k, m = rng.randint(2, 50), rng.randint(2, 9), rng.randint(1, 99)
        op = rng.choice(ops)
        kind = rng.randrange(4)
        if kind == 0:
            yield (f"def compute_{f}({a}, {b}={m}):\n    {c} = 0\n    for i in range({n}):\n"
                   f"        if ({a} + i) % {k} == 0:\n            {c} += i {op} {b}\n    return {c}\n\n")
        elif kind == 1:
            yield (f"class {f.title().replace('_', '')}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n"
                   f"        self.{b} = [{', '.join(str(rng.randint(0, 99)) for _ in range(rng.randint(2, 6)))}]\n\n"
                   f"    def {c}(self):\n        return sum(x {op} {k} for x in self.{b}) + self.{a}\n\n")
        elif kind == 2:
            items = ", ".join(f'"{w}": {rng.randint(0, 999)}' for w in rng.sample(_WORDS, rng.randint(2, 5)))
            yield (f"{f} = {{{items}}}\n# keep only large entries\n"
                   f"{a} = {{k: v for k, v in {f}.items() if v > {m}}}\nprint(len({a}), sorted({a}))\n\n")
        else:
            yield (f"while {a} < {n * k}:\n    {a} = {a} {op} {k} + 1\n    if {a} == {m}:\n        break\n"
                   f"assert {a} >= 0, \"{b} must not be negative\"\n\n")


def _dialogue(rng: random.Random, tokenizer, data: str | None) -> Iterator[str]:
    from .tasks.prose import prose_texts

    quote = re.compile(r'"([^"\n]{8,500})"')
    i = 0
    for t in prose_texts("contexts", str(data_dir(data))):
        for m in quote.finditer(t):
            yield f"{'AB'[i % 2]}: {m.group(1).strip()}\n"
            i += 1


def _random(rng: random.Random, tokenizer, data: str | None) -> Iterator[str]:
    if tokenizer is None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        while True:
            yield " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(32)) + " "
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(len(tokenizer)) if i not in special]
    while True:
        yield tokenizer.decode([rng.choice(ids) for _ in range(64)])


def _repeat(unit: str) -> Callable[..., Iterator[str]]:
    def gen(rng, tokenizer, data):
        while True:
            yield unit * 64
    return gen


BUILTIN: dict[str, tuple[Callable[..., Iterator[str]], str]] = {
    "prose": (_prose, "held-out prose, its first half (of the last 10% of each file under prose/)"),
    "math": (_math, "GSM8K test.jsonl questions + answers from the end of the file, <<...>> removed"),
    "code": (_code, "seeded Python-like template generator"),
    "dialogue": (_dialogue, "quoted speech from held-out prose (first half), speakers A/B alternating"),
    "random": (_random, "uniform random token ids (specials excluded), decoded"),
    "repeat_rare": (_repeat(REPEAT_RARE), f"the character {REPEAT_RARE!r} repeated"),
    "repeat_number": (_repeat(REPEAT_NUMBER), f"{REPEAT_NUMBER!r} repeated"),
}

SUITES: dict[str, tuple[str, ...]] = {
    "default": ("prose", "math", "code", "dialogue", "random", "repeat_rare", "repeat_number"),
    # the five natural/synthetic inputs without the two attacks, for quick demos
    "natural": ("prose", "math", "code", "dialogue", "random"),
}


def builtin_context(name: str, *, tokens: int = 2048, tokenizer=None, seed: int = 0,
                    data: str | None = None) -> Context:
    """One builtin context of >= ``tokens`` tokens, deterministic in (name, tokens, tokenizer, seed)."""
    if name not in BUILTIN:
        raise UserError(f"unknown context {name!r}; builtin contexts are {', '.join(BUILTIN)}")
    if tokens < 1:
        raise UserError(f"tokens must be >= 1, got {tokens}")
    gen, desc = BUILTIN[name]
    rng = random.Random(f"staterank-context:{name}:{seed}")
    text = _grow(name, gen(rng, tokenizer, data), tokens, _Counter(tokenizer))
    if name == "random" and tokenizer is None:
        desc = "random lowercase letter words (no tokenizer given)"
    return Context(name, name, text, f"{desc}; suite v{SUITE_VERSION}, seed {seed}")


def suite(name: str = "default", *, tokens: int = 2048, tokenizer=None, seed: int = 0, data: str | None = None,
          only: list[str] | None = None) -> list[Context]:
    """The contexts of suite ``name`` (optionally restricted to the names in ``only``)."""
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    names = list(SUITES[name])
    if only:
        unknown = [n for n in only if n not in BUILTIN]
        if unknown:
            raise UserError(f"unknown context {unknown[0]!r}; builtin contexts are {', '.join(BUILTIN)}")
        names = list(only)
    return [builtin_context(n, tokens=tokens, tokenizer=tokenizer, seed=seed, data=data) for n in names]


def from_file(path: str | Path, name: str | None = None) -> Context:
    """A user context: the whole text of a UTF-8 file (analyze truncates it to --max-tokens)."""
    p = Path(path)
    text = read_user_text(p, f"context file {p}")
    return Context(name or p.stem, "file", text, f"file {p} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})")


def from_hf(spec: str, *, tokens: int = 2048, tokenizer=None, name: str | None = None) -> Context:
    """A user context from an HF dataset: ``spec`` = "DATASET[:CONFIG]:SPLIT:COLUMN"; rows are joined
    with blank lines in dataset order until >= ``tokens`` tokens. Needs ``datasets`` (and network or a
    local cache); imported only here."""
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise UserError(f"--hf-context wants DATASET[:CONFIG]:SPLIT:COLUMN, got {spec!r}")
    ds_name, config, split, column = (parts[0], None, *parts[1:]) if len(parts) == 3 else parts
    try:
        import datasets
    except ImportError:
        raise UserError("HF contexts need the 'datasets' package: pip install datasets") from None
    ds = datasets.load_dataset(ds_name, config, split=split, streaming=True)
    rows = (str(r[column]) + "\n\n" for r in ds)
    label = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{ds_name}_{split}_{column}")
    text = _grow(label, rows, tokens, _Counter(tokenizer))
    return Context(label, "hf", text, f"HF dataset {spec}")


def suite_hash(contexts: list[Context]) -> str:
    """sha256 prefix over names and texts: equal hashes mean identical inputs."""
    h = hashlib.sha256()
    for c in contexts:
        h.update(c.name.encode() + b"\0" + c.text.encode() + b"\0")
    return h.hexdigest()[:16]
