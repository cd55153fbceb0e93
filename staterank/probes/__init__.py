"""Ablation probes: remove value heads from an in-memory model and measure what breaks, with
count-, byte- and layer-matched random controls.

``ablate`` (context manager), ``groups`` (which heads), ``tasks`` (what to measure; a registry),
``run.probe`` (the stage that writes a run folder; settings in ``config.ProbeConfig``), ``scores``,
``measure``, ``itemlog``, ``results`` (its parts), ``lmeval`` (any lm-evaluation-harness task,
optional extra).
"""

from .ablate import MODES, ablate, calibrate_means
from .config import ProbeConfig
from .run import probe, verdicts

__all__ = ["MODES", "ProbeConfig", "ablate", "calibrate_means", "probe", "verdicts"]
