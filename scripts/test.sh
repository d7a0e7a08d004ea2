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
# The browser tests run in one process against one server (they share a tab per module and the
# server's cached runs, so they must not be split), started first and alongside the unit tests
# on two workers: the browser side mostly waits on pages (about 3 CPU-minutes in a 5-minute
# run), so the unit tests fill the cores it leaves. Its output is printed after the unit tests'.
# Exit code 5 (no test selected, e.g. when arguments name only unit tests) is not a failure.
browser_log="$(mktemp)"
browser_pid=""
# On an early exit (Ctrl-C, a failed step) the browser process is stopped too.
trap '[ -n "$browser_pid" ] && kill "$browser_pid" 2>/dev/null; rm -f "$browser_log"' EXIT
.venv/bin/python -m pytest -q -p no:cacheprovider -m browser "$@" >"$browser_log" 2>&1 &
browser_pid=$!
status=0
.venv/bin/python -m pytest -q -n 2 -m "not browser" "$@" || status=$?
[ "$status" = 5 ] && status=0
browser=0
wait "$browser_pid" || browser=$?
browser_pid=""
echo "--- browser tests ---"
cat "$browser_log"
[ "$browser" = 5 ] && browser=0
[ "$status" = 0 ] && status=$browser
exit "$status"
