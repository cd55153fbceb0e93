"""Peak memory of `staterank analyze` at T = 8192 vs T = 1024 tokens on the same model (issue #8).

Each run is a fresh subprocess of the real CLI; its peak resident set size comes from
``os.wait4`` (that child's own rusage, not the max over all children). Goal: peak(8192) /
peak(1024) <= 1.2, i.e. nothing O(T·K·V) is kept (statistics stream, the text goes through the
model's cache in --prefill-chunk segments). A T = 16 run gives the fixed cost (interpreter, torch,
model), so the part that grows with T is printed too. By default both the builtin model and a
synthetic Qwen3-Next-sized layer (H_v = 32, K = V = 128; its T = 8192 run takes a few minutes on
one core). Exit 0: goal met for all; 2: missed; 1: a run failed.

    .venv/bin/python benchmarks/memory.py                     # the builtin model and the synthetic layer
    .venv/bin/python benchmarks/memory.py --model DIR --tokens 1024 8192
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_model(path: Path) -> str:
    """A random qwen3_next with one Qwen3-Next-sized Gated DeltaNet layer (H_k = 16, H_v = 32,
    K = V = 128) and one attention layer, hidden 512, FLA-style memory gates, character tokenizer,
    saved as an HF folder."""
    from staterank.testing import char_tokenizer, tiny_model

    model = tiny_model("qwen3_next", h_k=16, h_v=32, k=128, v=128, hidden=512, vocab=97,
                       layers=("linear_attention", "full_attention"), max_positions=1 << 15)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return str(path)


def peak_rss(argv: list[str]) -> tuple[float, float, int, str]:
    """Run argv; -> (peak RSS MiB of that child, seconds, exit code, stderr tail)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, p.returncode, err[-500:]


def measure(model: str, text: Path, tokens: tuple[int, int], prefill_chunk: int, tmp: Path) -> bool | None:
    """Print the peaks of one model at T = 16 and the two given lengths; -> goal met (None: a run failed)."""
    peaks = {}
    for T in (16, *tokens):
        argv = [sys.executable, "-m", "staterank.cli", "analyze", "--model", model, "--text", str(text),
                "--max-tokens", str(T), "--threads", "1", "--device", "cpu", "--quiet",
                "--prefill-chunk", str(prefill_chunk), "--out", str(tmp / f"run_{len(list(tmp.iterdir()))}")]
        mib, sec, rc, err = peak_rss(argv)
        if rc != 0:
            print(f"  T={T}: analyze failed (exit {rc}): {err}")
            return None
        peaks[T] = mib
        print(f"  T={T:>6}: peak RSS {mib:8.1f} MiB  ({sec:.1f} s)")
    short, long_ = tokens
    ratio = peaks[long_] / peaks[short]
    print(f"  peak ratio T={long_} / T={short}: {ratio:.3f}  (goal <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); "
          f"above the T=16 run: {peaks[short] - peaks[16]:.1f} MiB at T={short}, {peaks[long_] - peaks[16]:.1f} MiB at T={long_}")
    return ratio <= 1.2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=None,
                    help="model folders, 'builtin' or 'synthetic' (default: builtin if installed, and synthetic)")
    ap.add_argument("--tokens", type=int, nargs=2, default=(1024, 8192), help="short and long T (default 1024 8192)")
    ap.add_argument("--prefill-chunk", type=int, default=256, help="passed to analyze (default 256)")
    args = ap.parse_args()

    from staterank.data import prose_files
    from staterank.models import builtin_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = args.model or (["builtin"] if (builtin_dir() / "config.json").is_file() else []) + ["synthetic"]
        kjv = next(p for p in prose_files() if p.name == "kjv.txt")
        text = tmp / "kjv_head.txt"
        text.write_text(kjv.read_text(encoding="utf-8")[: 40 * max(args.tokens)])  # >= T tokens for any tokenizer
        print(f"text: first {text.stat().st_size} bytes of {kjv.name}; prefill chunk {args.prefill_chunk}")
        met = []
        for model in models:
            runs = tmp / f"runs_{len(met)}"
            runs.mkdir()
            label = model
            if model == "synthetic":
                model = synthetic_model(tmp / "synthetic")
                label = "synthetic Qwen3-Next-sized layer (H_v = 32, K = V = 128)"
            print(f"model: {label}")
            met.append(measure(model, text, tuple(args.tokens), args.prefill_chunk, runs))
    print(f"goal met for {sum(m is True for m in met)} of {len(met)} models")
    return 1 if None in met else 0 if all(met) else 2


if __name__ == "__main__":
    sys.exit(main())
