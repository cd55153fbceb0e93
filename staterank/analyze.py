"""The analyze stage: per-head state-rank dynamics of one model over a few texts.

    dyn = analyze(load_model("builtin"), {"fox": "The quick brown fox ..."}, out="runs/a1")
    dyn.stats["threshold_rank"]        # [N, L, H, P]

One forward per text (never padded), fed through the model's own cache in segments of
``prefill_chunk`` tokens so that activations (and heap growth, see ``_release_freed_memory``)
stay O(chunk) whatever T is; every delta-rule call is captured and verified (``capture``), and
statistics stream (nothing O(T·K·V) is kept unless ``keep_states``). Peak memory at T = 8192 was
1.03× that at T = 1024 (benchmarks/memory.py).

Texts of different lengths: P is the sorted union of the positions taken in any text; a text
shorter than a position (or not scheduled there) has NaN at that entry.

Run folder (``out``), written by ``runio.new_run_dir`` and never overwritten:
  config.json        every setting, the model, text hashes, schedule, versions, git hash, seed
  dynamics.npz       threshold_rank, entropy_rank, stable_rank, nuclear_norm, frobenius_norm,
                     spectral_norm [N, L, H, P] (float64, NaN = not measured); positions [P];
                     layers [L]; bound [P] (or [L, P] if K, V vary by layer); log_decay [N, L, H];
                     texts [N]
  heads.csv          one row per (layer, head)
  texts.csv          per text: tokens, sha256, capture verification errors
  texts/NNNN.npz     per-text partial results: a rerun of the same command skips finished texts
  states/NNNN.safetensors   (keep_states) layer_<i>: [H, P_i, K, V] fp32, positions: [P_i]

Under torchrun (``distributed``) text i is rank i % world size's: each rank writes its own
texts/NNNN.npz, rank 0 makes the folder and writes the merged files, and a resume skips the texts
any rank finished.

Shapes: N texts, L linear-attention layers, H value heads, P positions, K key dim, V value dim.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed, progress, runio, spectra
from .capture import Schedule, capture
from .dynamics import last_finite, merge_on_positions
from .errors import UserError
from .models import Loaded, cache_kwarg, output_cache, tokenize_texts, weights_fingerprint
from .options import EPS, MIB, POS, check_fields, opt


@dataclass
class AnalyzeConfig:
    """The options of ``analyze`` (each declared once: ``staterank.options``); ``kwargs()`` are its
    keyword arguments, whose defaults are these."""

    max_tokens: int | None = opt(None, POS, "truncate each text to N tokens (default: all)")
    stride: int = opt(1, POS, "measure every N-th token (default 1: all)", group="schedule")
    log_positions: bool = opt(False, None, "measure at t = 1, 2, 4, 8, ... only", group="schedule")
    eps: float = opt(1e-4, EPS, "relative threshold ε of the rank")
    keep_states: bool = opt(False, None, "also write the measured states as safetensors (states/NNNN.safetensors)")
    max_state_mb: float = opt(1024, MIB, "refuse to keep more than this many MiB of states per text")
    prefill_chunk: int = opt(256, POS, "tokens per forward through the cache; bounds activation memory")

    def validate(self, prefix: str = "") -> None:
        check_fields(self, prefix)

    def kwargs(self) -> dict:
        return dict(max_tokens=self.max_tokens, schedule=Schedule(stride=self.stride, log=self.log_positions),
                    eps=self.eps, keep_states=self.keep_states, max_state_bytes=int(self.max_state_mb * 2**20),
                    prefill_chunk=self.prefill_chunk)


DEFAULT_MAX_STATE_BYTES = int(AnalyzeConfig.max_state_mb * 2**20)


@dataclass
class TextInfo:
    name: str
    n_tokens: int
    sha256: str
    n_positions: int  # positions measured in this text
    max_output_err: float  # capture verification: replayed vs model rule outputs (max abs)
    max_state_err: float  # replayed vs model final states (max abs)
    rule_calls: int


@dataclass
class Dynamics:
    """Statistics of one analyze run. stats: {name: [N, L, H, P]} float64, NaN where a text has
    no measurement at that position."""

    stats: dict[str, np.ndarray]
    positions: np.ndarray  # [P] 1-based token counts
    layers: np.ndarray  # [L] model layer indices
    bound: np.ndarray  # [P] or [L, P]: min(t, K, V)
    log_decay: np.ndarray  # [N, L, H] mean per-token log decay
    texts: list[TextInfo]
    run_dir: Path | None = None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.texts]

    def arrays(self) -> dict[str, np.ndarray]:
        """Exactly the arrays of dynamics.npz."""
        return {**self.stats, "positions": self.positions, "layers": self.layers, "bound": self.bound,
                "log_decay": self.log_decay, "texts": np.array(self.names, dtype=np.str_)}

    def layer_bound(self) -> np.ndarray:
        """[L, P] bound, whatever was stored."""
        b = self.bound
        return np.broadcast_to(b, (len(self.layers), len(self.positions))) if b.ndim == 1 else b


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _named(texts: dict[str, str] | list[str]) -> tuple[list[str], list[str]]:
    if isinstance(texts, dict):
        names, bodies = [str(k) for k in texts], list(texts.values())
    else:
        bodies = list(texts)
        names = [f"text{i}" for i in range(len(bodies))]
    if not bodies:
        raise UserError("no texts to analyze")
    if len(set(names)) != len(names):
        raise UserError("text names must be unique")
    for n, b in zip(names, bodies):
        if not isinstance(b, str) or not b.strip():
            raise UserError(f"text {n!r} is empty")
    return names, bodies


def _libc_trim():
    """glibc's malloc_trim, or None off glibc."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _libc_trim()


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS. The replay allocates a fresh state per token; glibc's
    heap fragments around the small long-lived statistics, so without this the resident size grew
    by ~one state per token (4.4 GiB at T = 8192 for H = 8, K = V = 64, 3 layers) although nothing
    was alive (benchmarks/memory.py). Trimming after every segment bounds it by the segment."""
    if _TRIM is not None:
        _TRIM(0)


def _one_text(loaded: Loaded, ids: torch.Tensor, *, schedule: Schedule, eps: float, keep_states: bool,
              max_state_bytes: int, prefill_chunk: int, bar) -> tuple[dict[str, np.ndarray], dict, dict]:
    """One text [1, T] -> (arrays {stat: [L, H, P_i], positions [P_i], log_decay [L, H]},
    verification {max_output_err, max_state_err, rule_calls}, kept states {layer_i: [H, P_i, K, V]})."""
    model = loaded.model
    ids = ids.to(loaded.device)
    T = ids.shape[1]
    cache_kw = cache_kwarg(model)
    with torch.no_grad(), capture(model, loaded.adapter, eps=eps, schedule=schedule, keep_states=keep_states,
                                  max_state_bytes=max_state_bytes) as trace:
        cache = None
        for s in range(0, T, prefill_chunk):
            # logits of the last token only: the full [T, vocab] logits would dominate memory
            out = model(ids[:, s : s + prefill_chunk], **{cache_kw: cache}, use_cache=True, logits_to_keep=1)
            cache = output_cache(out)
            _release_freed_memory()
            bar.update(min(prefill_chunk, T - s))
        del cache, out
    if len(trace.positions()) == 0:
        raise UserError(f"no scheduled positions within the text's {T} tokens; check --stride/--positions")
    d = trace.dynamics()
    arrays = {n: d[n][0].astype(np.float64) for n in spectra.stat_names()}
    arrays["positions"] = d["positions"].astype(np.int64)
    arrays["log_decay"] = d["log_decay"][0]
    check = {"max_output_err": trace.max_output_err, "max_state_err": trace.max_state_err, "rule_calls": trace.calls}
    states = {}
    if keep_states:
        states = {f"layer_{i}": trace.states(i)[0].contiguous() for i in trace.layer_indices}
        states["positions"] = torch.from_numpy(arrays["positions"])
    return arrays, check, states


def _merge(parts: list[dict[str, np.ndarray]], layouts: list[tuple[int, int]]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per-text arrays -> ({stat: [N, L, H, P]} on the union of positions, positions [P], bound)."""
    names = spectra.stat_names()
    one_text = [{"positions": p["positions"], **{n: p[n][None] for n in names}} for p in parts]
    stats, pos = merge_on_positions(one_text, names)
    bounds = np.stack([spectra.rank_bound(pos, k, v) for k, v in layouts]).astype(np.int64)
    bound = bounds[0] if (bounds == bounds[0]).all() else bounds
    return stats, pos, bound


