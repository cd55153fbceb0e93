"""niah: single-needle needle-in-a-haystack over a context-length × depth grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import UserError
from ...tasks import EVAL_SEED_BASE, TASKS, Item, niah
from .base import BuiltinTask, ProbeTask, TaskOptions, _number, _whole, register


@dataclass
class NiahTask(BuiltinTask):
    """Single-needle NIAH over a context-length × depth grid, on held-out prose from ``data_dir``.
    Lengths are measured with the model's tokenizer; lengths must be whole numbers >= 1, depths in
    [0, 1], neither repeated.

    ``limit`` is the number of items in all (as for every task), never more: each of the C =
    len(lengths) × len(depths) cells gets ``limit // C`` items and the ``limit % C`` left over go
    one each to cells spread evenly over the grid (cells in length-major order; extra item j to
    cell ``(2j + 1) C // (2 (limit % C))``). So with ``limit`` < C only ``limit`` cells are
    measured, one item each, spread over the grid (``limit=1``: the middle cell). A cell's items
    are the first ones of a longer run of the same cell, so raising ``limit`` only adds items."""

    name: str = "niah"
    lengths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    data_dir: Any = None

    def __post_init__(self):
        from ...tasks.niah import check_cell

        self.lengths, self.depths = tuple(self.lengths), tuple(self.depths)
        if not self.lengths or not self.depths:
            raise UserError("NIAH needs at least one context length and one depth")
        for L in self.lengths:
            check_cell(L, 0.0)
        for d in self.depths:
            check_cell(1, d)
        for what, xs in (("lengths", self.lengths), ("depths", self.depths)):
            if len(set(xs)) != len(xs):
                raise UserError(f"NIAH {what} repeat a value: {', '.join(f'{x:g}' for x in xs)}")
        if self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")

    def cell_counts(self) -> list[tuple[int, float, int]]:
        """(length, depth, items) for every cell, length-major; the counts sum to ``limit``."""
        cells = [(L, d) for L in self.lengths for d in self.depths]
        q, r = divmod(self.limit, len(cells))
        extra = {(2 * j + 1) * len(cells) // (2 * r) for j in range(r)}
        return [(L, d, q + (k in extra)) for k, (L, d) in enumerate(cells)]

    def items(self, tokenizer) -> list[Item]:
        items: list[Item] = []
        for L, d, n in self.cell_counts():
            if n:
                items += niah(n, EVAL_SEED_BASE + self.seed, context_tokens=L, depth=d, tokenizer=tokenizer,
                              data_dir=self.data_dir)
        return items

    def run(self, model, tokenizer, items):
        rows = super().run(model, tokenizer, items)
        for r, it in zip(rows, items):
            r["cell"] = f"{it.meta['context_tokens']}@{it.meta['depth']:g}"
        return rows


@register("niah", TASKS["niah"].description, chance=TASKS["niah"].chance)
def build(o: TaskOptions) -> ProbeTask:
    kw = o.common()
    if o.niah_lengths:
        kw["lengths"] = tuple(_whole(x) for x in o.niah_lengths)
    if o.niah_depths:
        kw["depths"] = tuple(_number(d, "NIAH depths must lie in [0, 1]") for d in o.niah_depths)
    kw.setdefault("limit", 60)
    return NiahTask(batch_size=o.batch_size, data_dir=o.data_dir, **kw)
