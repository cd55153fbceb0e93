"""Calibration of the prune stage: per-head statistics from an analyze run of the calibration suite.

    stats, head_bytes, info = calibrate(loaded, cfg, run_dir / "calibration")
    # stats: stratify.HeadStats, r̄ / n̄ / d per head [L, H]; head_bytes: K·V·4 per layer [L]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..models import Loaded
from ..stratify import HeadStats
from .config import PruneConfig


def calibration_contexts(loaded: Loaded, cfg: PruneConfig) -> list:
    """The calibration suite's contexts (a bad suite name or data folder fails here, cheaply)."""
    from ..contexts import suite

    return suite(cfg.calib_suite, tokens=cfg.calib_tokens, tokenizer=loaded.tokenizer, seed=cfg.seed, data=cfg.data_dir)


def calibrate(loaded: Loaded, cfg: PruneConfig, out: Path | None,
              ctx: list | None = None) -> tuple[HeadStats, np.ndarray, dict]:
    """Per-head r̄, n̄, d from the calibration suite (``stratify.head_stats`` over an analyze run),
    the state bytes of one head per layer [L] (K·V·4), and a JSON-able description."""
    from ..analyze import analyze
    from ..capture import Schedule
    from ..contexts import suite_hash
    from ..stratify import default_positions, head_stats

    ctx = ctx if ctx is not None else calibration_contexts(loaded, cfg)
    dyn = analyze(loaded, {c.name: c.text for c in ctx}, max_tokens=cfg.calib_tokens,
                  # the positions stratify takes its time mean over (from t = 1), so r̄ means the same
                  schedule=Schedule(positions=default_positions(cfg.calib_tokens, cfg.calib_stride)),
                  seed=cfg.seed, out=out)
    stats = head_stats(dyn.arrays())
    head_bytes = np.array([l.layout.k * l.layout.v * 4 for l in loaded.adapter.linear_layers(loaded.model)])
    info = {"suite": cfg.calib_suite, "contexts": [c.name for c in ctx], "suite_hash": suite_hash(ctx),
            "tokens": cfg.calib_tokens, "stride": cfg.calib_stride, "r_bar": "time mean (stratify.head_stats)",
            "d": stats.bound.tolist()}
    return stats, head_bytes, info
