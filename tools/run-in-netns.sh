#!/bin/sh
# Run a command inside a fresh private network namespace that has only `lo` (brought up).
#
# Why: Orthanc 1.10 listens on all interfaces and cannot be told to bind 127.0.0.1 only.
# Inside a private netns "all interfaces" is just the private loopback, so test servers
# are unreachable from outside, and the tests (same namespace) reach them on 127.0.0.1.
#
# Usage:  tools/run-in-netns.sh COMMAND [ARG...]
#   e.g.  tools/run-in-netns.sh .venv/bin/python -m pytest tests/servers/test_orthanc_server.py -q
# The environment and working directory are kept; the exit code of COMMAND is returned.
# Exit code 3: no private network namespace could be created (run as root).
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

if ! command -v unshare >/dev/null 2>&1; then
    echo "run-in-netns.sh: 'unshare' not found (Debian: apt-get install util-linux)" >&2
    exit 3
fi
IP="$(command -v ip 2>/dev/null || true)"
for c in /usr/sbin/ip /sbin/ip /usr/bin/ip /bin/ip; do
    [ -n "$IP" ] && break
    [ -x "$c" ] && IP="$c"
done
if [ -z "$IP" ]; then
    echo "run-in-netns.sh: 'ip' not found (Debian: apt-get install iproute2)" >&2
    exit 3
fi

if [ "$(id -u)" -eq 0 ]; then
    NS="--net"
else
    # Without root, a user namespace mapped to root may still allow a private netns.
    NS="--user --map-root-user --net"
fi

# Probe first, so a refusal gives exit 3 and a clear message instead of the command's code.
# shellcheck disable=SC2086
if ! unshare $NS -- "$IP" link set lo up 2>/dev/null; then
    echo "run-in-netns.sh: cannot create a private network namespace ('unshare $NS' refused)." >&2
    echo "run-in-netns.sh: run as root, e.g. sudo $0 $*" >&2
    exit 3
fi

# Inside: bring lo up, then exec the command with its arguments verbatim (env inherited).
# shellcheck disable=SC2086
exec unshare $NS -- sh -c '"$0" link set lo up && exec "$@"' "$IP" "$@"
