#!/usr/bin/env bash
# Give a fake-driver server a real data plane: what a libvirt VIF plug would
# do, by hand.  For the server's first port: an OVS internal port tapXXXX on
# the node's br-int with the iface-id/attached-mac external_ids the OVS agent
# looks for, moved into its own namespace msos-vm-<id8> with the port's MAC
# and fixed IP.  The agent then wires it (VLAN tag, flows, security groups),
# and Neutron marks the port ACTIVE.
#
#   openstack/dev/plug-vm.sh NODE SERVER_ID
#
# Then e.g.: ip netns exec msos-vm-<id8> ping OTHER_FIXED_IP
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
node=${1:?usage: plug-vm.sh NODE SERVER_ID}
sid=${2:?usage: plug-vm.sh NODE SERVER_ID}
load_secrets
SOCK="$SCRATCH/compute/$node/ovs/run/db.sock"
[ -S "$SOCK" ] || die "no OVS for node $node"

read -r pid mac ip4 < <(nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" OS_CLOUD=microstack \
  python3 - "$sid" <<'PY'
import sys, openstack
c = openstack.connect()
p = next(iter(c.network.ports(device_id=sys.argv[1])))
print(p.id, p.mac_address, p.fixed_ips[0]["ip_address"])
PY
)
dev="tap${pid:0:11}"
vmns="msos-vm-${sid:0:8}"
nsx "msos-$node" ovs-vsctl --db="unix:$SOCK" --timeout=10 -- --may-exist add-port br-int "$dev" \
  -- set Interface "$dev" type=internal "external_ids:iface-id=$pid" "external_ids:attached-mac=$mac" \
     external_ids:iface-status=active "external_ids:vm-uuid=$sid"
ip netns add "$vmns"
ip -n "$vmns" link set lo up
ip netns exec "$vmns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
for _ in $(seq 50); do ip -n "msos-$node" link show "$dev" >/dev/null 2>&1 && break; sleep 0.1; done
ip -n "msos-$node" link set "$dev" netns "$vmns"
ip -n "$vmns" link set "$dev" address "$mac"
ip -n "$vmns" addr add "$ip4/24" dev "$dev"
ip -n "$vmns" link set "$dev" up
t=$(now)
for _ in $(seq 300); do
  st=$(osc port show "$pid" -f value -c status 2>/dev/null || true)
  [ "$st" = ACTIVE ] && break; sleep 0.2
done
[ "$st" = ACTIVE ] || die "port $pid stayed $st"
record "port_active_${node}" "$t"
log "server $sid: port $pid ($ip4, $mac) ACTIVE, plugged as $dev in netns $vmns"
