"""Compare two run folders number by number: did a refactor change any result?

    python scripts/compare_runs.py runs/demo-before runs/demo-after [--rtol 1e-12]

Walks both folders and compares every JSON / JSON-lines file key by key (floats within --rtol, relative),
every CSV byte for byte and every NPZ array exactly. Keys that record when, where and how fast a run
happened (environment, timings, decode speeds, config hashes, the model's path) are left out. Prints one
line per difference and the files only one folder has; exits 1 if any result differs, 0 otherwise, and 2
with one line naming a JSON file that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from staterank.errors import UserError
from staterank.runio import read_json

# recorded facts about the run rather than its results
VOLATILE = {"environment", "config_hash", "source", "tokens_per_s", "tok_s", "repeats", "time", "seconds",
            "train_seconds", "wall_s", "elapsed_s"}


def diff_json(a, b, path: str, rtol: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in VOLATILE:
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'the second' if k not in a else 'the first'}")
            else:
                diff_json(a[k], b[k], f"{path}.{k}", rtol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            diff_json(x, y, f"{path}[{i}]", rtol, out)
    elif isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rtol * max(abs(a), abs(b))):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {str(a)[:100]!r} vs {str(b)[:100]!r}")


def diff_file(pa: Path, pb: Path, rtol: float) -> list[str]:
    out: list[str] = []
    if pa.suffix == ".json":
        diff_json(read_json(pa), read_json(pb), "", rtol, out)
    elif pa.suffix == ".jsonl":
        la, lb = pa.read_text().splitlines(), pb.read_text().splitlines()
        if len(la) != len(lb):
            out.append(f"{len(la)} vs {len(lb)} lines")
        for i, (x, y) in enumerate(zip(la, lb)):
            diff_json(json.loads(x), json.loads(y), f"[{i}]", rtol, out)
    elif pa.suffix == ".csv":
        if pa.read_bytes() != pb.read_bytes():
            out.append("contents differ")
    elif pa.suffix == ".npz":
        with np.load(pa) as x, np.load(pb) as y:
            for k in sorted(set(x.files) ^ set(y.files)):
                out.append(f"array {k} only in {'the first' if k in x.files else 'the second'}")
            for k in sorted(set(x.files) & set(y.files)):
                u, v = x[k], y[k]
                same = u.shape == v.shape and (np.array_equal(u, v, equal_nan=True) if u.dtype.kind in "fc"
                                               else np.array_equal(u, v))
                if not same:
                    out.append(f"array {k} differs")
    return out


def compare(a: Path, b: Path, rtol: float = 1e-12) -> tuple[list[str], list[str]]:
    """(differences, files only one folder has), each a list of printable lines."""
    kinds = (".json", ".jsonl", ".csv", ".npz")
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    only = [f"only in {a}: {p}" for p in sorted(fa - fb)] + [f"only in {b}: {p}" for p in sorted(fb - fa)]
    diffs = []
    for rel in sorted(fa & fb):
        if rel.suffix in kinds:
            diffs += [f"{rel}{d}" if d[0] in ".[" else f"{rel}: {d}" for d in diff_file(a / rel, b / rel, rtol)]
    return diffs, only


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--rtol", type=float, default=1e-12, help="relative tolerance on floats (default 1e-12)")
    a = p.parse_args(argv)
    for d in (a.first, a.second):
        if not d.is_dir():
            p.error(f"{d} is not a folder")
    try:
        diffs, only = compare(a.first, a.second, a.rtol)
    except UserError as e:  # a torn or foreign file: one line, not a traceback
        print(f"compare_runs: {e}", file=sys.stderr)
        return 2
    for line in only + diffs:
        print(line)
    print(f"{len(diffs)} differing values; {len(only)} files in one folder only")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
