"""Peak memory of `staterank analyze` at T = 8192 vs T = 1024 tokens on the same model (issue #8).

Each run is a fresh subprocess of the real CLI; its peak resident set size comes from
``os.wait4`` (that child's own rusage, not the max over all children). Goal: peak(8192) /
peak(1024) <= 1.2, i.e. nothing O(T·K·V) is kept (statistics stream, the text goes through the
model's cache in --prefill-chunk segments). A T = 16 run gives the fixed cost (interpreter, torch,
model), so the part that grows with T is printed too.

    .venv/bin/python benchmarks/memory.py                     # builtin model if installed, else synthetic
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
    """A random qwen3_next hybrid (3 Gated DeltaNet layers + 1 attention layer, H_v = 8, K = V = 64,
    hidden 256) with a character tokenizer, saved as an HF folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from staterank.testing import tiny_model

    model = tiny_model("qwen3_next", h_k=2, h_v=8, k=64, v=64, hidden=256, vocab=97)
    model.save_pretrained(path)
    vocab = {"<pad>": 0, "<unk>": 1, **{chr(c): c - 30 for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or 'builtin' (default: builtin if installed, else synthetic)")
    ap.add_argument("--tokens", type=int, nargs=2, default=(1024, 8192), help="short and long T (default 1024 8192)")
    ap.add_argument("--prefill-chunk", type=int, default=256, help="passed to analyze (default 256)")
    args = ap.parse_args()

    from staterank.data import prose_files
    from staterank.models import builtin_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = "builtin" if (builtin_dir() / "config.json").is_file() else synthetic_model(tmp / "synthetic")
        kjv = next(p for p in prose_files() if p.name == "kjv.txt")
        text = tmp / "kjv_head.txt"
        text.write_text(kjv.read_text(encoding="utf-8")[: 40 * max(args.tokens)])  # >= T tokens for any tokenizer
        print(f"model: {model}; text: first {text.stat().st_size} bytes of {kjv.name}; prefill chunk {args.prefill_chunk}")
        peaks = {}
        for T in (16, *args.tokens):
            argv = [sys.executable, "-m", "staterank.cli", "analyze", "--model", model, "--text", str(text),
                    "--max-tokens", str(T), "--threads", "1", "--device", "cpu", "--quiet",
                    "--prefill-chunk", str(args.prefill_chunk), "--out", str(tmp / f"run_{T}")]
            mib, sec, rc, err = peak_rss(argv)
            if rc != 0:
                print(f"T={T}: analyze failed (exit {rc}): {err}")
                return 1
            peaks[T] = mib
            print(f"T={T:>6}: peak RSS {mib:8.1f} MiB  ({sec:.1f} s)")
    short, long_ = args.tokens
    ratio = peaks[long_] / peaks[short]
    grow_s, grow_l = peaks[short] - peaks[16], peaks[long_] - peaks[16]
    print(f"peak ratio T={long_} / T={short}: {ratio:.3f}  (goal <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'})")
    print(f"above the T=16 run: {grow_s:.1f} MiB at T={short}, {grow_l:.1f} MiB at T={long_}")
    return 0 if ratio <= 1.2 else 2


if __name__ == "__main__":
    sys.exit(main())
