"""Reports and figures, made only from the files in run folders (never from live models).

One module per stage: ``analyze``, ``stratify``, ``probe``, ``prune``, ``claims``.
Nothing in the library imports this package; the CLI calls it after a stage has written its files.
"""
