"""What a storage plan costs: greedy task accuracy (generate, as probe/prune) and teacher-forced answer
NLL (the per-head sensitivity table), both with every state stored at the plan's precisions.

    rows = plan_rows(model, tok, items, plan, chunk=64)          # {task: [{id, pred, answer, correct}]}
    nll, err = answer_nll(model, tok, items, [plan_a, plan_b], chunk=64)  # [2, n items], {(layer, head): rel. error}

Teacher forcing reproduces the storage schedule of prefill + greedy decode in one forward: the
prompt's P tokens are split into ``chunk``-token pieces (rounded between them and at P), then every
answer token is one step (rounded after each), via ``store.store_states``' ``decode_from``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..tasks import train_text
from ..tasks.evaluate import evaluate
from .store import store_states


def plan_rows(model, tokenizer, items: dict[str, list], plan: dict, chunk: int, max_new_tokens: int = 8) -> dict:
    """Greedy rows of every task with states stored per ``plan`` ({(layer, head): precision})."""
    out = {}
    with torch.no_grad(), store_states(model, plan, chunk=chunk):
        for name, its in items.items():
            out[name] = evaluate(model, tokenizer, its, max_new_tokens=max_new_tokens)
    return out


def _encode(tokenizer, items: list) -> list[tuple[list[int], int]]:
    """(prompt + answer ids, prompt length P) per item; the answer is what follows the prompt's tokens."""
    out = []
    for it in items:
        p = tokenizer(it.prompt)["input_ids"]
        full = tokenizer(train_text(it))["input_ids"]
        if full[: len(p)] != p or len(full) == len(p):  # a tokenizer merging across the boundary: score from the merge
            while p and full[: len(p)] != p:
                p = p[:-1]
        out.append((full, len(p)))
    return out


@torch.no_grad()
def answer_nll(model, tokenizer, items: list, plans: list[dict], chunk: int,
               max_rows: int = 32) -> tuple[np.ndarray, dict[tuple[int, int], float]]:
    """Per plan and item, −Σ log p(answer tokens | prompt, teacher-forced) with states stored per the
    plan [R plans, n items], and per planned head the relative round-trip error of its stored states,
    sqrt(Σ‖Q(S) − S‖² / Σ‖S‖²) over every store of the pass (a head in several plans: pooled).
    The R plans share each forward: the batch holds R copies of the items (store_states' blocks)."""
    model.eval()
    R = len(plans)
    enc = _encode(tokenizer, items)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (full, P) in enumerate(enc):
        groups[(len(full), P)].append(i)
    nll = np.zeros((R, len(items)))
    dev = model.device
    per = max(1, max_rows // R)  # items per forward
    with store_states(model, plans, chunk=chunk, record=True) as st:
        for (T, P), idx in sorted(groups.items()):
            for s in range(0, len(idx), per):
                part = idx[s:s + per]
                x = torch.tensor([enc[i][0] for i in part], dtype=torch.long, device=dev).repeat(R, 1)
                if st is not None:
                    st.decode_from = P
                # the cache makes the rule return (and so store) its state, as generate's prefill does
                logits = model(input_ids=x, use_cache=True).logits[:, P - 1:T - 1].float()
                lp = torch.log_softmax(logits, -1).gather(-1, x[:, P:, None])[..., 0]
                nll[:, part] = -lp.sum(-1).double().cpu().numpy().reshape(R, len(part))
        err = {} if st is None else {k: float(np.sqrt(e[0] / e[1])) if e[1] > 0 else 0.0 for k, e in st.errors.items()}
    return nll, err
