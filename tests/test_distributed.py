"""torchrun scale-out: shards, collectives, failures, and two gloo ranks on CPU giving the same files
as one process for analyze, stratify, probe and prune (tests/distributed_driver.py runs them), with
a probe killed (SIGKILL on one rank) and resumed by a second launch."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from staterank import distributed as D
from staterank.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("distributed_driver.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
# fields that differ between any two runs: when a folder was made, how fast decoding went, where the export is
VOLATILE = {"environment.time", "decode", "tokens_per_s", "repeats", "export.path", "path"}


def test_shards_are_round_robin_uneven_and_may_be_empty():
    ranks = [D.Rank(r, 3) for r in range(3)]
    shards = [D.shard(range(7), r) for r in ranks]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == list(range(7))
    assert D.shard(["a"], ranks[2]) == []  # a rank with nothing to do


def test_gpu_groups_split_a_node_in_blocks():
    assert [D.gpu_group(r, 2, 8) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [D.gpu_group(r, 4, 8) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [D.gpu_group(r, 3, 2) for r in range(3)] == [[0], [1], [0]]  # more ranks than GPUs: shared
    assert D.gpu_group(0, 1, 0) == []


def test_one_process_is_world_size_one_and_errors_pass_through(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert D.world() == D.Rank() and D.exchange(5) == [5] and D.on_main(lambda: 7) == 7
    with pytest.raises(UserError, match="bad"):
        D.each(lambda: (_ for _ in ()).throw(UserError("bad")))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="inconsistent launcher environment"):
        D.world()


_FAILING = textwrap.dedent("""
    import os, sys, time
    from staterank import distributed as D
    from staterank.errors import UserError
    r = D.world()
    try:
        D.on_main(D.barrier)  # a collective only rank 0 reaches: refused, not a deadlock
    except Exception as e:
        print(f"rank {r.rank} nested {type(e).__name__}: {e}", flush=True)
    try:
        D.each(lambda: (_ for _ in ()).throw(UserError("no such text")) if r.rank == 1 else 1)
    except UserError as e:
        print(f"rank {r.rank} {type(e).__name__} echo={getattr(e, 'echo', True)}: {e}", flush=True)
    if r.rank == 1:
        os._exit(0)  # dies without a word: rank 0 must not wait forever
    t = time.time()
    try:
        D.barrier()
    except UserError as e:
        print(f"rank 0 after {time.time() - t:.0f}s: {e}", flush=True)
""")


def test_a_failing_rank_is_reported_once_and_a_dead_rank_cannot_hang_the_others(tmp_path):
    """Two plain processes (no torchrun, which would stop the survivor itself): a UserError on rank 1
    reaches rank 0 as RankFailed (not echoed: rank 1 reports its own); then rank 1 exits and rank 0's
    next collective fails in one line instead of hanging."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29600 + os.getpid() % 300), D.ENV_TIMEOUT: "20", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FAILING], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert "rank 0 nested RuntimeError: a collective inside distributed.on_main" in outs[0]
    assert "rank 1 nested RankFailed: rank 0 of 2 failed: RuntimeError: a collective inside" in outs[1]
    assert "rank 1 UserError echo=True: no such text" in outs[1]
    assert "rank 0 RankFailed echo=False: rank 1 of 2 failed: no such text" in outs[0]
    lost = [l for l in outs[0].splitlines() if l.startswith("rank 0 after")]
    assert len(lost) == 1 and "lost the other ranks" in lost[0], outs[0]
    assert int(lost[0].split()[3][:-2]) < 30 and "Traceback" not in outs[0]  # "rank 0 after 0s: ..."


