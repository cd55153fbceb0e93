"""Speed-up of the builtin probe over 2 CPU processes (torchrun, gloo) against 1, in one run.

    .venv/bin/python benchmarks/distributed.py [--tasks mqar --limit 16 --seeds 2 --batch-size 4]

Each configuration runs the same probe (the builtin model, low / high / random groups, scores
calibrated on rank 0) into a fresh folder: 1 process with 1 thread, 1 process with 2 threads (what
one process gets out of 2 cores) and 2 processes with 1 thread each (``torchrun --nproc-per-node 2``).
Timed inside the worker, from after the model is loaded to the end of ``probe`` (rank 0 times the
whole world: the probe ends with a collective). The folders' probe.json must be equal, else it
fails. The machine load (1-minute load average) is printed before and after, since other
processes on the cores slow both sides differently. Last line:
``speedup=<2 processes over 1 process × 1 thread> vs_2_threads=<over 1 process × 2 threads> load=<avg>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(a) -> int:
    import torch

    torch.set_num_threads(a.threads)
    from staterank import distributed
    from staterank.models import load_model
    from staterank.probes.run import probe

    loaded = load_model("builtin", device="cpu")
    distributed.barrier()
    t = time.perf_counter()
    probe(loaded, tasks=[a.tasks], groups=["low", "high", "random"], out=a.out, seeds=a.seeds, limit=a.limit,
          batch_size=a.batch_size, calib_texts=2, calib_tokens=256)
    dt = time.perf_counter() - t
    if distributed.world().main:
        print(json.dumps({"seconds": dt}), flush=True)
    return 0


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])["seconds"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="mqar", help="one probe task (default mqar)")
    p.add_argument("--limit", type=int, default=16, help="items of the task (default 16)")
    p.add_argument("--seeds", type=int, default=2, help="random-control seeds (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="items per forward (default 4)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    me = [__file__, "--worker", "--tasks", a.tasks, "--limit", str(a.limit), "--seeds", str(a.seeds),
          "--batch-size", str(a.batch_size)]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 process x 1 thread": ([sys.executable, *me, "--threads", "1", "--out", f"{tmp}/a"], 1),
            "1 process x 2 threads": ([sys.executable, *me, "--threads", "2", "--out", f"{tmp}/b"], 2),
            "2 processes x 1 thread": ([torchrun, "--nproc-per-node", "2", *me, "--threads", "1", "--out", f"{tmp}/c"], 1),
        }
        secs = {}
        for name, (cmd, threads) in runs.items():
            secs[name] = _run(cmd, threads)
            print(f"{name}: {secs[name]:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
        res = [json.loads(Path(tmp, d, "probe.json").read_text()) for d in "ac"]
        if res[0] != res[1]:
            sys.exit("probe.json of 2 processes differs from 1 process")
    load1 = os.getloadavg()[0]
    one, two = secs["1 process x 1 thread"], secs["2 processes x 1 thread"]
    print(f"load average {load0:.2f} before, {load1:.2f} after, on {os.cpu_count()} cores; probe.json equal")
    print(f"speedup={one / two:.2f} vs_2_threads={secs['1 process x 2 threads'] / two:.2f} load={(load0 + load1) / 2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
