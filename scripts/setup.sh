#!/usr/bin/env bash
# Install what microstackd needs on a fresh Debian machine: the Debian packages
# its tests and demo use, and a virtualenv (.venv) with the project and its
# development tools. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# debootstrap and systemd-container (systemd-nspawn): the machines suite's
# containers (tests/e2e/machines); ethtool: the e2e harness turns checksum
# offload off on its links.
DEBIAN_PACKAGES=(iproute2 procps systemd nftables iputils-ping ethtool debootstrap systemd-container)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing microstackd and its development tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import microstackd, microstackctl, microstack_api" \
        || { echo "setup: install failed" >&2; exit 1; }
    touch "$stamp"
fi
# Bytecode for our own packages, as a regular (non-editable) pip install
# would leave it: every daemon and CLI start otherwise recompiles them when
# PYTHONDONTWRITEBYTECODE is set (15 ms per CLI command, ~1 MB per daemon,
# docs/performance.md). Up-to-date files are skipped; a stale one is ignored.
.venv/bin/python -m compileall -q daemon/microstackd client/microstackctl protos/microstack_api >/dev/null

# The OpenStack end-to-end suite (pytest -m openstack) needs an OpenStack
# environment: Debian's MariaDB, RabbitMQ and Open vSwitch plus a ~600 MB venv
# of the pinned services. Its session fixture creates it on first use with
# openstack/install-env.sh (idempotent) into MICROSTACK_OPENSTACK_PREFIX
# (default /opt/microstack-openstack/venv), so a fresh CI machine needs
# nothing here. Set MICROSTACK_OPENSTACK_SETUP=1 to create it now instead.
if [ "${MICROSTACK_OPENSTACK_SETUP:-0}" = 1 ]; then
    prefix=${MICROSTACK_OPENSTACK_PREFIX:-/opt/microstack-openstack/venv}
    if [ ! -x "$prefix/bin/nova-compute" ]; then
        echo "setup: creating the OpenStack environment in $prefix"
        openstack/install-env.sh "$prefix"
    fi
fi