def head_table(dyn: Dynamics) -> list[dict]:
    """One row per (layer, head). Means are over texts and measured positions (NaN ignored);
    final = each text's last measured position, averaged over texts; bound = min(t_max, K, V)
    at the last position."""
    r, nuc = dyn.stats["threshold_rank"], dyn.stats["nuclear_norm"]
    mean_r = np.nanmean(r, axis=(0, 3))
    fin_r = last_finite(r).mean(axis=0)  # a rank is a count: finite wherever it was measured
    mean_n = np.nanmean(nuc, axis=(0, 3))
    decay = dyn.log_decay.mean(axis=0)
    bound = dyn.layer_bound()[:, -1]
    rows = []
    for li, layer in enumerate(dyn.layers):
        for h in range(r.shape[2]):
            rows.append({"layer": int(layer), "head": h, "mean_threshold_rank": float(mean_r[li, h]),
                         "final_threshold_rank": float(fin_r[li, h]), "mean_nuclear_norm": float(mean_n[li, h]),
                         "bound": int(bound[li]), "mean_log_decay": float(decay[li, h])})
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _write_states(path: Path, states: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    runio.atomic_write_bytes(path, save({k: v.cpu() for k, v in states.items()}))


def analyze(
    loaded: Loaded,
    texts: dict[str, str] | list[str],
    *,
    max_tokens: int | None = None,
    schedule: Schedule = Schedule(),
    eps: float = AnalyzeConfig.eps,
    keep_states: bool = False,
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
    prefill_chunk: int = AnalyzeConfig.prefill_chunk,
    seed: int = 0,
    out: str | Path | None = None,
) -> Dynamics:
    """Rank dynamics of every linear-attention value head over ``texts`` (list: named text0, ...).

    max_tokens truncates each text; prefill_chunk is the segment fed per forward (states are the
    same as one prefill, up to fp32 round-off); max_state_bytes caps kept states per text.
    With ``out``, writes (or resumes) one run folder; a finished folder is read back, not redone.
    Progress bars (texts, tokens) go through ``staterank.progress``.
    """

    if eps <= 0:
        raise UserError(f"--eps must be > 0, got {eps}")
    if prefill_chunk < 1:
        raise UserError(f"prefill chunk must be >= 1, got {prefill_chunk}")
    names, bodies = _named(texts)
    ids = tokenize_texts(loaded.tokenizer, bodies, max_tokens)
    torch.manual_seed(seed)
    config = {
        "stage": "analyze",
        "model": {"spec": loaded.spec, "source": loaded.source, **loaded.config},
        "texts": [{"name": n, "sha256": _sha(b), "chars": len(b)} for n, b in zip(names, bodies)],
        "max_tokens": max_tokens, "schedule": schedule.to_dict(), "eps": eps, "keep_states": keep_states,
        "max_state_bytes": max_state_bytes, "prefill_chunk": prefill_chunk, "seed": seed,
        # registered statistics: a resume with another set would mix texts measured differently
        **({"extra_stats": list(spectra.EXTRA_STATS)} if spectra.EXTRA_STATS else {}),
    }
    run_dir = None
    if out is not None:  # rank 0 makes (or resumes) the folder; under torchrun every rank writes its texts there

        def make():
            d = runio.new_run_dir(out, config, weights=weights_fingerprint(loaded.model))
            return d, (d / "dynamics.npz").exists()

        run_dir, finished = distributed.on_main(make)
        if finished:
            return load_dynamics(run_dir)

    layers = loaded.adapter.linear_layers(loaded.model)
    layouts = [(l.layout.k, l.layout.v) for l in layers]
    rank = distributed.world()

    def my_texts() -> dict[int, tuple[dict, dict]]:
        """{text index: (arrays, check)} of this rank's texts (all of them in one process)."""
        done = {}
        mine = [(i, names[i], ids[i]) for i in range(len(names)) if distributed.owns(i, rank)]
        for i, name, x in progress.bar(mine, desc="texts", unit="text"):
            part_path = run_dir / "texts" / f"{i:04d}.npz" if run_dir else None
            if part_path is not None and part_path.exists():  # finished earlier, by any rank
                arrays = runio.read_npz(part_path)
                check = {k: arrays.pop(k).item() for k in ("max_output_err", "max_state_err", "rule_calls")}
            else:
                with progress.bar(total=x.shape[1], desc=name, unit="tok", leave=False) as bar:
                    arrays, check, states = _one_text(loaded, x, schedule=schedule, eps=eps, keep_states=keep_states,
                                                      max_state_bytes=max_state_bytes, prefill_chunk=prefill_chunk,
                                                      bar=bar)
                if run_dir is not None:
                    if keep_states:  # states first: a partial file means this text is complete
                        _write_states(run_dir / "states" / f"{i:04d}.safetensors", states)
                    runio.write_npz(part_path, **arrays, **{k: np.asarray(v) for k, v in check.items()})
                del states
            done[i] = (arrays, check)
        return done

    merged = {i: v for part in distributed.each(my_texts) for i, v in part.items()}
    parts, infos = [], []
    for i, (name, x) in enumerate(zip(names, ids)):
        arrays, check = merged[i]
        parts.append(arrays)
        infos.append(TextInfo(name=name, n_tokens=int(x.shape[1]), sha256=_sha(bodies[i]),
                              n_positions=len(arrays["positions"]), max_output_err=float(check["max_output_err"]),
                              max_state_err=float(check["max_state_err"]), rule_calls=int(check["rule_calls"])))
    stats, pos, bound = _merge(parts, layouts)
    dyn = Dynamics(stats=stats, positions=pos, layers=np.array([l.index for l in layers], dtype=np.int64),
                   bound=bound, log_decay=np.stack([p["log_decay"] for p in parts]), texts=infos, run_dir=run_dir)
    if run_dir is not None:

        def write():
            runio.atomic_write_text(run_dir / "heads.csv", _csv(head_table(dyn)))
            runio.atomic_write_text(run_dir / "texts.csv", _csv([asdict(t) for t in infos]))
            runio.write_npz(run_dir / "dynamics.npz", **dyn.arrays())  # last: its presence marks the run done

        distributed.on_main(write)
    return dyn


def load_dynamics(run_dir: str | Path) -> Dynamics:
    """Read an analyze run folder back (dynamics.npz + texts.csv)."""
    run_dir = Path(run_dir)
    path = run_dir / "dynamics.npz"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished analyze run (no dynamics.npz)")
    z = runio.read_npz(path)
    with open(run_dir / "texts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {f.name: f.type for f in TextInfo.__dataclass_fields__.values()}
    conv = {"int": int, "float": float, "str": str}
    infos = [TextInfo(**{k: conv[kinds[k]](v) for k, v in r.items()}) for r in rows]
    return Dynamics(stats={n: z[n] for n in spectra.stat_names() if n in z}, positions=z["positions"], layers=z["layers"],
                    bound=z["bound"], log_decay=z["log_decay"], texts=infos, run_dir=run_dir)
