"""Which implementation of the delta rule a model's layers call: fla's Triton kernels on a GPU,
transformers' PyTorch reference on CPU (where those kernels cannot run), even when fla imports.

transformers binds another package's kernel at import time through
``use_kernel_func_from_hub_with_fallback``; the PyTorch function stays in the wrapper's closure, and
the module global is what the layers call, so re-binding that global switches every layer.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

# Packages whose kernels transformers binds at import time and which cannot run on CPU.
GPU_ONLY_PACKAGES = ("fla", "causal_conv1d")


def _closure(fn: Any) -> dict[str, Any]:
    code = getattr(fn, "__code__", None)
    if code is None or not getattr(fn, "__closure__", None):
        return {}
    return {n: c.cell_contents for n, c in zip(code.co_freevars, fn.__closure__)}


def _reference_of(fn: Any):
    """The PyTorch function behind a transformers ``use_kernel_func_from_hub_with_fallback`` wrapper
    that bound another package's kernel; None for anything else. From 5.25 that wrapper sits inside
    a ``kernels`` Func module whose forward calls it (``func`` in its closure)."""
    if isinstance(fn, nn.Module):
        fn = _closure(getattr(type(fn), "forward", None)).get("func", fn)
    cells = _closure(fn)
    if "torch_function" not in cells or "is_new_implementation" not in cells:
        return None
    return cells["torch_function"] if cells["is_new_implementation"] else None


_BOUND_KERNELS: dict[tuple[str, str], Any] = {}  # (module, name) -> the kernel wrapper we replaced


def bind_reference_kernels(module: ModuleType, cpu: bool) -> list[str]:
    """On CPU, replace kernel-bound functions in ``module``'s globals by their PyTorch references;
    otherwise put the kernels back. Returns the names changed."""
    changed = []
    for name, fn in list(vars(module).items()):
        key = (module.__name__, name)
        if cpu:
            ref = _reference_of(fn)
            if ref is not None:
                _BOUND_KERNELS[key] = fn
                setattr(module, name, ref)
                changed.append(name)
        elif key in _BOUND_KERNELS:
            setattr(module, name, _BOUND_KERNELS.pop(key))
            changed.append(name)
    return changed


@contextlib.contextmanager
def reference_kernels(module: ModuleType) -> Iterator[None]:
    """Inside the block, ``module``'s kernel-bound functions are their PyTorch references (for a
    CPU run while a GPU kernel is bound); afterwards exactly those are put back."""
    changed = bind_reference_kernels(module, cpu=True)
    try:
        yield
    finally:
        for name in changed:
            setattr(module, name, _BOUND_KERNELS.pop((module.__name__, name)))


def gpu_kernels_importable() -> bool:
    return any(importlib.util.find_spec(p) is not None for p in GPU_ONLY_PACKAGES)


def bind_for(adapter, dev: torch.device) -> None:
    """fla's Triton kernels on a GPU; transformers' PyTorch reference on CPU even if fla imports."""
    if dev.type == "cpu" and gpu_kernels_importable():
        bind_reference_kernels(adapter.module, cpu=True)
    elif dev.type != "cpu":
        bind_reference_kernels(adapter.module, cpu=False)
