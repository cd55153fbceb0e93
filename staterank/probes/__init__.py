"""Ablation probes: remove value heads from an in-memory model and measure what breaks, with
count-, byte- and layer-matched random controls.

``ablate`` (context manager), ``groups`` (which heads), ``tasks`` (what to measure), ``run.probe``
(the stage that writes a run folder), ``lmeval`` (any lm-evaluation-harness task, optional extra).
"""

from .ablate import MODES, ablate, calibrate_means
from .run import probe, verdicts

__all__ = ["MODES", "ablate", "calibrate_means", "probe", "verdicts"]
