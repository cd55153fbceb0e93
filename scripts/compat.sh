#!/usr/bin/env bash
# The compatibility matrix: the capture / ablation / pruning tests against the oldest transformers
# pyproject.toml allows and the newest one published today, each in its own venv (.venv-compat-LEG).
#   scripts/compat.sh [oldest] [newest] [newest-torch]     (default: oldest newest)
# oldest:       the lower bound of pyproject's transformers range, everything else from the lock
# newest:       what a fresh machine gets today: `pip install --upgrade transformers` (beyond the tested
#               upper bound too: that is the point), the locked torch, the rest resolved fresh
# newest-torch: as newest, with the newest torch pip will install here (a multi-GB CUDA build)
# Prints one line per leg: the versions it ran and pytest's summary; exits non-zero if any leg failed.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
legs=("$@"); [ ${#legs[@]} -gt 0 ] || legs=(oldest newest)
tests=(tests/test_compat.py tests/test_capture.py tests/test_ablate.py tests/test_surgery.py tests/test_models.py
       tests/test_prune_scores.py)
lock=requirements/lock.txt
torch=$(sed -n 's/^torch==//p' "$lock")
oldest=$(grep -o '"transformers>=[0-9.]*' pyproject.toml | sed 's/.*>=//')
status=0 summary=()
for leg in "${legs[@]}"; do
  venv=.venv-compat-$leg
  log=$venv.log
  echo "== compat leg '$leg' ($venv, log in $log)"
  {
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install -q)
    case $leg in
      oldest)
        grep -v '^transformers==' "$lock" > "$venv/constraints.txt"
        "${pip[@]}" -c "$venv/constraints.txt" -e '.[dev]' "transformers==$oldest" ;;
      newest)
        "${pip[@]}" "torch==$torch" && "${pip[@]}" -e '.[dev]' && "${pip[@]}" --upgrade transformers ;;
      newest-torch)
        "${pip[@]}" --upgrade torch && "${pip[@]}" -e '.[dev]' && "${pip[@]}" --upgrade transformers torch ;;
      *) echo "unknown leg $leg (oldest, newest, newest-torch)"; false ;;
    esac
  } > "$log" 2>&1
  if [ $? -ne 0 ]; then
    tail -5 "$log"; summary+=("$leg: set-up failed (see $log)"); status=1; continue
  fi
  versions=$("$venv/bin/python" -c 'import importlib.metadata as m; print(" ".join(f"{p} {m.version(p)}" for p in ("transformers", "torch", "huggingface_hub", "tokenizers")))')
  echo "   $versions"
  OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -p no:cacheprovider "${tests[@]}" > "$venv.pytest.log" 2>&1
  rc=$?
  result=$(tail -1 "$venv.pytest.log")
  echo "   $result"
  [ $rc -eq 0 ] || { grep -E '^(FAILED|ERROR)' "$venv.pytest.log" | head -20; status=1; }
  summary+=("$leg: $versions: $result")
done
echo "== compatibility matrix"
printf '%s\n' "${summary[@]}"
exit $status
