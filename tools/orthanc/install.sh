#!/bin/sh
# Install Orthanc + the DICOMweb plugin (Debian 12 packages) for the fhirimg test suite.
#
# Idempotent: a fast no-op when both packages are already installed.
# The Debian package would start a system-wide Orthanc listening on every interface
# (Orthanc 1.10 cannot bind to loopback only). We never want that: the test suite
# starts its own Orthanc inside a private network namespace (see README.md).
# So service start-up is blocked during the install (policy-rc.d exit 101) and the
# system service is stopped and disabled afterwards.
#
# Usage (as root):  sh tools/orthanc/install.sh
set -eu

PKGS="orthanc orthanc-dicomweb"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (apt-get install $PKGS)" >&2
    exit 3
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

find_plugin() {
    for f in /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
             /usr/lib/orthanc/plugins/libOrthancDicomWeb.so; do
        [ -e "$f" ] && { echo "$f"; return 0; }
    done
    dpkg -L orthanc-dicomweb 2>/dev/null | grep -m1 'libOrthancDicomWeb\.so' || true
}

stop_system_service() {
    # Stop and disable the packaged service, whatever init is in use. Only the
    # service's own stop path is used; no process is killed by name.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now orthanc.service >/dev/null 2>&1 || true
    else
        if [ -x /etc/init.d/orthanc ]; then
            /etc/init.d/orthanc stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
            update-rc.d orthanc disable >/dev/null 2>&1 || true
        fi
    fi
    if command -v pgrep >/dev/null 2>&1 && pgrep -u orthanc -x Orthanc >/dev/null 2>&1; then
        echo "install.sh: WARNING: a system Orthanc (user 'orthanc') is still running:" >&2
        pgrep -a -u orthanc -x Orthanc >&2 || true
        echo "install.sh: stop it (service orthanc stop) - it listens on all interfaces." >&2
        return 1
    fi
    return 0
}

all_installed=1
for p in $PKGS; do installed "$p" || all_installed=0; done

if [ "$all_installed" -eq 1 ] && [ -n "$(find_plugin)" ] && command -v Orthanc >/dev/null 2>&1; then
    stop_system_service
    echo "install.sh: Orthanc already installed ($(Orthanc --version 2>/dev/null | head -n1)); plugin: $(find_plugin)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Block service start-up during the install. Keep (and restore) any existing policy-rc.d,
# e.g. the one Docker images ship.
POLICY=/usr/sbin/policy-rc.d
BACKUP=""
if [ -e "$POLICY" ]; then
    BACKUP="$(mktemp /usr/sbin/policy-rc.d.fhirimg-backup.XXXXXX)"
    cp -p "$POLICY" "$BACKUP"
fi
restore_policy() {
    if [ -n "$BACKUP" ]; then
        mv -f "$BACKUP" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
trap 'exit 130' INT TERM
printf '#!/bin/sh\n# temporary, written by fhirimg tools/orthanc/install.sh\nexit 101\n' >"$POLICY"
chmod 0755 "$POLICY"

# apt-get update only when the package lists do not know the packages yet.
need_update=0
for p in $PKGS; do
    cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ "$need_update" -eq 1 ]; then
    apt-get update
fi

apt-get install -y --no-install-recommends $PKGS

restore_policy
trap - EXIT

stop_system_service

plugin="$(find_plugin)"
if [ -z "$plugin" ]; then
    echo "install.sh: ERROR: libOrthancDicomWeb.so not found after install" >&2
    exit 1
fi
echo "install.sh: installed $(Orthanc --version 2>/dev/null | head -n1); plugin: $plugin"
