# Shared settings and helpers for the exploratory OpenStack bring-up scripts.
# Sourced by control-up.sh, compute-up.sh, smoke.sh, down.sh, rss.sh.
#
# Topology (see docs/openstack-bringup.md):
#   netns $BR_NS   : Linux bridge $BR_DEV, one veth end per node
#   netns $CTL_NS  : the whole control plane; eth0 = $CTL_IP/24, lo up.
#                    APIs bind 127.0.0.1 and $CTL_IP, DB only 127.0.0.1.
#   netns msos-<c> : one per compute node; eth0 = its IP/24, lo up; its own
#                    ovsdb-server + ovs-vswitchd, neutron-openvswitch-agent,
#                    nova-compute.
# Nothing is bound in, or routed to/from, the root namespace: every address
# used lives inside namespaces these scripts create.
# shellcheck shell=bash

set -euo pipefail

OS_DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OS_DIR="$(dirname "$OS_DEV_DIR")"            # repo's openstack/
TEMPLATES="$OS_DIR/templates"

VENV="${VENV:-/opt/microstack-openstack/venv}"
SCRATCH="${SCRATCH:-/opt/microstack-openstack-scratch}"
CTL="$SCRATCH/control"                        # control-plane runtime state
PIDS="$SCRATCH/pids"                          # NAME.pid for everything started
TIMES="$SCRATCH/times"                        # measured phase timings

# Namespaces and addresses (all inside namespaces made here).
BR_NS="${BR_NS:-msos-br}"
BR_DEV="${BR_DEV:-br-mgmt}"
CTL_NS="${CTL_NS-msos-ctl}"            # set empty: plane in the current netns
NET_PREFIX="${NET_PREFIX:-10.231.0}"          # management /24 on the bridge
CTL_IP="${CTL_IP:-$NET_PREFIX.1}"

# Non-default ports (collision-free even outside a namespace).
DB_PORT=13306
RABBIT_PORT=15673
RABBIT_DIST_PORT=25673
EPMD_PORT=14369
KEYSTONE_PORT=15000
GLANCE_PORT=19292
PLACEMENT_PORT=18778
NOVA_PORT=18774
NEUTRON_PORT=19696

REGION=RegionOne
KEYSTONE_WORKERS="${KEYSTONE_WORKERS:-2}"     # --threads 1 always (see doc)
API_WORKERS="${API_WORKERS:-1}"               # others; keep <= 2 on 2 cores

export PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PYTHONDONTWRITEBYTECODE=1

