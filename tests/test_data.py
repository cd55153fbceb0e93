"""The bundled data: unpacked once into the cache, checked against its sums, overridable."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from staterank import data
from staterank.errors import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STATERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STATERANK_DATA", raising=False)
    return tmp_path / "cache"


def test_bundled_data_unpacks_with_its_licences_and_checks_every_file(cache):
    root = data.data_dir()
    assert root.parent == cache and root.name.startswith("data-")
    sums = data._bundled_sums()
    assert {"gsm8k/test.jsonl", "gsm8k/train.jsonl", "prose/kjv.txt"} <= set(sums) and len(sums) == 9
    for rel, digest in sums.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest
    assert "MIT" in (root / "gsm8k" / "LICENSE").read_text()
    assert [p.name for p in data.prose_files()] == [Path(r).name for r in sorted(sums) if r.startswith("prose/")]
    assert len(data.read_gsm8k(root / "gsm8k" / "test.jsonl")) == 1319
    assert data.data_dir() == root  # unpacked once: the second call finds it
    assert [p.name for p in cache.iterdir()] == [root.name]  # no temporary folder left behind


def test_a_damaged_bundle_is_one_line_and_leaves_no_folder(cache, tmp_path, monkeypatch):
    fake = tmp_path / "bundled"
    shutil.copytree(data.BUNDLED, fake)
    lines = (fake / "SHA256SUMS").read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    (fake / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(data, "BUNDLED", fake)
    with pytest.raises(UserError, match="does not match its checksum"):
        data.data_dir()
    assert not cache.exists() or not any(cache.iterdir())


def test_given_folders_override_the_bundle(cache, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "prose").mkdir(parents=True)
    (mine / "prose" / "a.txt").write_text("text")
    assert data.data_dir(mine) == mine.resolve()
    monkeypatch.setenv("STATERANK_DATA", str(mine))
    assert [p.name for p in data.prose_files()] == ["a.txt"]
    assert not cache.exists()  # the bundle was never needed
    monkeypatch.setenv("STATERANK_DATA", str(tmp_path / "absent"))
    with pytest.raises(UserError, match=r"^\$STATERANK_DATA .*absent: no such directory$"):
        data.data_dir()
    with pytest.raises(UserError, match=r"^--data-dir .*nope: no such directory$"):
        data.data_dir(tmp_path / "nope")


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("STATERANK_CACHE", str(blocker / "cache"))
    monkeypatch.delenv("STATERANK_DATA", raising=False)
    with pytest.raises(UserError, match="STATERANK_CACHE"):
        data.data_dir()


def test_two_processes_unpacking_at_once_both_get_the_data(cache):
    code = "from staterank.data import data_dir; print(data_dir())"
    env = {**os.environ, "STATERANK_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and [p.name for p in cache.iterdir()] == [Path(outs[0]).name]
