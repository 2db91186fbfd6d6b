#!/bin/sh
# Install dcmtk (Debian package) for the fhirimg test suite and bench/listen.py: storescu, findscu
# and echoscu are the independent DIMSE sender and client the DIMSE tests talk to fhirimg with.
#
# Idempotent: a fast no-op when the tools are already installed. dcmtk ships no service, so
# nothing starts or listens after the install.
#
# Usage (as root):  sh tools/dcmtk/install.sh
set -eu

PKGS="dcmtk"

have_tools() {
    for tool in storescu findscu echoscu; do
        command -v "$tool" >/dev/null 2>&1 || return 1
    done
}

if have_tools; then
    echo "install.sh: dcmtk already installed ($(storescu --version 2>/dev/null | grep -m1 -o 'v[0-9][0-9.]*' || echo '?'))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (apt-get install $PKGS)" >&2
    exit 3
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists do not know the package yet.
cand="$(apt-cache policy dcmtk 2>/dev/null | awk '/Candidate:/ {print $2}')"
if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
    apt-get update
fi
apt-get install -y --no-install-recommends $PKGS

if ! have_tools; then
    echo "install.sh: ERROR: storescu/findscu/echoscu not found after installing $PKGS" >&2
    exit 1
fi
echo "install.sh: installed dcmtk ($(storescu --version 2>/dev/null | grep -m1 -o 'v[0-9][0-9.]*' || echo '?'))"
