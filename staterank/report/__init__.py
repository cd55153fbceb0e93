"""Reports and figures, made only from the files in run folders (never from live models).

One module per stage: ``analyze``, ``stratify``, ``probe``, ``prune``, ``claims``.
Nothing in the library imports this package; the CLI calls it after a stage has written its files.
"""


def fmt_p(p) -> str:
    """A p-value as a reader wants it: '0.000' would claim certainty a finite test never has."""
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
