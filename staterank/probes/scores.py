"""Per-head scores the low / high groups are chosen from: read (``--scores``, stratify
``HeadStats``) or measured on calibration prose (mean rank, normalised rank, mean nuclear norm).
Shapes: L linear layers, H value heads."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError


def calibration_texts(n: int = 8, chars: int = 6000, data_dir=None) -> list[str]:
    """``n`` deterministic segments of training-split prose (evenly spaced over all files) from
    ``data_dir`` (default: ``staterank.data``'s resolution order)."""
    from ..tasks.prose import prose_texts

    texts = prose_texts("train", None if data_dir is None else str(data_dir))
    allt = "\n".join(texts)
    step = max(1, (len(allt) - chars) // max(1, n))
    out = []
    for i in range(n):
        s = allt.find("\n", i * step) + 1
        out.append(allt[s:s + chars])
    return out


@dataclass
class HeadScores:
    """Per-head [L, H] arrays the groups are chosen from; ``layers`` [L] model layer indices."""

    layers: list[int]
    mean_rank: np.ndarray
    norm_rank: np.ndarray
    mean_nuclear: np.ndarray
    source: str

    def to_dict(self) -> dict:
        return {"layers": self.layers, "mean_rank": self.mean_rank, "norm_rank": self.norm_rank,
                "mean_nuclear": self.mean_nuclear, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> HeadScores:
        """From ``HeadStats.to_dict()`` (stratify) or our own scores.json; looks inside a
        ``head_stats`` / ``stats`` block too. Arrays are [L, H] (null / NaN where a layer has
        fewer heads), ``layers`` [L]; anything else is a one-line UserError."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: scores must be a JSON object, got {type(d).__name__}")
        for k in ("head_stats", "stats"):
            if k in d and isinstance(d[k], dict) and "mean_rank" in d[k]:
                d = d[k]
        need = f"{source}: scores need layers [L], and mean_rank and mean_nuclear [L, H] arrays"
        try:
            mr = np.asarray(d["mean_rank"], dtype=float)
            nuc = np.asarray(d.get("mean_nuclear", d.get("nuclear_norm")), dtype=float)
            layers = [int(x) for x in d["layers"]]
            if "norm_rank" in d:
                nr = np.asarray(d["norm_rank"], dtype=float)
            elif "bound" in d:
                bound = np.asarray(d["bound"], dtype=float)
                if bound.shape != mr.shape[:1]:
                    raise ValueError
                nr = mr / bound[:, None]
            else:  # raw ranks would rank heads of layers with different bounds on different scales
                raise UserError(f"{source}: scores need norm_rank (or bound, the rank bound per layer) to pick "
                                "low- and high-rank heads")
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(need) from None
        if mr.ndim != 2 or nuc.shape != mr.shape or nr.shape != mr.shape or len(layers) != mr.shape[0]:
            raise UserError(f"{need}; got layers {len(layers)}, mean_rank {list(mr.shape)}, "
                            f"norm_rank {list(nr.shape)}, mean_nuclear {list(nuc.shape)}")
        return cls(layers, mr, nr, nuc, source)

    @classmethod
    def read(cls, path: str | os.PathLike) -> HeadScores:
        """From a JSON file (``--scores``); a missing, unreadable or malformed file is a one-line UserError."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--scores {path}: {'not a file' if p.exists() else 'no such file'}")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise UserError(f"--scores {path}: cannot read ({e.strerror or type(e).__name__})") from None
        except UnicodeDecodeError:
            raise UserError(f"--scores {path}: not a JSON file (not UTF-8 text)") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--scores {path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except RecursionError:
            raise UserError(f"--scores {path}: JSON nested too deeply") from None
        return cls.from_dict(d, str(path))


def measure_scores(model, tokenizer, n_texts: int = 8, max_tokens: int = 512, eps: float = 1e-4,
                   adapter=None, data_dir=None, texts: Sequence[str] | None = None) -> HeadScores:
    """Mean rank (time average of Eq. 6), normalised rank and mean nuclear norm per head, averaged
    over ``n_texts`` prose segments of ``max_tokens`` tokens (``capture`` + ``stratify.head_stats``);
    the segments are ``calibration_texts(n_texts, data_dir=data_dir)`` unless ``texts`` are given."""
    from ..capture import Schedule, capture
    from ..dynamics import merge_on_positions
    from ..models import tokenize_texts
    from ..spectra import stat_names
    from ..stratify import default_positions, head_stats

    sched = Schedule(positions=default_positions(max_tokens, stride=8))
    dev = next(model.parameters()).device
    runs = []
    if texts is None:
        texts = calibration_texts(n_texts, data_dir=data_dir)
    for ids in tokenize_texts(tokenizer, texts, max_tokens=max_tokens):
        with torch.no_grad(), capture(model, adapter, schedule=sched, eps=eps) as tr:
            model(ids.to(dev), use_cache=False)
        runs.append(tr.dynamics())
    # texts may end at different lengths: align on the union of positions, NaN where absent
    stats, pos = merge_on_positions(runs, stat_names())  # tr.dynamics(): {stat: [1, L, H, P_i]}, positions [P_i]
    dyn: dict[str, Any] = dict(stats)
    ks = [min(l.layout.k, l.layout.v) for l in (adapter or tr.adapter).linear_layers(model)]
    b = np.stack([np.minimum(pos, k) for k in ks])
    dyn.update(positions=pos, layers=runs[0]["layers"], bound=b[0] if (b == b[0]).all() else b,
               log_decay=np.stack([r["log_decay"][0] for r in runs]))
    hs = head_stats(dyn)
    return HeadScores([int(x) for x in hs.layers], hs.mean_rank, hs.norm_rank, hs.mean_nuclear,
                      f"measured: {n_texts} prose segments x {max_tokens} tokens, eps={eps}")
