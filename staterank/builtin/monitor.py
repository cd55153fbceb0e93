"""Watching and saving a training run of the built-in model: a teacher-forced accuracy probe,
atomic checkpoint folders, and the stage logs that travel with a multi-stage model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..tasks import TASKS, train_text


@torch.no_grad()
def teacher_forced_acc(model, tok, n: int = 16, seed: int = 10**9 + 777) -> dict:
    """Cheap progress signal: all answer tokens argmax-correct under teacher forcing (eval seeds)."""
    model.eval()
    out = {}
    specs = {"niah": {"context_tokens": 256, "tokenizer": tok}, "mqar": {}, "multihop": {}, "arith": {}}
    for name, params in specs.items():
        ok = 0
        for it in TASKS[name].generate(n, seed, **params):
            p = tok(it.prompt)["input_ids"]
            full = tok(train_text(it))["input_ids"]
            x = torch.tensor([full])
            pred = model(input_ids=x, use_cache=False).logits[0, len(p) - 1:-1].argmax(-1)
            ok += bool((pred == x[0, len(p):]).all())
        out[name] = ok / n
    model.train()
    return out


def save_folder(model, tok, folder: Path, extra: dict) -> None:
    """Write a complete HF folder atomically (tmp dir + rename) so a kill never leaves half a model."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "training_state.json").write_text(json.dumps(extra, indent=1))
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)


def copy_stage_logs(init_from: Path, final: Path) -> None:
    """Copy the logs of the stages behind ``init_from`` (a stage's final/ or ckpt/ folder, its log one level
    up) into ``final`` as train_log_stage1.jsonl, train_log_stage2.jsonl, ..."""
    earlier = sorted(init_from.glob("train_log_stage*.jsonl"), key=lambda f: int(f.stem.removeprefix("train_log_stage")))
    for f in earlier:
        shutil.copy(f, final / f.name)
    log = init_from / "train_log.jsonl"
    log = log if log.is_file() else init_from.parent / "train_log.jsonl"
    if log.is_file():
        shutil.copy(log, final / f"train_log_stage{len(earlier) + 1}.jsonl")
