#!/usr/bin/env bash
# Bring up one compute node in its own network namespace msos-NAME:
# ovsdb-server + ovs-vswitchd (userspace datapath, br-ex netdev),
# neutron-openvswitch-agent, nova-compute (fake driver), then
# nova-manage cell_v2 discover_hosts on the control node.
#
#   openstack/dev/compute-up.sh NAME IP       e.g.  cmp1 10.231.0.11
#
# NAME becomes the Nova/Neutron host name (don't use "compute"); IP is its
# address on the management bridge (also its vxlan local_ip), inside
# $NET_PREFIX.0/24.  Needs control-up.sh (with CTL_NS set) first.
# FIREWALL_DRIVER=openvswitch (default) or noop.  DATAPLANE=1 (default) puts
# eth0 into an OVS bridge br-phy so vxlan really carries traffic between
# nodes; DATAPLANE=0 leaves eth0 to the kernel (tunnels configured, idle).
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name=${1:?usage: compute-up.sh NAME IP}
ip=${2:?usage: compute-up.sh NAME IP}
[ "$name" != compute ] || die "don't name a host 'compute'"
[ -n "$CTL_NS" ] || die "computes need the control plane in its own namespace (CTL_NS)"
[ -f "$CTL/secrets.env" ] || die "no control plane: run control-up.sh first"
load_secrets

ns="msos-$name"
N="$SCRATCH/compute/$name"
O="$N/ovs"
T_ALL=$(now)
rm -f "$TIMES/compute-up-$name.txt"
record() {  # per-node timing file
  local dt; dt=$(python3 -c "print(f'{$(now)-$2:.2f}')")
  mkdir -p "$TIMES"; echo "$1 $dt" >>"$TIMES/compute-up-$name.txt"; log "[$name] phase $1: ${dt}s"
}

# --- namespace ---------------------------------------------------------------
t=$(now)
node_ns_up "$ns" "$ip" "v-$name"
mkdir -p "$N"/{etc,log,state/nova/lock,state/neutron/lock} "$O"/{run,db,log}
nsx "$ns" python3 -c "import socket; socket.create_connection(('$CTL_IP', $KEYSTONE_PORT), 2).close()" \
  || die "$ns cannot reach $CTL_IP:$KEYSTONE_PORT"
record netns "$t"

# --- Open vSwitch: one ovsdb-server + ovs-vswitchd per namespace --------------
t=$(now)
export OVS_RUNDIR="$O/run" OVS_DBDIR="$O/db" OVS_LOGDIR="$O/log"
SOCK="$O/run/db.sock"
[ -f "$O/db/conf.db" ] || ovsdb-tool create "$O/db/conf.db" /usr/share/openvswitch/vswitch.ovsschema
nsx "$ns" ovsdb-server "$O/db/conf.db" --remote="punix:$SOCK" \
  --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
  --pidfile="$O/run/ovsdb-server.pid" --log-file="$O/log/ovsdb-server.log" --detach
ovs-vsctl --db="unix:$SOCK" --no-wait init
nsx "$ns" ovs-vswitchd "unix:$SOCK" --pidfile="$O/run/ovs-vswitchd.pid" \
  --log-file="$O/log/ovs-vswitchd.log" --detach
# br-ex must exist (netdev datapath) before the agent reads bridge_mappings.
ovs-vsctl --db="unix:$SOCK" --timeout=10 -- --may-exist add-br br-ex \
  -- set bridge br-ex datapath_type=netdev
if [ "${DATAPLANE:-1}" = 1 ]; then
  # Userspace vxlan (native tunnelling) sends only via a route whose device
  # is an OVS bridge: put eth0 into br-phy and move the node's IP onto br-phy.
  # Without this, tunnels are configured but carry nothing between hosts.
  ovs-vsctl --db="unix:$SOCK" --timeout=10 -- --may-exist add-br br-phy \
    -- set bridge br-phy datapath_type=netdev -- --may-exist add-port br-phy eth0
  ip -n "$ns" addr flush dev eth0
  ip -n "$ns" addr add "$ip/24" dev br-phy
  ip -n "$ns" link set br-phy up
  for _ in $(seq 50); do
    nsx "$ns" python3 -c "import socket; socket.create_connection(('$CTL_IP', $KEYSTONE_PORT), 1).close()" 2>/dev/null && break
    sleep 0.1
  done
fi
nsx "$ns" python3 -c "import socket; socket.create_connection(('$CTL_IP', $KEYSTONE_PORT), 2).close()" \
  || die "$ns cannot reach $CTL_IP:$KEYSTONE_PORT after the OVS set-up"
record ovs "$t"

# --- configs -------------------------------------------------------------------
V=("host=$name" "my_ip=$ip" "ovsdb_connection=unix:$SOCK" "of_listen_port=6633"
   "firewall_driver=${FIREWALL_DRIVER:-openvswitch}")
render neutron-agent.conf "$N/etc/neutron.conf" "${V[@]}" "state_dir=$N/state/neutron"
render openvswitch_agent.ini "$N/etc/openvswitch_agent.ini" "${V[@]}"
render nova-compute.conf "$N/etc/nova-compute.conf" "${V[@]}" "state_dir=$N/state/nova"
render clouds.yaml "$N/etc/clouds.yaml"

# --- neutron-openvswitch-agent -------------------------------------------------
t=$(now)
start "$name-ovs-agent" "$ns" "$N/log/neutron-openvswitch-agent.log" \
  neutron-openvswitch-agent --config-file "$N/etc/neutron.conf" --config-file "$N/etc/openvswitch_agent.ini"
nsx "$ns" env OS_CLIENT_CONFIG_FILE="$N/etc/clouds.yaml" OS_CLOUD=microstack \
  python3 "$OS_DEV_DIR/cloudops.py" wait-agent "$name" 90 "${t%.*}" >/dev/null
record agent_alive "$t"
# Fully ready: the first rpc_loop iteration has built br-int/br-tun flows.
for _ in $(seq 600); do
  grep -q 'rpc_loop - iteration:0 completed' "$N/log/neutron-openvswitch-agent.log" && break
  kill -0 "$(cat "$PIDS/$name-ovs-agent.pid")" 2>/dev/null || die "agent died: $N/log/neutron-openvswitch-agent.log"
  sleep 0.1
done
record agent_first_loop "$t"

# --- nova-compute --------------------------------------------------------------
t=$(now)
start "$name-nova-compute" "$ns" "$N/log/nova-compute.log" \
  nova-compute --config-file "$N/etc/nova-compute.conf"
nsx "$ns" env OS_CLIENT_CONFIG_FILE="$N/etc/clouds.yaml" OS_CLOUD=microstack \
  python3 "$OS_DEV_DIR/cloudops.py" wait-compute "$name" 120 >/dev/null
record compute_up "$t"

t=$(now)
nsx "$CTL_NS" nova-manage --config-file "$CTL/etc/nova/nova.conf" cell_v2 discover_hosts --verbose \
  >>"$CTL/log/nova-manage.log" 2>&1
record discover_hosts "$t"
record total "$T_ALL"
log "compute $name up in $ns ($ip)"
