#!/usr/bin/env bash
# Static checks on the package and the tests: ruff lint, ruff format --check, mypy --strict
# (the settings live in pyproject.toml). scripts/test.sh runs this before pytest, so CI does too.
# Every check runs even when an earlier one fails, so one run shows everything to fix; the exit
# code is 1 if any check failed. Needs the test tools: bash scripts/setup.sh --test
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
run() {
  echo "lint: $*" >&2
  "$@" || status=1
}
run .venv/bin/ruff check fhirimg tests
run .venv/bin/ruff format --check fhirimg tests
run .venv/bin/mypy fhirimg tests
[ "$status" -eq 0 ] || echo "lint: failed (see above)" >&2
exit "$status"
