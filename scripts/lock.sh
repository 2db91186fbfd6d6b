#!/usr/bin/env bash
# Regenerate the hash-pinned lock files in requirements/ from pyproject.toml (pip-tools).
# Run after changing a dependency range; scripts/setup.sh installs from the lock files only, with
# --require-hashes, so every machine (yours, CI) gets the same, verified packages.
# tests/test_lock.py fails when pyproject.toml and the lock files disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/python" -m pip install --quiet "pip-tools>=7.4,<8"
compile=("$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras
         --no-emit-index-url --no-emit-find-links --no-emit-trusted-host)
"${compile[@]}" --output-file requirements/lock.txt pyproject.toml
"${compile[@]}" --extra test --output-file requirements/lock-test.txt pyproject.toml
"${compile[@]}" --output-file requirements/bootstrap.txt requirements/bootstrap.in
echo "lock.sh: wrote requirements/lock.txt, lock-test.txt and bootstrap.txt"
