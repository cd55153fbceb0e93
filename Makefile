# Both entry points bootstrap their own virtualenv with the exact versions CI tested
# (requirements/lock.txt); nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements/lock.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.staterank-installed
BROWSER := $(VENV)/.staterank-browser
DEMO_OUT ?= runs/demo
BUILTIN_RUN ?= runs/builtin-model
TRAIN := OMP_NUM_THREADS=1 $(PY) -m staterank.builtin.train --threads 1 --tokens-per-step 4096 --max-len 256 --niah-min 8

.PHONY: demo test test-eval test-compat lint lock install bench clean builtin-model

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/staterank run --model builtin --threads 1 --out $(DEMO_OUT)

# Chromium + chromedriver for the report's browser test (Debian packages, as root); when they cannot be
# installed the reason is kept and the test skips saying it, and the next make test tries again
$(BROWSER): $(STAMP) scripts/browser.sh
	scripts/browser.sh $(VENV)/.staterank-browser-missing
	test -e $(VENV)/.staterank-browser-missing || touch $@

test: $(STAMP) $(BROWSER)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests

# the lm-eval bridge against the real lm_eval command line: installs the eval extra (lm-eval 0.4.13 and
# its datasets / pandas / pyarrow / scikit-learn: about 430 MB) and runs tests/test_lmeval.py
test-eval: $(STAMP)
	$(PY) -m pip install -q -c $(LOCK) -e '.[eval]'
	OMP_NUM_THREADS=1 $(PY) -m pytest tests/test_lmeval.py

lint: $(STAMP)
	$(VENV)/bin/ruff check staterank tests benchmarks scripts

# capture / ablation / pruning tests on the oldest supported and the newest published transformers
test-compat:
	scripts/compat.sh

# re-resolve requirements/lock.txt (then make test, make test-compat, README matrix, commit)
lock:
	scripts/lock.sh

bench: $(STAMP)
	$(PY) benchmarks/spectra.py

clean:
	rm -rf $(VENV) .venv-compat-* .venv-lock build *.egg-info

# Retrain the shipped model from scratch (about an hour on 2 CPU cores): both stages of the recipe in
# its card, then evaluation, state-rank summary and card in $(BUILTIN_RUN)/stage2/final, and the
# comparison with the shipped model's accuracies (python -m staterank.builtin.compare).
builtin-model: $(STAMP)
	@test ! -e $(BUILTIN_RUN) || { echo "$(BUILTIN_RUN) exists (runs are never overwritten); use make builtin-model BUILTIN_RUN=runs/another"; exit 1; }
	$(TRAIN) --out $(BUILTIN_RUN)/stage1 --seed 0 --steps 3000 --minutes 40 --lr 0.003 --vocab 320 \
	  --hidden 128 --intermediate 256 --early-mix niah=1.0 --early-until 0.35 --early-loss answers \
	  --mix niah=0.3,mqar=0.25,multihop=0.15,arith=0.15,prose=0.15 --loss answers+prose
	$(TRAIN) --out $(BUILTIN_RUN)/stage2 --init-from $(BUILTIN_RUN)/stage1/final --seed 1 --steps 2000 \
	  --minutes 20 --lr 0.002 --early-mix mqar=1.0 --early-until 0.35 --early-loss answers \
	  --mix niah=0.15,mqar=0.3,multihop=0.15,arith=0.3,prose=0.1 --loss balanced --evaluate 64
	$(PY) -m staterank.builtin.compare $(BUILTIN_RUN)/stage2/final
