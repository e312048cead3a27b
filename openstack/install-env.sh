#!/usr/bin/env bash
# Create the OpenStack services environment for microstackd.
#
#   openstack/install-env.sh PREFIX        e.g. /opt/microstack-openstack/venv
#
# * installs the Debian packages the services need (MariaDB, RabbitMQ, Open
#   vSwitch, conntrack, iproute2, nftables, ...);
# * creates a venv at PREFIX and installs requirements.txt under
#   constraints.txt (exact pins of a verified run);
# * writes PREFIX/.microstack-env, the SHA-256 of this script and both lists
#   (concatenated): an environment whose stamp differs is older than these
#   files (tests/e2e/openstack_env.py re-runs this script then).
# Idempotent: re-running on a complete environment only re-checks it.
# Fails loudly (set -e, explicit checks at the end).
# Environment: PYTHON (default python3), SKIP_APT=1 to skip the apt part.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${1:?usage: install-env.sh PREFIX}"
python="${PYTHON:-python3}"

log() { printf '[install-env %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, service users)"

debs=(
  mariadb-server          # private mariadbd instance (mariadb-install-db)
  rabbitmq-server         # oslo.messaging transport (also brings epmd/erlang)
  openvswitch-switch      # ovsdb-server + ovs-vswitchd per compute (userspace datapath)
  conntrack               # neutron OVS firewall driver = openvswitch
  iproute2                # ip netns / veth
  nftables                # (kept for the product's namespace NAT rules)
  iputils-ping            # checks inside namespaces
  ethtool                 # veth TX checksum offload off (userspace OVS datapath)
  python3-venv            # venv for Debian's python3 when PYTHON=/usr/bin/python3
  # Real instances: one libvirtd per compute, QEMU (KVM where it works, TCG else)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  genisoimage             # Nova's config drive (force_config_drive)
  openssh-client          # launch's key (ssh-keygen), and ssh into the guests
  libvirt-dev pkg-config gcc python3-dev   # pip builds libvirt-python from its sdist
  # The network node (the control): DHCP and L3 agents
  dnsmasq-base dnsmasq-utils iptables iputils-arping
  # The test image, built from Debian packages (microstackd.node.testimage)
  dosfstools mtools syslinux syslinux-common kmod
)

if [ "${SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get update"
    apt-get update -q
    log "apt-get install ${missing[*]}"
    # policy-rc.d: Debian's maintainer scripts must not start system-wide
    # mariadb/rabbitmq/ovs; every service here runs private instances.
    prc=/usr/sbin/policy-rc.d; made_prc=0
    if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; made_prc=1; fi
    trap '[ "$made_prc" = 1 ] && rm -f "$prc"' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    log "Debian packages already installed"
  fi
fi

for b in mariadbd mariadb-install-db rabbitmq-server ovsdb-server ovs-vswitchd ovs-vsctl ovsdb-tool conntrack ip ethtool \
         libvirtd virsh qemu-system-x86_64 qemu-img genisoimage dnsmasq iptables arping \
         mkfs.vfat mcopy syslinux depmod unshare ssh ssh-keygen; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || [ -x "/usr/lib/rabbitmq/bin/$b" ] || die "missing binary $b after apt"
done

if [ ! -x "$prefix/bin/python" ]; then
  log "creating venv $prefix with $python"
  mkdir -p "$(dirname "$prefix")"
  "$python" -m venv "$prefix"
fi
log "pip install (requirements + constraints)"
# (This machine's pip.conf adds local file:// indexes that lack most packages:
# pip warns once per package about them; drop that noise, keep pip's status.)
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; }
quiet "$prefix/bin/python" -m pip install -q --upgrade pip setuptools wheel -c "$here/constraints.txt"
quiet "$prefix/bin/python" -m pip install -q -r "$here/requirements.txt" -c "$here/constraints.txt"
"$prefix/bin/python" -m pip check || die "pip check found conflicts"

for c in nova-manage nova-compute nova-conductor nova-scheduler keystone-manage glance-manage \
         placement-manage neutron-db-manage neutron-rpc-server neutron-openvswitch-agent \
         neutron-dhcp-agent neutron-l3-agent privsep-helper openstack gunicorn; do
  [ -x "$prefix/bin/$c" ] || die "missing $prefix/bin/$c"
done
"$prefix/bin/python" -W ignore - <<'PY' || die "import check failed"
import nova, neutron, keystone, glance, placement, pymysql, oslo_messaging, sqlalchemy  # noqa
import libvirt  # noqa
from importlib.metadata import version
for d in ("nova", "neutron", "keystone", "glance", "openstack-placement", "python-openstackclient", "SQLAlchemy", "libvirt-python"):
    print(f"  {d} {version(d)}")
PY
cat "$here/install-env.sh" "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1 >"$prefix/.microstack-env"
log "done: $prefix"
