"""The benchmarks still run (tiny sizes): they are where the speed and memory targets live."""

import importlib.util
import re
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(name: str, argv: list[str], capsys) -> str:
    """Run benchmarks/<name>.py's main(argv) in-process (it sets torch's threads: restored) -> stdout."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def test_spectra_benchmark_runs_and_ends_with_its_line(capsys):
    out = _run("spectra", ["--tokens", "6", "--heads", "2", "--dim", "8", "--block", "4", "--builtin-tokens", "0"], capsys)
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup=\d+\.\d\d mismatches=0", last), last


def test_decode_benchmark_runs_and_ends_with_its_line(capsys):
    out = _run("decode", ["--batch", "2", "--prompt", "4", "--new-tokens", "2", "--repeats", "1", "--device", "cpu"], capsys)
    # round(0.389 * 8) = 3 of 8 heads from each of the builtin's 3 layers; 5 survive in key groups of at
    # most 2 (H_k = 4), so some group keeps 1: the export's ratio is 1 and 5 key heads serve 5 value heads
    assert "9 of 24 value heads; key heads 12 -> 15, value heads 24 -> 15 over 3 layers" in out
    assert re.search(r"decode_speedup=\d+\.\d\d state_saved=0\.375$", out.strip()), out
