"""Run folders and their files: atomic writes, the config hash, when a folder is refused, read errors."""

import errno
import json
import os

import numpy as np
import pytest

from staterank import runio
from staterank.errors import UserError
from staterank.runio import config_hash, new_run_dir, read_json, write_json

CFG = {"model": "builtin", "fraction": 0.25, "tasks": ["mqar"], "nested": {"b": 1, "a": None}}


def test_atomic_write_keeps_the_old_file_and_no_temp_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "r" / "result.json"
    write_json(path, {"old": 1})
    assert read_json(path) == {"old": 1}

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runio.os, "fsync", boom)
    # one line naming the file (issue #22: a full disk did not say which file)
    with pytest.raises(UserError, match=r"^cannot write .*result\.json: No space left on device$"):
        write_json(path, {"new": 2})
    assert read_json(path) == {"old": 1}  # the reader never sees a half-written file
    assert sorted(os.listdir(path.parent)) == ["result.json"]  # and no temp file is left behind
    monkeypatch.undo()
    runio.atomic_write_text(path, "{\"new\": 2}")
    assert read_json(path) == {"new": 2} and sorted(os.listdir(path.parent)) == ["result.json"]


def test_write_json_writes_nan_as_null_and_numpy_as_numbers(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.5, float("inf")], "n": np.int64(3),
                                     "f": np.float32(0.5), "g": np.float64("nan"), "arr": np.arange(3), 4: "k"})
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "y": [1.5, None], "n": 3, "f": 0.5, "g": None, "arr": [0, 1, 2], "4": "k"}


def test_config_hash_is_stable_and_ignores_key_order():
    # pinned: run folders written by earlier versions must still resume
    assert config_hash(CFG) == "8170ea34ca"
    reordered = {"tasks": ["mqar"], "nested": {"a": None, "b": 1}, "fraction": 0.25, "model": "builtin"}
    assert config_hash(reordered) == config_hash(CFG)
    assert config_hash({**CFG, "fraction": 0.5}) != config_hash(CFG)
    assert config_hash({**CFG, "tasks": ["gsm8k"]}) != config_hash(CFG)
    assert config_hash({**CFG, "tasks": ["mqar", "x"]}) != config_hash({**CFG, "tasks": ["x", "mqar"]})  # lists keep order


def test_new_run_dir_creates_resumes_and_refuses(tmp_path):
    out = tmp_path / "run"
    assert new_run_dir(out, CFG) == out
    body = read_json(out / "config.json")
    assert body["config"] == CFG and body["config_hash"] == config_hash(CFG) and "weights_fingerprint" not in body
    (out / "partial.json").write_text("{}")
    assert new_run_dir(out, dict(reversed(list(CFG.items())))) == out  # the same config resumes
    with pytest.raises(UserError, match=r"different config \(differs in fraction\)"):
        new_run_dir(out, {**CFG, "fraction": 0.5})
    with pytest.raises(UserError, match=r"differs in nested\.b, zz\)"):  # nested keys dotted; added keys too
        new_run_dir(out, {**CFG, "nested": {"b": 2, "a": None}, "zz": 1})
    with pytest.raises(UserError, match="--resume"):
        new_run_dir(out, CFG, resume=False)
    assert read_json(out / "config.json") == body  # nothing was overwritten


def test_new_run_dir_refuses_a_folder_that_is_not_a_run(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a staterank run folder"):
        new_run_dir(foreign, CFG)
    assert os.listdir(foreign) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new_run_dir(empty, CFG) == empty and (empty / "config.json").exists()


def test_new_run_dir_refuses_other_weights(tmp_path):
    out = tmp_path / "run"
    new_run_dir(out, CFG, weights="aaaa")
    assert read_json(out / "config.json")["weights_fingerprint"] == "aaaa"
    assert new_run_dir(out, CFG, weights="aaaa") == out
    assert new_run_dir(out, CFG) == out  # no fingerprint given: nothing to compare
    with pytest.raises(UserError, match="other weights") as e:
        new_run_dir(out, CFG, weights="bbbb")
    assert "aaaa" in str(e.value) and "bbbb" in str(e.value) and "\n" not in str(e.value)
    old = tmp_path / "old"  # a folder from before fingerprints were kept resumes
    new_run_dir(old, CFG)
    assert new_run_dir(old, CFG, weights="bbbb") == old


@pytest.mark.parametrize("content", [b"{\"a\": 1", b"", b"\xff\xfe\x00garbage", b"PK\x03\x04\x80\x81"])
def test_read_json_of_a_torn_or_foreign_file_is_one_line_user_error(tmp_path, content):
    p = tmp_path / "x.json"
    p.write_bytes(content)
    with pytest.raises(UserError, match="not a JSON file") as e:
        read_json(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_torn_config_json_refuses_the_run_folder_in_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{\"config\": ")
    with pytest.raises(UserError, match="not a JSON file"):
        new_run_dir(out, CFG)


_HOLD = """
import sys, time
from staterank import runio
runio.new_run_dir(sys.argv[1], {"a": 1})
print("held", flush=True)
time.sleep(120)
"""


def test_one_writer_per_folder_across_processes_and_a_killed_holder_is_taken_over(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"is in use by pid {holder.pid} on \S+; wait") as e:
            new_run_dir(out, {"a": 1})
        assert "\n" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    assert new_run_dir(out, {"a": 1}) == out  # the kernel dropped the killed process's lock
    assert new_run_dir(out, {"a": 1}) == out  # this process holds it now: resuming in-process is fine


def test_resume_removes_what_a_killed_atomic_write_left(tmp_path):
    out = new_run_dir(tmp_path / "run", {"a": 1})
    (out / "sub").mkdir()
    left = [out / ".results.json.abc123.tmp", out / "sub" / ".dynamics.npz.x1y2.npz"]
    for p in left:
        p.write_bytes(b"half")
    (out / "keep.npz").write_bytes(b"a result")
    new_run_dir(out, {"a": 1})
    assert not any(p.exists() for p in left) and (out / "keep.npz").exists() and (out / "config.json").exists()


def test_a_folder_holding_only_a_lock_is_not_a_foreign_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 1 on gone")  # a run killed before it wrote its config
    assert new_run_dir(out, {"a": 1}) == out and (out / "config.json").exists()



def test_a_torn_or_foreign_npz_is_one_line_naming_it(tmp_path):
    from staterank import runio
    from staterank.errors import UserError

    good = tmp_path / "a.npz"
    runio.write_npz(good, x=np.arange(3))
    for name, data in (("torn.npz", good.read_bytes()[:100]), ("text.npz", b"garbage")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=name) as e:
            runio.read_npz(tmp_path / name)
        assert "\n" not in str(e.value)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="obj.npy"):
        runio.read_npz(tmp_path / "obj.npy")
