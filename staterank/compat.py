"""Which transformers versions staterank is tested with, and a fail-safe check of the installed one.

staterank hooks transformers internals (the delta-rule functions the layers call), so a new release
can change what it reads. The tested range is the one in the package metadata (pyproject.toml); the
versions CI ran are in ``requirements/`` and the README's compatibility matrix. ``selftest`` runs a
tiny model of a family through an exact, verified capture once per process, so that a release that
changed the rule call is refused in one line before any weight loads or run folder is made.
"""

from __future__ import annotations

import functools
import importlib.metadata as md

from .errors import UnsupportedTransformers, UserError


def installed() -> str:
    try:
        return md.version("transformers")
    except md.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def tested_range() -> str:
    """The transformers specifier staterank declares, e.g. '>=5.20,<5.26' ('' if not installed as a package)."""
    try:
        reqs = md.requires("staterank") or []
    except md.PackageNotFoundError:
        return ""
    from packaging.requirements import Requirement

    for r in reqs:
        req = Requirement(r)
        if req.name == "transformers" and req.marker is None:
            return str(req.specifier)
    return ""


def unsupported(what: str) -> UnsupportedTransformers:
    """One line: what could not be read, the installed version and the tested range."""
    rng = tested_range()
    fix = f"; install a tested version: pip install 'transformers{rng}'" if rng else ""
    return UnsupportedTransformers(f"transformers {installed()} is not supported: {what} "
                                   f"(staterank is tested with transformers{rng or ' 5.20-5.25'}){fix}")


@functools.cache
def selftest(model_type: str) -> None:
    """Capture (verified against the rule's own outputs and states) a tiny random model of
    ``model_type``'s family: a prefill, then one cached decode step. Raises ``UnsupportedTransformers``
    if the installed transformers builds, runs or calls that family in a way staterank cannot follow.
    Cached per process (about 0.1 s per family)."""
    import torch

    from .adapters import get_adapter
    from .capture import capture
    from .testing import tiny_config

    adapter = get_adapter(model_type)
    family = adapter.model_type
    try:
        from transformers import AutoModelForCausalLM

        from .kernel_binding import reference_kernels
        from .models import cache_kwarg, output_cache

        # the tiny model runs on CPU: GPU-only kernels (fla, bound at import before 5.25) step aside
        with torch.random.fork_rng(devices=[]), reference_kernels(adapter.module):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
            ids = torch.randint(3, 90, (1, 6))
            with torch.no_grad(), capture(model, adapter) as trace:
                cache = output_cache(model(ids[:, :5], use_cache=True))
                model(ids[:, 5:], **{cache_kwarg(model): cache}, use_cache=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever broke, the answer is the same one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise unsupported(f"a tiny {family} model fails under capture ({type(e).__name__}: {msg[:200]})") from None
    if trace.calls == 0:
        raise unsupported(f"the {family} layers no longer call {', '.join(adapter.rule_names)}")
