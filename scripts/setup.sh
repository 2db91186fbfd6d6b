#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install fhirimg into it.
# Usage: bash scripts/setup.sh [--test]   (--test also installs the test tools)
#
# Everything comes from the hash-pinned lock files in requirements/ (regenerate them with
# scripts/lock.sh): first up-to-date pip, setuptools and wheel (a new venv's own are old), then
# the dependencies with --require-hashes, then fhirimg itself, editable, with no other download.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
lock=requirements/lock.txt
extra=""
if [ "${1:-}" = "--test" ]; then
  lock=requirements/lock-test.txt
  extra="[test]"
fi
# Re-install only when pyproject.toml or a lock file changed since the last install (fast re-runs).
stamp=.venv/.fhirimg-installed$extra
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ] \
   || [ requirements/bootstrap.txt -nt "$stamp" ]; then
  pip=(.venv/bin/python -m pip --disable-pip-version-check)
  "${pip[@]}" install --quiet --require-hashes -r requirements/bootstrap.txt
  "${pip[@]}" install --quiet --require-hashes -r "$lock"
  # (setuptools warns about every editable install of a flat layout; nothing to act on here)
  PYTHONWARNINGS=ignore::UserWarning "${pip[@]}" install --quiet --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