log() { printf '[%(%H:%M:%S)T %s] %s\n' -1 "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s.%N; }
# record NAME START: append "NAME seconds" to $TIMES/<script>.txt and log it.
record() {
  local name=$1 start=$2 dt
  dt=$(python3 -c "print(f'{$(now)-$start:.2f}')")
  mkdir -p "$TIMES"
  echo "$name $dt" >>"$TIMES/$(basename "$0" .sh).txt"
  log "phase $name: ${dt}s"
}

# nsx NS CMD...: run in namespace NS (or in the current one when NS is empty).
nsx() {
  local ns=$1; shift
  if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# render TEMPLATE OUT [key=value ...] with the common values appended.
render() {
  local tpl=$1 out=$2; shift 2
  python3 "$OS_DIR/render.py" "$TEMPLATES/$tpl" "$out" "${COMMON_VARS[@]}" "$@"
}

# start NAME NS LOGFILE CMD...: start a daemon in the background (own session)
# inside namespace NS, stdout+stderr to LOGFILE, pid to $PIDS/NAME.pid.
# `ip netns exec` execs the command, so $! is the daemon's own pid.
start() {
  local name=$1 ns=$2 logf=$3; shift 3
  mkdir -p "$PIDS" "$(dirname "$logf")"
  if [ -f "$PIDS/$name.pid" ] && kill -0 "$(cat "$PIDS/$name.pid")" 2>/dev/null; then
    die "$name already running (pid $(cat "$PIDS/$name.pid"))"
  fi
  if [ -n "$ns" ]; then
    setsid ip netns exec "$ns" "$@" >>"$logf" 2>&1 </dev/null &
  else
    setsid "$@" >>"$logf" 2>&1 </dev/null &
  fi
  echo $! >"$PIDS/$name.pid"
}

# wait_tcp NS HOST PORT [TIMEOUT] [PIDNAME]: wait until a TCP port accepts,
# failing early if the daemon recorded as PIDNAME has died.
wait_tcp() {
  local ns=$1 host=$2 port=$3 timeout=${4:-60} pidname=${5:-} t0
  t0=$(date +%s)
  until nsx "$ns" python3 -c "import socket,sys; socket.create_connection(('$host',$port),0.5).close()" 2>/dev/null; do
    if [ -n "$pidname" ] && ! kill -0 "$(cat "$PIDS/$pidname.pid")" 2>/dev/null; then
      die "$pidname died while waiting for $host:$port (see its log)"
    fi
    [ $(( $(date +%s) - t0 )) -lt "$timeout" ] || die "timeout waiting for $host:$port"
    sleep 0.2
  done
}

# wait_http NS URL [TIMEOUT] [PIDNAME]: wait for any HTTP answer (< 500).
wait_http() {
  local ns=$1 url=$2 timeout=${3:-90} pidname=${4:-} t0
  t0=$(date +%s)
  until nsx "$ns" python3 - "$url" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code < 500 else 1)
PY
  do
    if [ -n "$pidname" ] && ! kill -0 "$(cat "$PIDS/$pidname.pid")" 2>/dev/null; then
      die "$pidname died while waiting for $url (see its log)"
    fi
    [ $(( $(date +%s) - t0 )) -lt "$timeout" ] || die "timeout waiting for $url"
    sleep 0.3
  done
}

# gunicorn_start NAME WSGI_APP PORT WORKERS ENV=VALUE...: an API under gunicorn,
# bound on 127.0.0.1 and $CTL_IP (when the plane has its own namespace).
gunicorn_start() {
  local name=$1 app=$2 port=$3 workers=$4; shift 4
  local binds=(-b "127.0.0.1:$port")
  [ -n "$CTL_NS" ] && binds+=(-b "$CTL_IP:$port")
  start "$name" "$CTL_NS" "$CTL/log/$name.log" \
    env MSOS_WSGI_APP="$app" MSOS_WSGI_PROG="$name" "$@" \
    "$VENV/bin/gunicorn" --pythonpath "$OS_DIR" "${binds[@]}" \
      --workers "$workers" --threads 1 --timeout 300 --graceful-timeout 5 \
      --no-control-socket --name "$name" wsgi_app:application
}

# The OpenStack CLI as admin, run inside the control namespace.
osc() {
  nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" OS_CLOUD=microstack \
    "$VENV/bin/openstack" "$@"
}

# Secrets: generated once per scratch dir, kept in $CTL/secrets.env.
load_secrets() {
  mkdir -p "$CTL"
  if [ ! -f "$CTL/secrets.env" ]; then
    umask 077
    {
      for k in DB_PASSWORD RABBIT_PASSWORD ADMIN_PASSWORD SERVICE_PASSWORD; do
        echo "$k=$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
      done
    } >"$CTL/secrets.env"
    umask 022
  fi
  # shellcheck disable=SC1091
  . "$CTL/secrets.env"
  # URLs that services inside the control namespace and on compute nodes use.
  API_HOST="${CTL_NS:+$CTL_IP}"; API_HOST="${API_HOST:-127.0.0.1}"
  KEYSTONE_URL="http://$API_HOST:$KEYSTONE_PORT/v3"
  TRANSPORT_URL="rabbit://openstack:$RABBIT_PASSWORD@$API_HOST:$RABBIT_PORT/"
  DB_BASE_URL="mysql+pymysql://openstack:$DB_PASSWORD@127.0.0.1:$DB_PORT"
  COMMON_VARS=(
    "api_host=$API_HOST" "region=$REGION"
    "keystone_url=$KEYSTONE_URL" "transport_url=$TRANSPORT_URL"
    "db_base_url=$DB_BASE_URL" "service_password=$SERVICE_PASSWORD"
    "admin_password=$ADMIN_PASSWORD"
  )
}

# --- namespaces --------------------------------------------------------------

# bridge_ns_up: the bridge namespace with one Linux bridge (idempotent).
bridge_ns_up() {
  if ! ip netns list | grep -qw "$BR_NS"; then
    ip netns add "$BR_NS"
    ip -n "$BR_NS" link set lo up
    ip netns exec "$BR_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$BR_NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$BR_NS" link add "$BR_DEV" type bridge
    ip -n "$BR_NS" link set "$BR_DEV" up
  fi
}

# node_ns_up NS IP PORTNAME: a node namespace linked to the bridge by a veth
# (created inside the namespaces: nothing appears in the root namespace).
node_ns_up() {
  local ns=$1 ip=$2 port=$3
  bridge_ns_up
  if ! ip netns list | grep -qw "$ns"; then
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$BR_NS" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$BR_NS" link set "$port" master "$BR_DEV" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    # veth TX checksum offload leaves TCP checksums unfilled; a node whose
    # eth0 sits in an OVS userspace-datapath bridge (compute br-phy) then
    # receives bad checksums and TCP to it stalls.  Compute checksums in
    # software on every node.
    ip netns exec "$ns" ethtool -K eth0 tx off >/dev/null
  fi
}
