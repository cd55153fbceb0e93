"""Which value heads to remove: one small dataclass per scoring method (kvpress ``ScorerPress`` style).

A method implements only ``score(stats) -> [L, H]`` (higher = removed first); the base turns scores
plus a :class:`Budget` and a ranking into the removed heads (:meth:`Scorer.select`).

Methods (``METHODS``):
  jrnp     Joint Rank-Norm Pruning, Eq. 14: S_h = α·r̄_h/d + (1−α)·n̄_h / max_j n̄_j
           (α unpublished; default 0.5). max_j runs over all heads of all linear layers.
  rank     r̄_h/d (α = 1)           norm     n̄_h / max_j n̄_j (α = 0)
  random   uniform random scores from ``seed``: the count-matched control
  inverse  −JRNP: the lowest JRNP scores go first (the paper's "wrong direction" control)

Rankings:
  global     one top-k over all L·H heads (the paper's); per-layer counts come out uneven, so the
             pruned model cannot be stored as a stock checkpoint (see ``export``).
  per_layer  the top round(fraction·H) heads of every layer (a count budget must split evenly over
             the L layers): every layer keeps the same number of heads, so the result exports.
  key_groups whole GVA groups (a key head with all its G value heads), by the group's mean score:
             the top round(fraction·H_k) groups of every layer. The export keeps a regular layout
             (no key head duplicated), so every state shrinks: recurrent, conv, q/k/v projections.

Selection never removes the last value head of a layer (global ranking skips it and takes the
next head); a per-layer budget that would is an error.

``stats`` is ``stratify.HeadStats`` (``stratify.head_stats`` over the calibration dynamics): r̄_h =
``mean_rank`` (time mean of the threshold rank, then mean over contexts), n̄_h = ``mean_nuclear``,
d = ``bound`` (min(T, K, V) per layer), ``layers`` the model's layer indices.
``head_bytes`` [L]: one head's recurrent state per sequence, K·V·4 bytes (fp32), for byte budgets.

Shapes: L linear-attention layers, H value heads per layer.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from ..errors import UserError
from ..stratify import HeadStats

RANKINGS = ("global", "per_layer", "key_groups")
BUDGET_KINDS = ("fraction", "count", "bytes", "layer_counts")


@dataclass(frozen=True)
class Budget:
    """How much to remove. kind "fraction": share of all value heads in [0, 1); "count": number of
    heads; "bytes": recurrent-state bytes per sequence to free (heads are taken in score order until
    at least that much is freed); "layer_counts": exact heads per layer (``value`` a tuple, one per
    layer; ranking is then ignored — the layer-matched control)."""

    kind: str
    value: float | tuple[int, ...]

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise UserError(f"unknown budget kind {self.kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
        if self.kind == "fraction" and not 0 <= float(self.value) < 1:
            raise UserError(f"fraction must be in [0, 1), got {self.value}")
        if self.kind in ("count", "bytes") and (float(self.value) < 0 or float(self.value) != int(self.value)):
            raise UserError(f"{self.kind} budget must be a non-negative integer, got {self.value}")
        if self.kind == "layer_counts" and any(int(c) < 0 for c in self.value):
            raise UserError(f"layer counts must be non-negative, got {list(self.value)}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": list(self.value) if self.kind == "layer_counts" else self.value}


METHODS: dict[str, type[Scorer]] = {}  # name -> class: every Scorer subclass that sets a name


@dataclass(frozen=True)
class Scorer:
    """Base of all scoring methods. Subclasses implement :meth:`score` only; one that sets ``name``
    registers itself (a new method is one class in any module, found by ``get_method``)."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__ and cls.name:  # an unnamed subclass must not replace its parent
            METHODS[cls.name] = cls

    def score(self, stats: HeadStats) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:
        return asdict(self)

    def select(self, stats: HeadStats, budget: Budget, ranking: str = "global",
               head_bytes: Sequence[int] | None = None, group: int = 1) -> list[tuple[int, int]]:
        """Removed heads as (model layer index, head), highest score first. ``head_bytes`` [L] is
        needed for byte budgets only; ``group`` (value heads per key head, G) for key_groups."""
        scores = np.asarray(self.score(stats), dtype=float)
        if head_bytes is None:
            if budget.kind == "bytes":
                raise UserError("a bytes budget needs the per-head state bytes of every layer")
            head_bytes = np.zeros(len(stats.layers), dtype=np.int64)
        return select(scores, budget, ranking, [int(i) for i in stats.layers], head_bytes, group)


