"""ppl: perplexity of held-out public-domain prose in fixed token windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...tasks import Item
from .base import ProbeTask, TaskOptions, register


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
        from ...tasks.prose import prose_texts

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


@register("ppl", f"perplexity of held-out public-domain prose in {PerplexityTask.window}-token windows")
def build(o: TaskOptions) -> ProbeTask:
    # no seed (the windows are fixed) and no generation budget
    return PerplexityTask(data_dir=o.data_dir, **({} if o.limit is None else {"limit": o.limit}))
