"""Run folders: one folder per run, never overwritten; atomic writes so nothing half-written survives."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


def _cannot_write(path: Path, e: OSError) -> UserError:
    """A full disk, a read-only or vanished folder: one line naming the file (the old file, if
    any, is untouched: writes go to a temporary file first)."""
    return UserError(f"cannot write {path}: {e.strerror or e}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays from ``path``; a torn, foreign or pickled file is a one-line UserError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "delete it to recompute") from None


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


_HELD: dict[str, int] = {}  # run folder -> fd of its lock file, held until this process exits
LOCK = ".lock"


def _lock(out: Path) -> None:
    """One writer per run folder: an exclusive flock on ``out/.lock``, held for the life of the
    process (the kernel drops it when the process dies, so a killed run's lock is never stale)."""
    key = str(out.resolve())
    if key in _HELD:
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{out} is in use by {holder}; wait for it to finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    _HELD[key] = fd


def _leftovers(out: Path) -> list[Path]:
    """Temporary files of atomic writes that a killed process left (``.NAME.*.tmp`` / ``.npz``)."""
    return [p for p in out.rglob(".*") if p.is_file() and p.name != LOCK and p.suffix in (".tmp", ".npz")]


def new_run_dir(out: str | os.PathLike, config: dict, resume: bool = True, weights: str | None = None) -> Path:
    """Create (or resume) the run folder ``out`` for ``config``, and hold it: a second process on
    the same folder is refused at once, naming the holder.

    A folder that holds a run with a different config is never overwritten: that is an error.
    The same config resumes (finished pieces are skipped by the caller; temporary files a killed
    run left are removed). ``weights``: a fingerprint of the model's weights, kept beside the
    config: a resume with other weights (the same model id retrained, or another revision) is
    refused instead of mixing two models' results.
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
        _lock(out)
        for p in _leftovers(out):  # no other writer now: these can only be a killed run's
            p.unlink(missing_ok=True)
        return out
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} exists and is not a staterank run folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _lock(out)
    if cfg_path.exists():  # another process made it between our look and our lock: judge it as above
        return new_run_dir(out, config, resume, weights)
    body = {"config": config, "config_hash": h, "environment": environment()}
    if weights is not None:
        body["weights_fingerprint"] = weights
    write_json(cfg_path, body)
    return out
