"""Runs staterank's stages on tiny models, as one process or under ``torchrun``; test_distributed.py
compares the folders. Not a test itself (pytest does not collect it).

    torchrun --nproc-per-node 2 tests/distributed_driver.py OUT analyze,stratify,probe,prune
    python tests/distributed_driver.py OUT probe --kill-after 7   # SIGKILL itself on rank 1 after 7 items
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # torchrun's default for its workers; the one-process run must match it

from staterank import distributed  # noqa: E402
from staterank.adapters import get_adapter  # noqa: E402
from staterank.models import Loaded  # noqa: E402
from staterank.probes.tasks import ProbeTask  # noqa: E402
from staterank.tasks import Item  # noqa: E402
from staterank.testing import byte_tokenizer, char_tokenizer, tiny_model  # noqa: E402


@dataclass
class NextToken(ProbeTask):
    """Is the greedy next token the unablated model's? ``_kill_after``: rank 1 SIGKILLs itself
    after that many items (a real kill: no cleanup, torchrun then stops the other rank)."""

    model: object = None
    name: str = "next"
    n: int = 9
    _kill_after: int | None = None
    _calls: list = field(default_factory=list)

    def __post_init__(self):
        g = torch.Generator().manual_seed(5)
        self._ids = [torch.randint(3, 97, (1, 10), generator=g) for _ in range(self.n)]
        with torch.no_grad():
            self._ans = [int(self.model(x).logits[0, -1].argmax()) for x in self._ids]

    def items(self, tokenizer):
        return [Item(f"x{i}", "", str(a), {"i": i}) for i, a in enumerate(self._ans)]

    def run(self, model, tokenizer, items):
        out = []
        for it in items:
            if self._kill_after is not None and distributed.world().rank == 1 and len(self._calls) >= self._kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            self._calls.append(it.id)
            with torch.no_grad():
                p = int(model(self._ids[it.meta["i"]]).logits[0, -1].argmax())
            out.append({"id": it.id, "pred": str(p), "answer": it.answer, "correct": str(p) == it.answer})
        return out

    def __repr__(self):
        return f"NextToken(n={self.n})"


def _loaded(family: str, tok, **kw) -> Loaded:
    m = tiny_model(family, **kw)
    return Loaded(model=m, tokenizer=tok, adapter=get_adapter(m), spec=f"tiny-{family}", source="memory", config={})


def analyze(out: Path) -> None:
    from staterank.analyze import analyze
    from staterank.capture import Schedule

    loaded = _loaded("qwen3_next", char_tokenizer())
    texts = {f"t{i}": "".join(chr(33 + (i * 7 + j * 13) % 90) for j in range(40 + 9 * i)) for i in range(3)}
    analyze(loaded, texts, schedule=Schedule(stride=4), out=out / "analyze")  # 3 texts: 2 + 1
    analyze(loaded, {"only": texts["t0"]}, out=out / "analyze1")  # rank 1 has nothing to do


def stratify(out: Path) -> None:
    from staterank.contexts import suite
    from staterank.stratify import StratifyConfig, run_stratify

    tok = char_tokenizer()
    loaded = _loaded("qwen3_5", tok)
    cfg = StratifyConfig(max_tokens=64, stride=8, t_early=16, t_late=64, init_gates="model")
    run_stratify(loaded, suite("natural", tokens=64, tokenizer=tok), out / "stratify", cfg)


def probe(out: Path, kill_after: int | None = None) -> None:
    from staterank.probes.run import HeadScores, probe

    model = tiny_model("qwen3_next", h_v=4)
    layers = get_adapter(model).linear_layers(model)
    with torch.no_grad():  # random tiny models barely read their heads: amplify them so ablations matter
        for l in layers:
            l.module.out_proj.weight.mul_(10)
    mr = np.random.default_rng(0).uniform(1, 8, (len(layers), 4))
    hs = HeadScores([l.index for l in layers], mr, mr / 8, mr / 2, "test")
    task = NextToken(model, _kill_after=kill_after)
    loaded = Loaded(model=model, tokenizer=None, adapter=get_adapter(model), spec="tiny", source="memory", config={})
    probe(loaded, task_objects=[task], groups=["low", "random"], out=out / "probe", count=2, seeds=2, scores=hs,
          batch_size=2, single_head=True, single_limit=3)
    r = distributed.world()
    (out / f"calls.rank{r.rank}.json").write_text(json.dumps(task._calls))


def prune(out: Path) -> None:
    from staterank.prune.run import PruneConfig, run_prune

    loaded = _loaded("qwen3_next", byte_tokenizer(), vocab=262)
    cfg = PruneConfig(fraction=0.25, ranking="per_layer", calib_suite="natural", calib_tokens=40, calib_stride=8,
                      tasks=("mqar",), eval_n=5, random_seeds=1, state_context=16, state_batch=1, decode_tokens=2,
                      max_new_tokens=3)
    run_prune(loaded, cfg, out / "prune")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("stages")
    ap.add_argument("--kill-after", type=int)
    a = ap.parse_args()
    from staterank.errors import UserError
    from staterank.progress import set_quiet

    set_quiet()
    try:
        for s in a.stages.split(","):
            if s == "probe":
                probe(a.out, a.kill_after)
            else:
                {"analyze": analyze, "stratify": stratify, "prune": prune}[s](a.out)
    except UserError as e:
        if getattr(e, "echo", True):
            print(f"staterank: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
