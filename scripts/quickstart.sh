#!/usr/bin/env bash
# Quick start, first command: set everything up and convert the bundled sample data.
# The bundles and report.json land in fhirimg-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Exit code 1 is expected here: sample_data/ holds a truncated file on purpose (see its README).
.venv/bin/fhirimg convert sample_data/dicom sample_data/sr "$@" || [ $? -eq 1 ]
echo "Next: .venv/bin/fhirimg --help, or open fhirimg-out/report.json"
