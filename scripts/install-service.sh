#!/usr/bin/env bash
# Install microstackd as a system service on this host (README: "Installing
# microstackd as a system service"). Run it as root from a clone of this
# repository, on a host where systemd is PID 1 and Python >= 3.11 has venv
# (Debian 12: apt-get install python3-venv). The e2e suite
# tests/e2e/machines/test_machines.py runs exactly this script in its containers.
#
#   scripts/install-service.sh [--wheels DIR] [--prefix DIR] [--openstack-prefix DIR]
#
#   --wheels DIR            install offline from DIR: microstackd's wheel and its
#                           dependencies' (`python3 -m pip wheel --wheel-dir DIR .`
#                           in this clone, on any machine with PyPI); without it,
#                           pip builds this clone and fetches the dependencies from PyPI
#   --prefix DIR            the venv microstackd is installed into (default /opt/microstackd)
#   --openstack-prefix DIR  the OpenStack services' environment (openstack/install-env.sh),
#                           written into the config file; without it, role services are stand-ins
#
# What it does (each step idempotent; run it again to upgrade):
#   1. a venv in PREFIX with microstackd in it; /usr/bin/microstackd and
#      /usr/bin/microstackctl link into it (the unit's ExecStart is /usr/bin/microstackd);
#   2. the unit: systemd/microstackd.service -> /usr/lib/systemd/system/microstackd.service;
#   3. the socket's group: systemd/microstackd.sysusers -> /usr/lib/sysusers.d/microstackd.conf,
#      then systemd-sysusers creates the "microstack" group;
#   4. /etc/microstackd/microstackd.yaml, if there is none: the systemd service
#      manager, and the config root /etc/microstackd/openstack (writable by the
#      hardened unit: ReadWritePaths=/etc/microstackd);
#   5. systemctl daemon-reload.
# It starts nothing: `systemctl enable --now microstackd` does, and
# `usermod -aG microstack USER` lets USER run microstackctl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/microstackd
WHEELS=""
OPENSTACK_PREFIX=""
CONFIG=/etc/microstackd/microstackd.yaml

die() {
    echo "install-service: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --openstack-prefix) OPENSTACK_PREFIX=${2:?--openstack-prefix needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-service: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run me as root (I install into $PREFIX, /usr/bin and /usr/lib/systemd)"
[ -d /run/systemd/system ] || die "systemd is not this host's init system: microstackd's unit needs it"
PYTHON=$(command -v python3) || die "python3 is missing (Debian: apt-get install python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "microstackd needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot make a venv (Debian: apt-get install python3-venv)"
if [ -n "$WHEELS" ]; then
    compgen -G "$WHEELS/microstackd-*.whl" >/dev/null \
        || die "no microstackd wheel in $WHEELS (make them with: python3 -m pip wheel --wheel-dir $WHEELS $ROOT)"
fi
if [ -n "$OPENSTACK_PREFIX" ] && [ ! -x "$OPENSTACK_PREFIX/bin/nova-compute" ]; then
    die "--openstack-prefix $OPENSTACK_PREFIX: no bin/nova-compute there (openstack/install-env.sh makes it)"
fi

echo "install-service: microstackd into $PREFIX"
[ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
pip=("$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -n "$WHEELS" ]; then
    pip+=(--no-index --find-links "$WHEELS")
    # The dependencies, then microstackd itself again: a rebuilt wheel keeps its version.
    "${pip[@]}" microstackd
    "${pip[@]}" --force-reinstall --no-deps microstackd
else
    "${pip[@]}" "$ROOT"
fi
"$PREFIX/bin/microstackd" --version >/dev/null || die "$PREFIX/bin/microstackd does not run"

for tool in microstackd microstackctl; do
    link=/usr/bin/$tool
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        die "$link exists and is not a link of mine: remove it, or install the package that owns it instead"
    fi
    ln -sfn "$PREFIX/bin/$tool" "$link"
done

echo "install-service: the unit and the microstack group"
install -D -m 0644 "$ROOT/systemd/microstackd.service" /usr/lib/systemd/system/microstackd.service
install -D -m 0644 "$ROOT/systemd/microstackd.sysusers" /usr/lib/sysusers.d/microstackd.conf
systemd-sysusers /usr/lib/sysusers.d/microstackd.conf

if [ ! -e "$CONFIG" ]; then
    echo "install-service: writing $CONFIG"
    install -d -m 0700 /etc/microstackd
    {
        echo "# microstackd's settings: the keys are its flags (docs/cli.md)."
        echo "# Written by scripts/install-service.sh; yours to edit (then: systemctl restart microstackd)."
        echo "service_manager: systemd"
        echo "# Where roles render the OpenStack configuration: inside the unit's ReadWritePaths."
        echo "config_root: /etc/microstackd/openstack"
        if [ -n "$OPENSTACK_PREFIX" ]; then
            echo "openstack_prefix: $OPENSTACK_PREFIX"
        fi
    } > "$CONFIG.tmp"
    chmod 0600 "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
else
    echo "install-service: keeping $CONFIG"
fi

systemctl daemon-reload
echo "install-service: done. Next: systemctl enable --now microstackd; usermod -aG microstack USER"
