#!/usr/bin/env bash
# Stop everything the dev scripts started and delete their namespaces.
#
#   openstack/dev/down.sh [--purge]     --purge also deletes $SCRATCH state
#                                       (keeps the venv and $SCRATCH/times)
#   openstack/dev/down.sh --compute NAME  stop one compute node, delete its
#                                       namespace and state (the service stays
#                                       registered in Nova/Neutron)
#
# Order: compute nodes (nova-compute, agent, privsep helpers, OVS), then the
# control plane (APIs, RPC, conductor, scheduler, RabbitMQ, epmd, MariaDB),
# then every process still inside a namespace we made, then the namespaces.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
set +e

purge=0; only=""
case "${1:-}" in
  --purge) purge=1 ;;
  --compute) only=${2:?--compute NAME} ;;
esac

# stop_pid NAME [GRACE]: TERM the process group started for NAME, KILL after
# GRACE seconds (default 15).
stop_pid() {
  local name=$1 grace=${2:-15} f="$PIDS/$1.pid" pid i t0=$SECONDS
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for i in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM for $grace s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
  fi
  # Stragglers of the same process group (gunicorn workers, erl children).
  pkill -KILL -g "$pid" 2>/dev/null
  rm -f "$f"
  log "stopped $name in $((SECONDS - t0)) s"
}

# kill_ns NS: everything still running inside namespace NS (e.g. privsep
# helpers reparented to PID 1, ovs daemons, epmd).
# shellcheck disable=SC2086  # $pids: a word list on purpose
kill_ns() {
  local ns=$1 pids
  ip netns list | grep -qw "$ns" || return 0
  pids=$(ip netns pids "$ns")
  [ -n "$pids" ] || return 0
  log "terminating in $ns: $(echo $pids)"  # one line
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 30); do pids=$(ip netns pids "$ns"); [ -z "$pids" ] && break; sleep 0.1; done
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  sleep 0.2
}

# stop_compute NAME: nova-compute, agent (+ privsep helpers), OVS, namespace.
stop_compute() {
  local c=$1 d="$SCRATCH/compute/$1" pf dmn
  # Both in parallel.  The agent ignores SIGTERM for > 10 s (closing AMQP);
  # nothing of its state needs a clean stop: 5 s grace, then SIGKILL.
  stop_pid "$c-nova-compute" 5 & stop_pid "$c-ovs-agent" 5 & wait
  for dmn in ovs-vswitchd ovsdb-server; do
    pf="$d/ovs/run/$dmn.pid"
    [ -f "$pf" ] && kill -TERM "$(cat "$pf")" 2>/dev/null
  done
  kill_ns "msos-$c"
  ip netns list | grep -qw "msos-$c" && ip netns del "msos-$c" && log "deleted netns msos-$c"
  ip -n "$BR_NS" link del "v-$c" 2>/dev/null
}

if [ -n "$only" ]; then
  stop_compute "$only"
  rm -rf "${SCRATCH:?}/compute/$only"
  exit 0
fi

for d in "$SCRATCH"/compute/*/; do
  [ -d "$d" ] && stop_compute "$(basename "$d")" &
done
wait

# Graceful stops of the RPC daemons take 7-15 s (neutron-rpc-server ignores
# SIGTERM for 15 s); nothing needs them clean for a teardown: 5 s grace.
for s in nova-api neutron-api glance placement keystone neutron-rpc-server nova-conductor nova-scheduler; do
  stop_pid "$s" 5 &
done
wait
stop_pid rabbitmq & stop_pid mariadb & wait
stop_pid epmd
[ -n "$CTL_NS" ] && kill_ns "$CTL_NS"

for ns in $(ip netns list | awk '{print $1}' | grep -E '^msos-'); do
  kill_ns "$ns"
  ip netns del "$ns" && log "deleted netns $ns"
done

if [ "$purge" = 1 ]; then
  rm -rf "$SCRATCH/control" "$SCRATCH/compute" "$PIDS"
  log "purged state under $SCRATCH"
fi

# Ours: the daemons by name, or anything running from the OpenStack venv.
left=$(ps -eo pid=,comm=,args= | awk -v venv="$VENV/bin/" \
  '$2 != "awk" && ($2 ~ /^(mariadbd|beam\.smp|epmd|ovsdb-server|ovs-vswitchd|gunicorn)/ || index($0, venv)) {print}')
if [ -n "$left" ]; then log "still running:"; echo "$left" >&2; else log "nothing left running"; fi
