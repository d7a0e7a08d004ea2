#!/usr/bin/env bash
# Create .venv in the repo root (Python 3.11) and install pinned requirements.
# Idempotent: reinstalls only when the requirements files change.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-requirements.txt}"
py="$(command -v python3.11 || command -v python3)"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$want")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$want"
  # The package itself, editable: bench/ scripts and tests import it without sys.path edits.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
  touch "$stamp"
fi
