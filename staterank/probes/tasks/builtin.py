"""mqar, multihop, arith: the built-in generators of ``staterank.tasks`` at their default
parameters, on evaluation seeds (``BuiltinTask``), scored by ``tasks.evaluate.evaluate``."""

from __future__ import annotations

from ...tasks import TASKS
from .base import BuiltinTask, ProbeTask, TaskOptions, register

GENERATORS = ("mqar", "multihop", "arith")


def _builder(name: str):
    def build(o: TaskOptions) -> ProbeTask:
        return BuiltinTask(name, batch_size=o.batch_size, **o.common())

    return build


for _name in GENERATORS:
    register(_name, TASKS[_name].description, chance=TASKS[_name].chance)(_builder(_name))
