"""The README's Python API example runs as printed (on the builtin model)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_api_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    scope = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert "[0 1 2]" in capsys.readouterr().out
    assert (scope["ablated"] != scope["logits"]).any()  # as the example's last comment says