def _order(scores: np.ndarray) -> np.ndarray:
    """Flat indices of ``scores`` [L, H] by descending score; ties broken by (layer, head)."""
    flat = scores.ravel()
    return np.lexsort((np.arange(flat.size), -flat))


def select(scores: np.ndarray, budget: Budget, ranking: str, layers: Sequence[int],
           head_bytes: Sequence[int], group: int = 1) -> list[tuple[int, int]]:
    """Top-k of ``scores`` [L, H] under ``budget``; see the module docstring for the rules.
    ``group``: G, value heads per key head (value head j reads key head j // G), for key_groups."""
    if ranking not in RANKINGS:
        raise UserError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
    if not np.all(np.isfinite(scores)):
        raise UserError("scores contain NaN or inf (a head with no calibration statistics?)")
    L, H = scores.shape
    hb = np.asarray(head_bytes, dtype=np.int64)
    total = L * H
    # a head count known up front (per_layer checks its fraction per layer below)
    n_target = (int(budget.value) if budget.kind == "count" else
                int(round(float(budget.value) * total)) if budget.kind == "fraction" and ranking == "global" else None)
    if n_target is not None and n_target > total - L:
        share = f" ({float(budget.value):g} of them)" if budget.kind == "fraction" else ""
        raise UserError(f"cannot remove {n_target} heads{share}: the model has {total} value heads in {L} "
                        f"layers and every layer keeps at least one")
    if budget.kind == "bytes" and int(budget.value) > int(hb.sum() * (H - 1)):
        raise UserError(f"cannot free {int(budget.value)} bytes: at most {int(hb.sum() * (H - 1))} can go "
                        "while every layer keeps one head")

    if ranking == "key_groups":
        return _key_groups(scores, budget, layers, hb, int(group))
    if budget.kind == "layer_counts" or ranking == "per_layer":
        if budget.kind == "layer_counts":
            counts = [int(c) for c in budget.value]
            if len(counts) != L:
                raise UserError(f"{len(counts)} layer counts for {L} layers")
        elif budget.kind == "fraction":
            counts = [int(round(float(budget.value) * H))] * L
        elif budget.kind == "count":
            if int(budget.value) % L:
                raise UserError(f"per_layer ranking needs a count divisible by the {L} layers, got {int(budget.value)}")
            counts = [int(budget.value) // L] * L
        else:  # bytes: the smallest per-layer count that frees at least the budget
            counts = [int(math.ceil(int(budget.value) / hb.sum()))] * L
        for li, c in zip(layers, counts):
            if c >= H:
                raise UserError(f"layer {li} would lose {c} of its {H} value heads; every layer keeps at least one")
        out = []
        for l, c in enumerate(counts):
            row = _order(scores[l : l + 1])[:c]
            out += [(int(layers[l]), int(h)) for h in row]
        return out

    # global
    kept = np.full(L, H)
    out: list[tuple[int, int]] = []
    freed = 0
    for idx in _order(scores):
        done = freed >= int(budget.value) if budget.kind == "bytes" else len(out) >= n_target
        if done:
            break
        l, h = divmod(int(idx), H)
        if kept[l] == 1:  # never empty a layer
            continue
        kept[l] -= 1
        freed += int(hb[l])
        out.append((int(layers[l]), int(h)))
    return out


def _key_groups(scores: np.ndarray, budget: Budget, layers: Sequence[int], hb: np.ndarray,
                group: int) -> list[tuple[int, int]]:
    """Whole GVA groups per layer, by mean score: scores [L, H] with H = H_k · G."""
    L, H = scores.shape
    if group < 1 or H % group:
        raise UserError(f"key_groups ranking needs H_v a multiple of the group size, got H_v = {H}, G = {group}")
    n_groups = H // group
    if budget.kind == "fraction":
        counts = [int(round(float(budget.value) * n_groups))] * L
    elif budget.kind == "count":
        if int(budget.value) % (L * group):
            raise UserError(f"key_groups ranking removes whole groups of {group} value heads from each of the {L} "
                            f"layers: the count must be a multiple of {L * group}, got {int(budget.value)}")
        counts = [int(budget.value) // (L * group)] * L
    elif budget.kind == "bytes":
        counts = [int(math.ceil(int(budget.value) / (hb.sum() * group)))] * L
    else:
        if any(int(c) % group for c in budget.value) or len(budget.value) != L:
            raise UserError(f"key_groups ranking needs {L} layer counts, each a multiple of {group}")
        counts = [int(c) // group for c in budget.value]
    for li, c in zip(layers, counts):
        if c >= n_groups:
            raise UserError(f"layer {li} would lose {c} of its {n_groups} key-head groups; every layer keeps at least one")
    out = []
    for l, c in enumerate(counts):
        means = scores[l].reshape(n_groups, group).mean(-1)
        for g in _order(means[None])[:c]:
            out += [(int(layers[l]), int(g) * group + j) for j in range(group)]
    return out


@dataclass(frozen=True)
class Rank(Scorer):
    """Normalised mean threshold rank r̄_h / d (JRNP with α = 1)."""

    name: ClassVar[str] = "rank"

    def score(self, stats: HeadStats) -> np.ndarray:
        return np.asarray(stats.mean_rank, float) / np.asarray(stats.bound, float)[:, None]


@dataclass(frozen=True)
class Norm(Scorer):
    """Normalised mean nuclear norm n̄_h / max_j n̄_j (JRNP with α = 0)."""

    name: ClassVar[str] = "norm"

    def score(self, stats: HeadStats) -> np.ndarray:
        n = np.asarray(stats.mean_nuclear, float)
        m = float(np.max(n))
        if m <= 0:
            raise UserError("every head has zero nuclear norm: calibration saw no signal")
        return n / m


@dataclass(frozen=True)
class JRNP(Scorer):
    """Joint Rank-Norm Pruning (Eq. 14): α·r̄_h/d + (1−α)·n̄_h/max_j n̄_j, highest removed first."""

    name: ClassVar[str] = "jrnp"
    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {self.alpha}")

    def score(self, stats: HeadStats) -> np.ndarray:
        return self.alpha * Rank().score(stats) + (1 - self.alpha) * Norm().score(stats)


@dataclass(frozen=True)
class Inverse(JRNP):
    """−JRNP: the lowest JRNP scores are removed first (the opposite-direction control)."""

    name: ClassVar[str] = "inverse"

    def score(self, stats: HeadStats) -> np.ndarray:
        return -super().score(stats)


@dataclass(frozen=True)
class Random(Scorer):
    """Uniform random scores (seeded): with the same budget and ranking, the count-matched control."""

    name: ClassVar[str] = "random"
    seed: int = 0

    def score(self, stats: HeadStats) -> np.ndarray:
        return np.random.default_rng(self.seed).random(np.shape(stats.mean_rank))


for _c in (JRNP, Rank, Norm, Random, Inverse):  # the built-ins in their listed order, then any added
    METHODS[_c.name] = METHODS.pop(_c.name)


def get_method(name: str, **params) -> Scorer:
    """A scorer by name; params it does not take (e.g. alpha for rank) are ignored."""
    if name not in METHODS:
        hint = difflib.get_close_matches(name, METHODS, n=1)
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        raise UserError(f"unknown pruning method {name!r}{extra}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    fields = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in params.items() if k in fields and v is not None})
