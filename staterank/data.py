"""Where local data lives.

Resolution order: an explicit folder (``--data-dir``), ``$STATERANK_DATA``, else the data bundled in
the package (``staterank/bundled``: public-domain prose, GSM8K under MIT, xz-compressed), unpacked
once into a cache folder named from its checksums and checked against them. Every consumer reads
plain files from the returned folder, so a user's own folder of the same layout works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

BUNDLED = Path(__file__).resolve().parent / "bundled"


def _cache_root() -> Path:
    return Path(os.environ.get("STATERANK_CACHE") or Path.home() / ".cache" / "staterank")


def _bundled_sums() -> dict[str, str]:
    """relative path -> sha256 of the uncompressed file, from ``bundled/SHA256SUMS``."""
    sums = {}
    for line in (BUNDLED / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        sums[rel] = digest
    return sums


def bundled_data() -> Path:
    """The bundled data as plain files: unpacked (and checked) into the cache on first use.

    Unpacking goes to a temporary sibling that is renamed into place, so a killed process or two
    processes at once never leave a half-filled folder behind."""
    sums = _bundled_sums()
    key = hashlib.sha256("".join(f"{d} {r}\n" for r, d in sorted(sums.items())).encode()).hexdigest()[:16]
    root = _cache_root()
    dest = root / f"data-{key}"
    if dest.is_dir():
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".data-{key}-", dir=root))
    except OSError as e:
        raise UserError(f"cannot unpack the bundled data into {root} ({e.strerror}); "
                        "set STATERANK_CACHE to a writable folder or pass --data-dir") from None
    try:
        for rel, digest in sums.items():
            raw = lzma.decompress((BUNDLED / f"{rel}.xz").read_bytes())
            if hashlib.sha256(raw).hexdigest() != digest:
                raise UserError(f"bundled data {rel} does not match its checksum: the installation is damaged")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(raw)
        for lic in BUNDLED.rglob("LICENSE"):
            shutil.copyfile(lic, tmp / lic.relative_to(BUNDLED))
        shutil.copyfile(BUNDLED / "README.md", tmp / "README.md")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process got there first: its copy is as good as ours
            if not dest.is_dir():
                raise
    except OSError as e:
        raise UserError(f"cannot unpack the bundled data into {root} ({e.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_given(path: str | os.PathLike | None) -> None:
    """One-line UserError when a data folder was given (``--data-dir``) and does not exist; None
    is fine (the resolution order applies)."""
    if path is not None and not os.path.isdir(path):
        raise UserError(f"--data-dir {path}: no such directory")


def data_dir(path: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """The data directory: ``path``, else ``$STATERANK_DATA``, else the bundled data. A given
    folder that does not exist is a one-line UserError when ``required``, None otherwise."""
    given = path or os.environ.get("STATERANK_DATA")
    if not given:
        return bundled_data()
    if Path(given).is_dir():
        return Path(given).resolve()
    if required:
        what = "--data-dir" if path else "$STATERANK_DATA"
        raise UserError(f"{what} {given}: no such directory")
    return None


def prose_files(path: str | os.PathLike | None = None) -> list[Path]:
    """Public-domain prose files (Austen novels, KJV), sorted for determinism."""
    root = data_dir(path) / "prose"
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise UserError(f"no prose .txt files under {root}")
    return files


def read_user_text(path: str | os.PathLike, what: str, allow_empty: bool = False) -> str:
    """The text of a file the user gave (``what`` names it in messages, e.g. "--text book.txt"):
    a missing file, a directory, bytes that are not UTF-8, a binary file (NUL bytes) or an empty
    one are each one line, never garbage decoded with replacement characters."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}: {'a directory; give the text files in it' if p.is_dir() else 'no such file'}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{what}: cannot read ({e.strerror or e})") from None
    if "\x00" in text:
        raise UserError(f"{what}: a binary file (it holds NUL bytes), not text")
    if not allow_empty and not text.strip():
        raise UserError(f"{what}: is empty")
    return text


def read_gsm8k(path: str | os.PathLike) -> list[dict]:
    """GSM8K records {question, answer, ...} of a JSON-lines file; a file that is not UTF-8, a line
    that is not a JSON object, or a record without question and answer: one line naming the file
    and line, not a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise UserError(f"{path}:{i}: a GSM8K record needs string fields question and answer")
        rows.append(row)
    return rows
