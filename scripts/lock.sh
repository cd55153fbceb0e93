#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve the newest versions pyproject.toml allows in a fresh venv,
# with the torch build given (default: the locked one), and freeze them. Then run `make test` and
# `make test-compat`, update the README's matrix, and commit the lock with them.
#   scripts/lock.sh [TORCH_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch=${1:-$(sed -n 's/^torch==//p' requirements/lock.txt 2>/dev/null || true)}
torch=${torch:-2.13.0}
venv=.venv-lock
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==$torch"
"$venv/bin/pip" install -q -e '.[dev]'
{
  echo "# Exact versions that 'make demo', 'make test' and 'make builtin-model' install (pip constraints),"
  echo "# as CI tested them with $("$venv/bin/python" --version). Refresh: scripts/lock.sh (see its header)."
  # local build tags (2.13.0+cpu) are left out: the constraint must match the same release on any machine
  "$venv/bin/pip" freeze --all --exclude-editable | grep -v '^#' | sed 's/+[a-z0-9.]*$//' | sort -f
} > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
rm -rf "$venv"
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins)"
