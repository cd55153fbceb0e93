"""Running a stage over several processes (``torchrun``): who I am, which items are mine, and the
few collectives the stages need. One process (no launcher) is world size 1 and every function
here is then a no-op, so the stages call them unconditionally.

    w = world()                                   # Rank(rank, size, local_rank, local_size)
    run = on_main(lambda: runio.new_run_dir(out, config))  # rank 0 makes the folder, all get it
    mine = [i for i in range(n) if owns(i)]       # round-robin: item i belongs to rank i % size
    parts = exchange(my_results)                  # every rank's value, in rank order

The process group starts on first use when the launcher's environment says ``WORLD_SIZE > 1``
(gloo on CPU, nccl when CUDA is available; ``STATERANK_DIST_BACKEND`` overrides). Collectives
wait at most ``STATERANK_DIST_TIMEOUT`` seconds (default 1800) for the slowest rank, then fail with
one line: a rank that dies can never hang the others forever. An error raised on one rank inside
``exchange``/``on_main`` reaches every rank: the failing rank re-raises its own exception (one
line for a UserError), the others raise ``RankFailed`` whose ``echo`` is False, so the CLI prints
the error once. Ranks share the run folder, so under several nodes it must be on a shared file
system; results themselves travel through the collectives, not through files.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")
ENV_TIMEOUT = "STATERANK_DIST_TIMEOUT"
ENV_BACKEND = "STATERANK_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 1800.0
_alone = False  # rank 0 is inside on_main's function


class RankFailed(UserError):
    """Another rank failed; that rank reports it, so the CLI does not echo this one."""

    echo = False


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # index on this node (torchrun's LOCAL_RANK)
    local_size: int = 1  # processes on this node (LOCAL_WORLD_SIZE)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise UserError(f"${name} must be an integer, got {v!r}") from None


def env_rank() -> Rank:
    """The launcher's view (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); Rank() without one."""
    size = _env_int("WORLD_SIZE", 1)
    r = Rank(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1 if size == 1 else size))
    if not (size >= 1 and 0 <= r.rank < size and 0 <= r.local_rank < r.local_size):
        raise UserError(f"inconsistent launcher environment: RANK {r.rank}, WORLD_SIZE {size}, "
                        f"LOCAL_RANK {r.local_rank}, LOCAL_WORLD_SIZE {r.local_size}")
    return r


def timeout_s() -> float:
    v = os.environ.get(ENV_TIMEOUT)
    try:
        t = float(v) if v else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"${ENV_TIMEOUT} must be seconds, got {v!r}") from None
    if t <= 0:
        raise UserError(f"${ENV_TIMEOUT} must be > 0, got {v!r}")
    return t


def gpu_group(local_rank: int, local_size: int, n_gpus: int) -> list[int]:
    """The GPUs one rank holds when ``local_size`` ranks share a node's ``n_gpus``: consecutive
    blocks of n_gpus // local_size (a rank's model is device-mapped over its block with
    ``--device auto``). More ranks than GPUs: ranks share GPU local_rank % n_gpus."""
    if n_gpus < 1:
        return []
    if local_size > n_gpus:
        return [local_rank % n_gpus]
    per = n_gpus // local_size
    return list(range(local_rank * per, (local_rank + 1) * per))


def _init(r: Rank) -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = os.environ.get(ENV_BACKEND) or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":  # nccl's collectives run on the rank's first GPU
        torch.cuda.set_device(gpu_group(r.local_rank, r.local_size, torch.cuda.device_count())[0])
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"rank {r.rank}: cannot join the process group ({backend}): {_one_line(e)}") from None
    atexit.register(_shutdown)


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> Rank:
    """This process's rank; starts the process group on first use under a launcher."""
    r = env_rank()
    if r.size > 1:
        _init(r)
    return r


def owns(index: int, r: Rank | None = None) -> bool:
    """Item ``index`` (of a deterministic order) belongs to rank index % size: shards differ in
    size by at most one, and a rank may own nothing."""
    r = r or world()
    return index % r.size == r.rank


def shard(items: Iterable[T], r: Rank | None = None) -> list[T]:
    r = r or world()
    return [x for i, x in enumerate(items) if owns(i, r)]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def exchange(value: Any = None, error: BaseException | None = None) -> list:
    """Every rank's ``value`` in rank order (also a barrier). A rank passing ``error`` makes the
    exchange fail everywhere: that rank re-raises ``error``, the others raise ``RankFailed``."""
    r = world()
    if r.size == 1:
        if error is not None:
            raise error
        return [value]
    if _alone:  # the other ranks are not inside on_main's function: they would never answer
        raise RuntimeError("a collective inside distributed.on_main's function would deadlock")
    import torch.distributed as dist

    payload = ("error", f"{type(error).__name__}: {_one_line(error)}" if not isinstance(error, UserError)
               else _one_line(error)) if error is not None else ("ok", value)
    out: list = [None] * r.size
    try:
        dist.all_gather_object(out, payload)
    except Exception as e:  # gloo: a peer closed its connection, or the timeout passed
        raise UserError(f"rank {r.rank}: lost the other ranks ({_one_line(e)}); one died or took longer "
                        f"than ${ENV_TIMEOUT} = {timeout_s():g} s") from None
    if error is not None:
        raise error
    failed = [(i, p[1]) for i, p in enumerate(out) if p[0] == "error"]
    if failed:
        raise RankFailed(f"rank {failed[0][0]} of {r.size} failed: {failed[0][1]}")
    return [p[1] for p in out]


def each(fn: Callable[[], T]) -> list[T]:
    """``fn()`` on every rank; every rank's result in rank order (an error anywhere: see exchange)."""
    try:
        value = fn()
    except Exception as e:
        return exchange(None, e)
    return exchange(value)


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only (making or writing the run folder); its result, or its error,
    reaches every rank once rank 0 is done."""
    r = world()
    if r.size == 1:
        return fn()
    if not r.main:
        return each(lambda: None)[0]

    def alone():
        global _alone
        _alone = True
        try:
            return fn()
        finally:
            _alone = False

    return each(alone)[0]


def barrier() -> None:
    exchange(None)
