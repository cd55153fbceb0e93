"""Storage precisions of a recurrent state and their round trip (store, then read back as fp32).

"Storing a head's state at precision P" means the state an engine keeps between steps is rounded to
P each time it is stored and read back from there (see ``store.py`` for when that happens). A
precision here is a name (``PRECISIONS``):

  fp32            identity (the model's own state; 4 bytes an element)
  bf16, fp16      a cast to the 16-bit dtype and back (fp16 overflows to inf beyond 65504, as an
                  engine storing fp16 would)
  fp8_e4m3_head   torch.float8_e4m3fn with one fp32 scale per head: s = absmax(S_h) / 448
  fp8_e4m3_row    ... one fp32 scale per row k of S_h [K, V] (absmax over V): K scales a head
  fp8_e5m2_head   torch.float8_e5m2, s = absmax / 57344;   fp8_e5m2_row  per row
  int8_head       symmetric int8: q = round(S / s) clamped to [-127, 127], s = absmax(S_h) / 127
  int8_row        ... one scale per row k (absmax over V)
  drop            the head is removed: zero-ablated exactly as probe/prune do (0 bytes)

A scale of an all-zero head or row is 1 (the zeros stay zeros). Bytes of one head's state per
sequence: K·V·(bytes per element) + 4 bytes per fp32 scale (:func:`head_bytes`).

Shapes: B batch, H heads, K key dim, V value dim; states are [B, H, K, V].
"""

from __future__ import annotations

import torch

from ..errors import UserError

# name -> (element dtype or None for identity/drop, bytes per element, scale granularity or None)
_SPEC: dict[str, tuple[torch.dtype | None, int, str | None]] = {
    "fp32": (None, 4, None),
    "bf16": (torch.bfloat16, 2, None),
    "fp16": (torch.float16, 2, None),
    "fp8_e4m3_head": (torch.float8_e4m3fn, 1, "head"),
    "fp8_e4m3_row": (torch.float8_e4m3fn, 1, "row"),
    "fp8_e5m2_head": (torch.float8_e5m2, 1, "head"),
    "fp8_e5m2_row": (torch.float8_e5m2, 1, "row"),
    "int8_head": (torch.int8, 1, "head"),
    "int8_row": (torch.int8, 1, "row"),
    "drop": (None, 0, None),
}
PRECISIONS = tuple(_SPEC)
SCALE_BYTES = 4  # one fp32 scale


def check_precision(name: str) -> str:
    if name not in _SPEC:
        raise UserError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def head_bytes(name: str, k: int, v: int) -> int:
    """Bytes one head's [K, V] state takes per sequence when stored at ``name`` (elements + scales)."""
    _, per, gran = _SPEC[check_precision(name)]
    scales = {"head": 1, "row": k, None: 0}[gran]
    return k * v * per + scales * SCALE_BYTES


def _qmax(dtype: torch.dtype) -> float:
    return 127.0 if dtype == torch.int8 else float(torch.finfo(dtype).max)


def roundtrip(S: torch.Tensor, name: str) -> torch.Tensor:
    """``S`` [..., K, V] stored at precision ``name`` and read back, in S's dtype (a new tensor;
    ``fp32`` returns S itself, ``drop`` zeros). Each [K, V] matrix (one head of one sequence) gets
    its own scale(s)."""
    dtype, _, gran = _SPEC[check_precision(name)]
    if name == "fp32":
        return S
    if name == "drop":
        return torch.zeros_like(S)
    x = S.to(torch.float32)
    if gran is None:  # plain cast
        return x.to(dtype).to(S.dtype)
    dims = (-2, -1) if gran == "head" else (-1,)
    amax = x.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax > 0, amax / _qmax(dtype), torch.ones_like(amax))
    y = x / scale
    if dtype == torch.int8:
        q = torch.round(y).clamp_(-127, 127).to(torch.int8)
    else:  # |y| <= the format's max by construction; the cast rounds to nearest
        q = y.to(dtype)
    return (q.to(torch.float32) * scale).to(S.dtype)
