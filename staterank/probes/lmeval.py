"""Bridge to lm-evaluation-harness: any lm-eval task on the in-memory (ablated) model.

    res = lm_eval_probe(loaded, ["gsm8k_local"], heads={3: [0, 5]}, limit=50, data_dir=...)
    res = lm_eval_probe(loaded, ["my_ppl"], include=["tasks/"], samples_path="run/samples.jsonl", batch_size=8)

The model object itself is handed to ``HFLM(pretrained=model, tokenizer=...)`` and evaluated inside
``with ablate(...)``, so lm-eval sees exactly the ablated model. ``lm_eval`` is imported only here
(the ``eval`` extra: ``pip install 'staterank[eval]'``). ``gsm8k_local`` is the installed lm-eval's
own ``gsm8k`` task config (5-shot, "Question: ...\\nAnswer:", strict and flexible match) reading the
local GSM8K jsonl files, so it runs offline. ``include`` adds local task folders (lm-eval's
``--include_path``: any task YAML whose data is local runs offline). ``samples_path`` keeps every
per-item record lm-eval logs (its ``--log_samples``) as JSON lines. Batch size defaults to 1; larger
batches are padded by lm-eval: on the right for log-likelihoods, where a causal model's earlier
positions never see the pads (tests: batch 8 gives batch 1's perplexities), on the left for
generation, where the pads run through the recurrent state first: not checked here, so keep 1 for
generation tasks unless you compare.
"""

from __future__ import annotations

import json
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
    include: Sequence[str | os.PathLike] = (),
    samples_path: str | os.PathLike | None = None,
) -> dict:
    """lm-eval ``results`` ({task: {metric: value}}) of ``loaded.model`` with ``heads`` ablated;
    with ``samples_path``, lm-eval's per-item records are written there (JSON lines, one per item,
    its task under ``"task"``)."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    if not tasks:
        raise UserError("no lm-eval tasks given")
    if batch_size < 1:
        raise UserError(f"lm-eval batch size must be at least 1, got {batch_size}")
    folders = [Path(p) for p in include]
    for p in folders:
        if not p.is_dir():
            raise UserError(f"lm-eval task folder {p} not found (--lm-eval-include takes a folder of task YAMLs)")
    with tempfile.TemporaryDirectory() as tmp:
        if any(t in LOCAL_TASKS for t in tasks):
            Path(tmp, "gsm8k_local.yaml").write_text(gsm8k_local_yaml(data_dir))
            folders.append(Path(tmp))
        paths = [str(p) for p in folders]
        tm = TaskManager(include_path=paths[0] if len(paths) == 1 else paths) if paths else TaskManager()
        known = getattr(tm, "all_tasks", None)
        unknown = [t for t in tasks if known is not None and t not in known]
        if unknown:
            raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}"
                            + (f" (looked in lm-eval's tasks and {', '.join(map(str, include))})" if include else
                               " (a local task: --lm-eval-include DIR)"))
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        with ablate(loaded.model, heads or {}, mode, means=means, adapter=getattr(loaded, "adapter", None)):
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                          task_manager=tm, apply_chat_template=apply_chat_template,
                                          log_samples=samples_path is not None)
    if out is None:  # lm-eval returns None on non-zero ranks only
        raise UserError("lm-eval returned no results")
    if samples_path is not None:
        _write_samples(Path(samples_path), out.get("samples") or {})
    return {t: {k: v for k, v in r.items() if isinstance(v, (int, float, str)) or v is None}
            for t, r in out.get("results", {}).items()}


def _write_samples(path: Path, samples: Mapping[str, list]) -> None:
    """lm-eval's logged samples as JSON lines, atomically (lm-eval's own serialiser for odd values)."""
    from lm_eval.utils import handle_non_serializable

    from .. import runio

    lines = [json.dumps({"task": t, **s}, default=handle_non_serializable, ensure_ascii=False)
             for t, rows in samples.items() for s in rows]
    runio.atomic_write_text(path, "".join(line + "\n" for line in lines))