def _json_diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) if k not in VOLATILE and f"{path}{k}" not in VOLATILE
                for d in _json_diff(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [path[:-1]]


def _differences(one: Path, two: Path) -> list[str]:
    """Files of two run trees that differ (beyond VOLATILE fields); numbers compared exactly."""
    files = lambda d: {p.relative_to(d) for p in d.rglob("*") if p.is_file() and p.name != ".lock"
                       and not p.name.startswith("calls.")}
    fa, fb = files(one), files(two)
    out = [f"only in one: {p}" for p in fa - fb] + [f"only in two: {p}" for p in fb - fa]
    for r in sorted(fa & fb):
        x, y = (one / r).read_bytes(), (two / r).read_bytes()
        if x == y:
            continue
        if r.suffix == ".npz":
            za, zb = np.load(one / r), np.load(two / r)
            out += [f"{r}:{k}" for k in za.files if not np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f")]
        elif r.suffix == ".json":
            out += [f"{r}:{k}" for k in _json_diff(json.loads(x), json.loads(y))]
        else:
            out.append(str(r))
    return out


def _torchrun(out: Path, stages: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), D.ENV_TIMEOUT: "120"}
    return subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "--master-port", str(29300 + os.getpid() % 300),
                           str(DRIVER), str(out), stages, *extra], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this Python")
def test_two_ranks_give_the_files_of_one_process_and_a_killed_probe_resumes(tmp_path):
    # launch 1: rank 1 SIGKILLs itself in the probe (torchrun then stops rank 0)
    two = tmp_path / "two"
    killed = _torchrun(two, "probe", "--kill-after", "4")
    assert killed.returncode != 0 and not (two / "probe" / "probe.json").exists(), killed.stderr[-2000:]
    logs = [two / "probe" / "items.jsonl", *sorted((two / "probe").glob("items.rank*.jsonl"))]
    on_disk = {tuple(json.loads(l)[k] for k in ("condition", "id")) for f in logs if f.exists()
               for l in f.read_text().splitlines() if l.endswith("}")}
    assert len(on_disk) >= 4  # rank 1 logged its items before it died

    # the reference: one process (one thread, as torchrun gives each rank)
    one = tmp_path / "one"
    ref = subprocess.run([sys.executable, str(DRIVER), str(one), "analyze,stratify,probe,prune"],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    # launch 2: every stage; the probe resumes and redoes nothing either rank logged
    done = _torchrun(two, "analyze,stratify,probe,prune")
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [json.loads((two / f"calls.rank{r}.json").read_text()) for r in range(2)]
    total = len(json.loads((one / "calls.rank0.json").read_text()))
    assert calls[0] and calls[1]  # both ranks worked
    assert len(calls[0]) + len(calls[1]) == total - len(on_disk)
    assert not list((two / "probe").glob("items.rank*.jsonl"))  # merged into items.jsonl

    assert _differences(one, two) == []
    # and the comparison can fail: a changed number is seen
    items = (two / "probe" / "items.jsonl").read_text().replace('"correct": true', '"correct": false', 1)
    (two / "probe" / "items.jsonl").write_text(items)
    assert _differences(one, two) == ["probe/items.jsonl"]


def test_device_choice_follows_the_ranks_gpu_group(monkeypatch):
    """--device cuda / auto under torchrun with 2 ranks on a node of 8 (simulated) GPUs: rank 1 takes
    GPUs 4-7; accelerate's map may use only those (and a half share of host RAM)."""
    import torch

    from staterank import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (80 * 2**30 + i, 80 * 2**30))
    for k, v in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert models.rank_gpus() == [4, 5, 6, 7]
    assert models.resolve_device("cuda") == torch.device("cuda", 4) == models.resolve_device(None)
    assert models.resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    kw = models.auto_device_map_kwargs()
    assert kw["device_map"] == "auto" and sorted(k for k in kw["max_memory"] if k != "cpu") == [4, 5, 6, 7]
    assert kw["max_memory"][5] == 80 * 2**30 + 5 and kw["max_memory"]["cpu"] > 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert models.rank_gpus() is None and models.auto_device_map_kwargs() == {"device_map": "auto"}
