# Both entry points bootstrap their own virtualenv; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.staterank-installed
DEMO_OUT ?= runs/demo
BUILTIN_OUT ?= runs/builtin-retrain

.PHONY: demo test install bench builtin-model clean

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

# Retrain the built-in model from scratch with the shipped recipe (~50 min on one core), then
# evaluate it and write its card: $(BUILTIN_OUT)/final is a complete HF folder.
builtin-model: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m staterank.builtin.train --out $(BUILTIN_OUT) --evaluate 64

bench: $(STAMP)
	$(PY) benchmarks/spectra.py

clean:
	rm -rf $(VENV) build *.egg-info
