"""Run folders: one folder per run, never overwritten; atomic writes so nothing half-written survives."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, default=_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """JSON from ``path``; a file that is not JSON text is a one-line UserError (a torn or foreign file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({str(e).splitlines()[0]})") from None


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("staterank", "torch", "transformers", "numpy", "scipy", "safetensors", "tokenizers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_hash(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _differing(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs (lists compared whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _differing(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [prefix[:-1]] if a != b else []


def new_run_dir(out: str | os.PathLike, config: dict, resume: bool = True, weights: str | None = None) -> Path:
    """Create (or resume) the run folder ``out`` for ``config``.

    A folder that holds a run with a different config is never overwritten: that is an error.
    The same config resumes (finished pieces are skipped by the caller). ``weights``: a fingerprint
    of the model's weights, kept beside the config: a resume with other weights (the same model
    id retrained, or another revision) is refused instead of mixing two models' results.
    """
    out = Path(out)
    cfg_path = out / "config.json"
    h = config_hash(config)
    if cfg_path.exists():
        old = read_json(cfg_path)
        if old.get("config_hash") != h:
            # name what differs, in the JSON form both were hashed in (tuples as lists, paths as str)
            now = json.loads(json.dumps(config, sort_keys=True, default=str))
            keys = _differing(old.get("config", {}), now) or ["the config's form"]
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise UserError(f"{out} already holds a run with a different config (differs in {', '.join(keys[:5])}{more}); "
                            "choose another --out")
        if weights is not None and old.get("weights_fingerprint") not in (None, weights):
            raise UserError(f"{out} was started with other weights of this model (fingerprint "
                            f"{old['weights_fingerprint']}, now {weights}); choose another --out")
        if not resume:
            raise UserError(f"{out} already holds this run; pass --resume to continue it or choose another --out")
        return out
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a staterank run folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    body = {"config": config, "config_hash": h, "environment": environment()}
    if weights is not None:
        body["weights_fingerprint"] = weights
    write_json(cfg_path, body)
    return out
