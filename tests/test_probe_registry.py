"""The probe-task registry: a task registered in one place is built by make_task and listed by
TASK_NAMES / PROBE_TASKS (hence `staterank ls` and the unknown-name error); the built-in order."""

from dataclasses import dataclass

import pytest

import staterank.probes.tasks as T
from staterank.errors import UserError
from staterank.tasks import Item


@dataclass
class Echo(T.ProbeTask):
    """Toy task: item i asks for str(i); the answer is always right."""

    name: str = "echo"
    limit: int = 3
    seed: int = 0

    def items(self, tokenizer):
        return [Item(f"echo-{i}", str(i), str(i)) for i in range(self.limit)]

    def run(self, model, tokenizer, items):
        return [{"id": it.id, "correct": True} for it in items]


@pytest.fixture
def echo_registered():
    """Register the toy task the way a task module does, and remove it afterwards."""
    T.register("echo", "toy: repeat a number", chance=0.5)(
        lambda o: Echo(seed=o.seed, **({} if o.limit is None else {"limit": o.limit})))
    try:
        yield
    finally:
        T.unregister("echo")


def test_builtin_registry_order():
    assert T.TASK_NAMES == ("niah", "mqar", "multihop", "arith", "gsm8k", "ppl")
    assert list(T.PROBE_TASKS) == list(T.TASK_NAMES)
    assert T.PROBE_TASKS["ppl"] == "perplexity of held-out public-domain prose in 512-token windows"


def test_a_registered_task_is_built_and_listed(echo_registered):
    assert T.TASK_NAMES[-1] == "echo" and T.PROBE_TASKS["echo"] == "toy: repeat a number"
    assert T.REGISTRY["echo"].chance == 0.5
    t = T.make_task("echo", limit=2, seed=4)
    assert isinstance(t, Echo) and (t.limit, t.seed) == (2, 4)
    assert [r["correct"] for r in t.run(None, None, t.items(None))] == [True, True]
    assert T.make_task("echo").limit == 3  # the task's own default when no limit is given
    with pytest.raises(UserError, match=r"did you mean echo\?.*choose from niah, .*, ppl, echo"):
        T.make_task("ecko")
    with pytest.raises(ValueError, match="already registered"):
        T.register("echo", "again")(lambda o: Echo())


def test_unregister_cleans_up(echo_registered):
    T.unregister("echo")
    assert "echo" not in T.TASK_NAMES and "echo" not in T.PROBE_TASKS
    with pytest.raises(UserError, match="unknown probe task 'echo'"):
        T.make_task("echo")


def test_checks_run_before_the_lookup():
    """limit, seed and data_dir are refused the same way for every name, known or not."""
    with pytest.raises(UserError, match="--limit must be >= 1"):
        T.make_task("nope", limit=0)
    with pytest.raises(UserError, match="--seed must be a whole number"):
        T.make_task("nope", seed=-1)
