# Both entry points bootstrap their own virtualenv; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.staterank-installed
DEMO_OUT ?= runs/demo

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/staterank run --model builtin --threads 1 --out $(DEMO_OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/spectra.py

clean:
	rm -rf $(VENV) build *.egg-info
