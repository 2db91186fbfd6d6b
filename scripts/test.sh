#!/usr/bin/env bash
# Quick start, second command: set up everything the tests need and run the whole suite.
# Installs the Python environment, the FHIR test server (npm, tools/fhir-test-server) and Orthanc
# with its DICOMweb plugin and dcmtk (Debian packages, needs root), runs the static checks (scripts/lint.sh),
# then runs pytest inside a private network namespace so that every test server listens on a
# loopback nobody else can reach.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k convert -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if [ -f tools/fhir-test-server/install.sh ]; then
  bash tools/fhir-test-server/install.sh
fi
if [ -f tools/orthanc/install.sh ]; then
  sh tools/orthanc/install.sh
fi
# dcmtk (storescu, findscu, echoscu): the independent DIMSE peer of the listen / --from-pacs tests.
if [ -f tools/dcmtk/install.sh ]; then
  sh tools/dcmtk/install.sh
fi
# Static checks first (ruff, ruff format --check, mypy --strict): they take seconds, the suite minutes.
bash scripts/lint.sh
# Here every test server must start: a server that does not fails its tests instead of skipping.
export FHIRIMG_REQUIRE_DICOMWEB=1 FHIRIMG_REQUIRE_SERVERS=1
exec bash tools/run-in-netns.sh .venv/bin/python -m pytest "$@"
