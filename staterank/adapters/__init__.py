"""Architecture adapters, keyed by HF ``model_type``. A new family is one module + one line here
(docs/adding-a-family.md)."""

from __future__ import annotations

import difflib

from ..errors import UserError
from .base import Adapter, HeadLayout, LinearLayer

_REGISTRY: dict[str, str] = {
    "qwen3_next": "qwen3_next",
    "qwen3_5": "qwen3_5",
    "qwen3_5_text": "qwen3_5",
    "kimi_linear": "kimi_linear",
    "olmo_hybrid": "olmo_hybrid",
}


def families() -> tuple[str, ...]:
    """The adapter modules (one per family), in registry order."""
    return tuple(dict.fromkeys(_REGISTRY.values()))


def supported_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_type) -> Adapter:
    """Adapter for a model, a config, or a ``model_type`` string; one-line UserError otherwise."""
    mt = model_or_type
    if not isinstance(mt, str):
        cfg = getattr(mt, "config", mt)
        mt = getattr(cfg, "model_type", None)
    if mt not in _REGISTRY:
        hint = difflib.get_close_matches(str(mt), _REGISTRY, n=1)
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        raise UserError(f"unsupported model_type {mt!r}{extra}; supported: {', '.join(supported_types())}")
    import importlib

    return importlib.import_module(f"{__name__}.{_REGISTRY[mt]}").ADAPTER


__all__ = ["Adapter", "HeadLayout", "LinearLayer", "families", "get_adapter", "supported_types"]
