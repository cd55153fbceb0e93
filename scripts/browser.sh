#!/usr/bin/env bash
# Headless Chromium + chromedriver for the report's browser test (tests/test_report_html.py), from
# Debian's packages. Called by `make test` once (a stamp file); when they cannot be installed (not
# root, no apt), it writes why to $1 so the test's skip says it, and exits 0: the rest of the suite runs.
set -u
reason_file=${1:?usage: scripts/browser.sh REASON_FILE}
rm -f "$reason_file"
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get on this machine: install Chromium and its chromedriver by hand" | tee "$reason_file"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "not root and no password-less sudo: apt-get install -y chromium chromium-driver as root" | tee "$reason_file"
    exit 0
  fi
fi
echo "installing chromium chromium-driver (Debian packages) for the browser test"
log=$(mktemp)
if ! { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver; } >"$log" 2>&1; then
  echo "apt-get install chromium chromium-driver failed: $(tail -n 1 "$log")" | tee "$reason_file"
fi
rm -f "$log"
exit 0
