"""The training data of the built-in model: document mixture, curriculum and batches.

    data = DataStream(tok, seed=0, mix=parse_mix("niah=0.3,mqar=0.7"), loss="answers")
    x, labels, kind = data.batch_with_mask(step, T=seq_len_at(p), B=4096 // T, progress=p)  # each [B, T]

The batch of step s depends only on (seed, s): a row is filled with whole documents drawn by the
mixture's weights (task items, prose spans, GSM8K solutions, the copy drill), cut to T tokens.
"""

from __future__ import annotations

import random

import torch

from ..data import data_dir, read_gsm8k
from ..tasks import TASKS, TRAIN_SEED_LIMIT, train_text
from ..tasks.niah import QUESTION as NIAH_QUESTION
from ..tasks.prose import prose_texts


def gsm8k_texts(split: str = "train") -> list[str]:
    rows = read_gsm8k(data_dir() / "gsm8k" / f"{split}.jsonl")
    return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]


# Curriculum: (fraction of steps where the phase ends, sequence length); tokens per step fixed.
PHASES = [(0.15, 128), (0.40, 256), (0.75, 512), (1.0, 1024)]
MIX = {"niah": 0.30, "mqar": 0.15, "multihop": 0.15, "arith": 0.10, "prose": 0.20, "gsm8k": 0.10}
# "copy" (distinct random words, then the same words again) is an induction drill: the skill NIAH
# and MQAR retrieval need, with a dense signal (every copied token); opt-in through --mix.
KINDS = (*MIX, "copy")
# --loss choices -> (answers_only, prose_loss)
_LOSSES = {"all": (False, False), "answers": (True, False), "answers+prose": (True, True),
           "balanced": (True, True)}


