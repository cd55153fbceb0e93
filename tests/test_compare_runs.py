"""scripts/compare_runs.py: the tool that shows a refactor left a run's numbers unchanged."""

import importlib.util
import json
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("compare_runs", Path(__file__).parents[1] / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_runs)


def _folder(root: Path, acc: float, wall: float, rank: int, extra: bool = False) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    res = {"accuracy": {"niah": acc}, "wall_s": wall, "environment": {"host": str(root)}}
    if extra:
        res["new_field"] = 1
    (root / "sub" / "res.json").write_text(json.dumps(res))
    (root / "heads.csv").write_text(f"layer,head,rank\n0,0,{rank}\n")
    np.savez(root / "d.npz", r=np.array([1.0, float(rank)]))
    return root


def test_equal_runs_and_volatile_keys(tmp_path):
    a = _folder(tmp_path / "a", 0.5, 1.0, 3)
    b = _folder(tmp_path / "b", 0.5 * (1 + 1e-15), 9.0, 3)  # an ulp apart; another wall time, another host
    assert compare_runs.compare(a, b) == ([], [])
    assert compare_runs.main([str(a), str(b)]) == 0


def test_every_kind_of_difference(tmp_path, capsys):
    a = _folder(tmp_path / "a", 0.5, 1.0, 3)
    b = _folder(tmp_path / "b", 0.51, 1.0, 4, extra=True)
    (b / "report.html").write_text("x")
    diffs, only = compare_runs.compare(a, b)
    assert any("sub/res.json.accuracy.niah: 0.5 vs 0.51" in d for d in diffs)
    assert any("new_field: only in the second" in d for d in diffs)
    assert "heads.csv: contents differ" in diffs and "d.npz: array r differs" in diffs
    assert only == [f"only in {b}: report.html"]
    assert compare_runs.main([str(a), str(b)]) == 1
    assert "differing values" in capsys.readouterr().out


def test_torn_json_is_one_line(tmp_path, capsys):
    a = _folder(tmp_path / "a", 0.5, 1.0, 3)
    b = _folder(tmp_path / "b", 0.5, 1.0, 3)
    (b / "sub" / "res.json").write_text('{"accuracy": ')
    assert compare_runs.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "res.json: not a JSON file" in err[0]
