#!/usr/bin/env bash
# Data-plane check across two compute nodes (both up, DATAPLANE=1): boot one
# server on each (forced host), plug both (plug-vm.sh), then ICMP and TCP/22
# from the first "VM" to the second over the vxlan tunnel, and TCP/80, which
# the default security group must drop when the source is outside the group.
#
#   openstack/dev/dataplane-check.sh NODE_A NODE_B       e.g. cmp1 cmp2
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
a=${1:?usage: dataplane-check.sh NODE_A NODE_B}
b=${2:?usage: dataplane-check.sh NODE_A NODE_B}
load_secrets
ops() {
  nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" OS_CLOUD=microstack \
    python3 "$OS_DEV_DIR/cloudops.py" "$@"
}
ops image >/dev/null 2>&1
img=$(osc image show tiny -f value -c id)
sids=()
for n in "$a" "$b"; do
  sids+=("$(osc server create --image "$img" --flavor m1.tiny --network private \
    --availability-zone "nova:$n" --wait -f value -c id "dp-$n")")
done
for i in 0 1; do
  n=$([ $i = 0 ] && echo "$a" || echo "$b")
  "$OS_DEV_DIR/plug-vm.sh" "$n" "${sids[$i]}"
done
ipb=$(osc port list --server "${sids[1]}" -f value -c "Fixed IP Addresses" | grep -o "10\.[0-9.]*" | head -1)
pidb=$(osc port list --server "${sids[1]}" -f value -c ID)
nsa="msos-vm-${sids[0]:0:8}"; nsb="msos-vm-${sids[1]:0:8}"

# Source port outside the default group, so that only the ICMP and SSH rules
# admit it (members of `default` may send anything to each other).
pida=$(osc port list --server "${sids[0]}" -f value -c ID)
osc security group show probe >/dev/null 2>&1 || osc security group create probe >/dev/null
osc port set --no-security-group --security-group probe "$pida"
sleep 2

ok=1
if ip netns exec "$nsa" ping -c 3 -W 2 "$ipb" >/dev/null; then
  log "ICMP $a -> $b ($ipb) over vxlan: OK"
else
  log "ICMP $a -> $b ($ipb): FAILED"; ok=0
fi
tcp() {  # tcp PORT EXPECT(open|closed)
  local port=$1 want=$2 got
  ip netns exec "$nsb" timeout 8 python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$ipb', $port)); s.listen(); s.settimeout(7); c, _ = s.accept(); c.close()" 2>/dev/null &
  local lpid=$!
  sleep 0.5
  if ip netns exec "$nsa" python3 -c "import socket; socket.create_connection(('$ipb', $port), 3).close()" 2>/dev/null
  then got=open; else got=closed; fi
  kill "$lpid" 2>/dev/null || true; wait "$lpid" 2>/dev/null || true
  if [ "$got" = "$want" ]; then log "TCP/$port $a -> $b: $got (expected)"; else log "TCP/$port: $got, expected $want"; ok=0; fi
}
tcp 22 open
tcp 80 closed
for s in "${sids[@]}"; do osc server delete --wait "$s"; done
for n in "$nsa" "$nsb"; do ip netns del "$n"; done
[ "$ok" = 1 ] || die "data-plane check failed"
log "data plane OK between $a and $b (port $pidb)"