def balanced_loss(logits: torch.Tensor, labels: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over answer tokens plus mean over prose tokens, halved: long prose
    documents cannot drown the few answer tokens (as one mean over all of them does).
    logits [B, T, vocab], labels and kind [B, T] (kind as in ``DataStream.batch_with_mask``)."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=-100, reduction="none")
    k = kind[:, 1:].flatten()
    parts = [ce[k == c].mean() for c in (1, 2) if bool((k == c).any())]
    return sum(parts) / len(parts)


def parse_mix(text: str) -> dict:
    """'mqar=0.3,niah=0.25' -> {kind: weight}; a one-line SystemExit on bad input."""
    try:
        m = {k.strip(): float(v) for k, v in (kv.split("=") for kv in text.split(","))}
    except ValueError:
        raise SystemExit(f"bad mixture {text!r}; expected kind=weight,kind=weight,...") from None
    unknown = set(m) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown mixture kinds {sorted(unknown)}; choose from {list(KINDS)}")
    return m


def seq_len_at(progress: float) -> int:
    for end, T in PHASES:
        if progress < end:
            return T
    return PHASES[-1][1]


class DataStream:
    def __init__(self, tokenizer, seed: int, mix: dict | None = None, loss: str = "all",
                 early_mix: dict | None = None, early_until: float = 0.0, niah_min: int = 64,
                 early_loss: str | None = None):
        self.tok = tokenizer
        self.niah_min = niah_min
        self.niah_tail = len(self._ids(NIAH_QUESTION + " 0000")) + 2  # + BOS, EOS
        self.loss = loss
        self.digit_ids = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
        self.seed = seed
        self.prose = prose_texts("train")
        self.gsm = gsm8k_texts("train")
        mix = mix or MIX
        self.kinds = list(mix)
        # single-token words (" word" as one BPE token) for the copy drill, in vocabulary order
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        self.words = [tokenizer.convert_tokens_to_string([t]) for t, _ in vocab
                      if t.startswith("\u0120") and t[1:].isalpha() and t[1:].islower() and len(t) >= 4]
        if (mix.get("copy", 0) > 0 or (early_mix or {}).get("copy", 0) > 0) and len(self.words) < 8:
            raise SystemExit(f"the copy drill needs >= 8 single-token words; this {len(tokenizer)}-token vocabulary "
                             f"has {len(self.words)} (use a larger --vocab or drop copy from the mixture)")
        self.weights = [mix[k] for k in self.kinds]
        self.early_until = early_until if early_mix else 0.0
        self.early_weights = [(early_mix or {}).get(k, 0.0) for k in self.kinds]
        self.early_loss = early_loss or loss

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _task_doc(self, it) -> tuple[list[int], list[int]]:
        """Token ids of a task item and its loss mask: the answer (+ EOS), and for MQAR also every
        value recalled in the query section (each is a recall target)."""
        ids = [self.tok.bos_token_id] + self._ids(train_text(it)) + [self.tok.eos_token_id]
        n_prompt = 1 + len(self._ids(it.prompt))
        mask = [0] * n_prompt + [1] * (len(ids) - n_prompt)
        if "Queries:" in it.prompt:
            n_pre = 1 + len(self._ids(it.prompt[: it.prompt.index("Queries:") + len("Queries:")]))
            for j in range(n_pre, n_prompt):
                mask[j] = int(ids[j] in self.digit_ids)
        return ids, mask

    def _doc(self, rng: random.Random, room: int, T: int, tseed: int, early: bool = False,
             prose_loss: bool = False) -> tuple[list[int], list[int]]:
        kind = rng.choices(self.kinds, self.early_weights if early else self.weights)[0]
        if kind == "niah" and room - self.niah_tail >= 32:
            # the haystack budget leaves room for the question and the answer: a cut-off answer teaches nothing
            L = rng.randint(min(self.niah_min, room - self.niah_tail - 16), room - self.niah_tail)
            it = TASKS["niah"].generate(1, tseed, context_tokens=L, depth=rng.random(), tokenizer=self.tok)[0]
            return self._task_doc(it)
        elif kind == "mqar":
            p = rng.randint(2, 8 if T <= 128 else 16)
            it = TASKS["mqar"].generate(1, tseed, n_pairs=p, n_queries=rng.randint(1, p))[0]
            return self._task_doc(it)
        elif kind == "multihop":
            it = TASKS["multihop"].generate(1, tseed, hops=rng.randint(1, 3), n_distractors=rng.randint(0, 3))[0]
            return self._task_doc(it)
        elif kind == "arith":
            return self._task_doc(TASKS["arith"].generate(1, tseed, digits=rng.choice([1, 2, 2, 2]))[0])
        elif kind == "copy":
            seq = "".join(rng.sample(self.words, rng.randint(4, min(32, max(4, room // 3)))))
            text = f"Copy:{seq}\nAgain:{seq}"
        elif kind == "gsm8k":
            text = rng.choice(self.gsm)
        else:  # prose span starting at a paragraph
            t = rng.choice(self.prose)
            s = rng.randrange(len(t) - 8 * T)
            nl = t.find("\n", s)
            s = nl + 1 if nl >= 0 else s
            ids = self._ids(t[s:s + 6 * min(room, T)])[:room]
            return [self.tok.bos_token_id] + ids, [2 * int(prose_loss)] * (len(ids) + 1)
        ids = [self.tok.bos_token_id] + self._ids(text) + [self.tok.eos_token_id]
        return ids, [2 * int(prose_loss)] * len(ids)

    def batch(self, step: int, T: int, B: int, progress: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels); labels are the inputs, or with answers_only -100 outside answers.
        Before ``early_until`` of the schedule, documents follow the early mixture."""
        return self.batch_with_mask(step, T, B, progress)[:2]

    def loss_at(self, progress: float) -> str:
        """The --loss choice in force at this point of the schedule (the early one before early_until)."""
        return self.early_loss if progress < self.early_until else self.loss

    def batch_with_mask(self, step: int, T: int, B: int, progress: float = 1.0):
        """(input_ids, labels, kind) with kind [B, T]: 1 on task answers, 2 on prose/GSM8K tokens that
        carry loss, 0 elsewhere (for the balanced loss)."""
        early = progress < self.early_until
        answers_only, prose_loss = _LOSSES[self.loss_at(progress)]
        rng = random.Random(f"train:{self.seed}:{step}")
        rows, masks = [], []
        for b in range(B):
            row: list[int] = []
            mrow: list[int] = []
            j = 0
            while len(row) < T:
                # task seeds stay below TRAIN_SEED_LIMIT; evaluation uses seeds >= 10**9
                tseed = (self.seed * 7919 + step * 256 + b * 16 + j) % TRAIN_SEED_LIMIT
                ids, m = self._doc(rng, T - len(row), T, tseed, early, prose_loss)
                row += ids
                mrow += m
                j += 1
            rows.append(row[:T])
            masks.append(mrow[:T])
        x = torch.tensor(rows, dtype=torch.long)
        kind = torch.tensor(masks)
        if not answers_only:
            return x, x, kind
        return x, x.masked_fill(kind == 0, -100), kind
