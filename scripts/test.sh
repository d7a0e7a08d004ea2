#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, unit tests, then the real-browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-dev.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian chromium for the browser tests" >&2
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "error: the browser tests need /usr/bin/chromium (apt-get install chromium)" >&2
    exit 1
  fi
fi
.venv/bin/ruff check .
# Two workers: the browser tests run in one (one server, in order), the rest spread over both.
.venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
