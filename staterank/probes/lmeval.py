"""Bridge to lm-evaluation-harness: any lm-eval task on the in-memory (ablated) model.

    res = lm_eval_probe(loaded, ["gsm8k_local"], heads={3: [0, 5]}, limit=50, data_dir=...)

The model object itself is handed to ``HFLM(pretrained=model, tokenizer=...)`` and evaluated inside
``with ablate(...)``, so lm-eval sees exactly the ablated model. ``lm_eval`` is imported only here
(the ``eval`` extra: ``pip install 'staterank[eval]'``). ``gsm8k_local`` is the installed lm-eval's
own ``gsm8k`` task config (5-shot, "Question: ...\\nAnswer:", strict and flexible match) reading the
local GSM8K jsonl files, so it runs offline. Batch size defaults to 1: lm-eval pads batches, and pad tokens would run
through the recurrent state.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from .ablate import ablate

LOCAL_TASKS = ("gsm8k_local",)


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise UserError(f"lm-evaluation-harness is not usable ({e}); pip install 'staterank[eval]'") from None
    return lm_eval, HFLM, TaskManager


def _installed_gsm8k_yaml() -> Path:
    """The installed lm-eval distribution's gsm8k.yaml (found through the distribution, not the
    imported module)."""
    import importlib.metadata

    try:
        src = Path(str(importlib.metadata.distribution("lm_eval").locate_file("lm_eval/tasks/gsm8k/gsm8k.yaml")))
    except importlib.metadata.PackageNotFoundError:
        src = None
    if src is None or not src.is_file():
        raise UserError("gsm8k_local needs lm-evaluation-harness and its gsm8k task: pip install 'staterank[eval]'")
    return src


def gsm8k_local_yaml(data_dir: str | os.PathLike | None = None) -> str:
    """The installed lm-eval's own ``gsm8k`` task config (prompt, metric, regexes, stop
    sequences, filters, version), reading ``<data>/gsm8k/*.jsonl`` instead of the Hub."""
    import yaml

    from ..data import data_dir as resolve

    root = resolve(data_dir) / "gsm8k"
    for split in ("train", "test"):
        if not (root / f"{split}.jsonl").is_file():
            raise UserError(f"{root / (split + '.jsonl')} not found; pass --data-dir")
    cfg = yaml.safe_load(_installed_gsm8k_yaml().read_text(encoding="utf-8"))
    for k in ("tag", "dataset_name"):
        cfg.pop(k, None)
    cfg.update(task="gsm8k_local", dataset_path="json",
               dataset_kwargs={"data_files": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl")}})
    return yaml.safe_dump(cfg, sort_keys=False)


def lm_eval_probe(
    loaded,
    tasks: Sequence[str],
    heads: Mapping[int, Sequence[int]] | None = None,
    *,
    mode: str = "zero",
    means: Mapping[int, torch.Tensor] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    apply_chat_template: bool = False,
    data_dir: str | None = None,
) -> dict:
    """lm-eval ``results`` ({task: {metric: value}}) of ``loaded.model`` with ``heads`` ablated."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    if not tasks:
        raise UserError("no lm-eval tasks given")
    with tempfile.TemporaryDirectory() as tmp:
        include = None
        if any(t in LOCAL_TASKS for t in tasks):
            Path(tmp, "gsm8k_local.yaml").write_text(gsm8k_local_yaml(data_dir))
            include = tmp
        tm = TaskManager(include_path=include) if include else TaskManager()
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        with ablate(loaded.model, heads or {}, mode, means=means, adapter=getattr(loaded, "adapter", None)):
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                          task_manager=tm, apply_chat_template=apply_chat_template)
    if out is None:  # lm-eval returns None on non-zero ranks only
        raise UserError("lm-eval returned no results")
    return {t: {k: v for k, v in r.items() if isinstance(v, (int, float, str)) or v is None}
            for t, r in out.get("results", {}).items()}
