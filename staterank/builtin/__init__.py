"""The built-in model: a small trained Gated-DeltaNet (3:1 hybrid Qwen3-Next) LM shipped with the package.

``BUILTIN_DIR`` is a plain HF folder; stock ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it.
Recipe: ``staterank/builtin/train.py``; measured accuracies: ``BUILTIN_DIR / "README.md"``.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR: Path = Path(__file__).resolve().parent / "model"


def load_builtin(path: str | Path | None = None):
    """(model, tokenizer) from the shipped folder (or ``path``): fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..errors import UserError

    folder = Path(path) if path else BUILTIN_DIR
    if not (folder / "config.json").is_file():
        raise UserError(f"no model folder at {folder} (config.json missing)")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_kernels=False)
    model.eval()
    return model, tok


__all__ = ["BUILTIN_DIR", "load_builtin"]
