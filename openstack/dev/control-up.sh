#!/usr/bin/env bash
# Bring up the whole OpenStack control plane inside network namespace $CTL_NS
# (default msos-ctl, address $CTL_IP on a veth to the bridge namespace), with
# the full bootstrap.  Exploratory: the product turns this into role data.
#
#   openstack/dev/control-up.sh          (as root; venv from install-env.sh)
#
# CTL_NS= (empty) runs the plane in the current namespace on 127.0.0.1 only
# (no compute node can reach it then).  Phase timings go to
# $SCRATCH/times/control-up.txt; state, configs and logs to $SCRATCH/control.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ "$(id -u)" = 0 ] || die "run as root"
[ -x "$VENV/bin/nova-manage" ] || die "no venv at $VENV (openstack/install-env.sh $VENV)"
[ -d "$CTL/mysql" ] && die "$CTL exists: run down.sh --purge first"

rm -f "$TIMES/control-up.txt"
T_ALL=$(now)
load_secrets
mkdir -p "$CTL"/{etc,log,state,run} "$PIDS"
for s in keystone glance placement nova neutron; do mkdir -p "$CTL/etc/$s" "$CTL/state/$s/lock"; done

# --- phase: network namespaces ---------------------------------------------
t=$(now)
if [ -n "$CTL_NS" ]; then
  node_ns_up "$CTL_NS" "$CTL_IP" v-ctl
fi
record netns "$t"

# --- phase: configs ----------------------------------------------------------
t=$(now)
V=(
  "db_port=$DB_PORT" "rabbit_port=$RABBIT_PORT" "glance_port=$GLANCE_PORT"
  "rabbit_password=$RABBIT_PASSWORD" "log_dir=$CTL/log"
)
render mariadb.cnf "$CTL/etc/mariadb.cnf" "${V[@]}" \
  "datadir=$CTL/mysql" "socket=$CTL/run/mysqld.sock" "pidfile=$CTL/run/mysqld.pid"
for s in keystone placement nova neutron; do
  render "$s.conf" "$CTL/etc/$s/$s.conf" "${V[@]}" \
    "state_dir=$CTL/state/$s" "conf_dir=$CTL/etc/$s"
done
render glance-api.conf "$CTL/etc/glance/glance-api.conf" "${V[@]}" \
  "state_dir=$CTL/state/glance" "conf_dir=$CTL/etc/glance"
render ml2_conf.ini "$CTL/etc/neutron/ml2_conf.ini"
render clouds.yaml "$CTL/clouds.yaml"
# Paste pipelines shipped in the venv, used unchanged.
cp "$VENV/etc/glance/glance-api-paste.ini" "$CTL/etc/glance/"
cp "$VENV/etc/nova/api-paste.ini" "$CTL/etc/nova/"
cp "$VENV/etc/neutron/api-paste.ini" "$CTL/etc/neutron/"
record configs "$t"

# --- phase: MariaDB + RabbitMQ (started together) -----------------------------
t=$(now)
mariadb-install-db --defaults-file="$CTL/etc/mariadb.cnf" --user=root \
  --auth-root-authentication-method=normal --skip-test-db >"$CTL/log/mariadb-install.log" 2>&1 \
  || die "mariadb-install-db failed: $CTL/log/mariadb-install.log"
start mariadb "$CTL_NS" "$CTL/log/mariadbd.out" mariadbd --defaults-file="$CTL/etc/mariadb.cnf"

R="$CTL/rabbitmq"
mkdir -p "$R/mnesia" "$R/log" "$R/home"
extra=""
[ -n "$CTL_NS" ] && extra="listeners.tcp.2 = $CTL_IP:$RABBIT_PORT"
render rabbitmq.conf "$R/rabbitmq.conf" "${V[@]}" "extra_listener=$extra" "log_dir=$R/log"
echo '[].' >"$R/enabled_plugins"
# Everything the node reads or writes must belong to rabbitmq (eacces otherwise).
chown -R rabbitmq:rabbitmq "$R"
# `ip netns exec` first, then drop to user rabbitmq (setpriv keeps our env).
# ERL_EPMD_PORT moves epmd off 4369; epmd and Erlang distribution (only
# rabbitmqctl would use them) listen on 127.0.0.1 only.  epmd is forked by the
# Erlang VM and survives it: down.sh stops it by the pid recorded below.
start rabbitmq "$CTL_NS" "$CTL/log/rabbitmq.out" \
  env HOME="$R/home" RABBITMQ_NODENAME=rabbit@localhost \
      RABBITMQ_CONF_ENV_FILE=/dev/null RABBITMQ_CONFIG_FILE="$R/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$R/enabled_plugins" RABBITMQ_MNESIA_BASE="$R/mnesia" \
      RABBITMQ_LOG_BASE="$R/log" RABBITMQ_PID_FILE="$R/rabbit.pid" \
      RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" ERL_EPMD_PORT="$EPMD_PORT" \
      RABBITMQ_NODE_PORT="$RABBIT_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
  setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
  /usr/lib/rabbitmq/bin/rabbitmq-server
# Time RabbitMQ's own start-up in the background (its wait overlaps the rest).
( wait_tcp "$CTL_NS" 127.0.0.1 "$RABBIT_PORT" 90 rabbitmq && record rabbitmq_ready "$t" ) &
rabbit_timer=$!

wait_tcp "$CTL_NS" 127.0.0.1 "$DB_PORT" 60 mariadb
record mariadb_ready "$t"
dbs="keystone glance placement nova_api nova nova_cell0 neutron"
{
  for d in $dbs; do echo "CREATE DATABASE IF NOT EXISTS $d CHARACTER SET utf8mb4;"; done
  echo "CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';"
  echo "CREATE USER IF NOT EXISTS 'openstack'@'localhost' IDENTIFIED BY '$DB_PASSWORD';"
  for d in $dbs; do
    echo "GRANT ALL PRIVILEGES ON $d.* TO 'openstack'@'127.0.0.1';"
    echo "GRANT ALL PRIVILEGES ON $d.* TO 'openstack'@'localhost';"
  done
} | nsx "$CTL_NS" mariadb --defaults-file="$CTL/etc/mariadb.cnf" -uroot
record databases "$t"

# --- phase: Keystone ---------------------------------------------------------
t=$(now)
KC=(--config-file "$CTL/etc/keystone/keystone.conf")
{
  nsx "$CTL_NS" keystone-manage "${KC[@]}" db_sync
  nsx "$CTL_NS" keystone-manage "${KC[@]}" fernet_setup --keystone-user root --keystone-group root
  nsx "$CTL_NS" keystone-manage "${KC[@]}" credential_setup --keystone-user root --keystone-group root
  nsx "$CTL_NS" keystone-manage "${KC[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
    --bootstrap-admin-url "$KEYSTONE_URL" --bootstrap-internal-url "$KEYSTONE_URL" \
    --bootstrap-public-url "$KEYSTONE_URL" --bootstrap-region-id "$REGION"
} >>"$CTL/log/keystone-manage.log" 2>&1 || die "keystone-manage failed: $CTL/log/keystone-manage.log"
record keystone_db "$t"
t=$(now)
gunicorn_start keystone keystone.wsgi.api:application "$KEYSTONE_PORT" "$KEYSTONE_WORKERS" \
  OS_KEYSTONE_CONFIG_DIR="$CTL/etc/keystone"
wait_http "$CTL_NS" "http://$API_HOST:$KEYSTONE_PORT/v3" 90 keystone
record keystone_up "$t"

# --- phase: other databases (in the background, while identity is filled) ---
t=$(now)
(
  set -e
  t1=$(now)
  nsx "$CTL_NS" glance-manage --config-file "$CTL/etc/glance/glance-api.conf" db_sync >"$CTL/log/glance-manage.log" 2>&1
  record "  glance_db_sync" "$t1"; t1=$(now)
  nsx "$CTL_NS" placement-manage --config-file "$CTL/etc/placement/placement.conf" db sync >"$CTL/log/placement-manage.log" 2>&1
  record "  placement_db_sync" "$t1"; t1=$(now)
  NC=(--config-file "$CTL/etc/nova/nova.conf")
  {
    nsx "$CTL_NS" nova-manage "${NC[@]}" api_db sync
    nsx "$CTL_NS" nova-manage "${NC[@]}" cell_v2 map_cell0
    nsx "$CTL_NS" nova-manage "${NC[@]}" cell_v2 create_cell --name cell1 --verbose
    nsx "$CTL_NS" nova-manage "${NC[@]}" db sync
  } >"$CTL/log/nova-manage.log" 2>&1
  record "  nova_db_syncs_cells" "$t1"; t1=$(now)
  nsx "$CTL_NS" neutron-db-manage --config-file "$CTL/etc/neutron/neutron.conf" \
    --config-file "$CTL/etc/neutron/ml2_conf.ini" upgrade heads >"$CTL/log/neutron-db-manage.log" 2>&1
  record "  neutron_db_manage" "$t1"
) &
dbsync_pid=$!

t2=$(now)
nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" GLANCE_PORT="$GLANCE_PORT" \
  PLACEMENT_PORT="$PLACEMENT_PORT" NOVA_PORT="$NOVA_PORT" NEUTRON_PORT="$NEUTRON_PORT" \
  python3 "$OS_DEV_DIR/bootstrap_cloud.py" identity "$API_HOST" "$SERVICE_PASSWORD" \
  >"$CTL/log/bootstrap-identity.log" 2>&1 || die "identity bootstrap failed: $CTL/log/bootstrap-identity.log"
record identity "$t2"
wait "$dbsync_pid" || die "a db sync failed: see $CTL/log/*-manage.log"
record db_syncs "$t"

# --- phase: API services and daemons ------------------------------------------
t=$(now)
gunicorn_start glance glance.wsgi.api:application "$GLANCE_PORT" "$API_WORKERS" \
  OS_GLANCE_CONFIG_DIR="$CTL/etc/glance"
gunicorn_start placement placement.wsgi.api:application "$PLACEMENT_PORT" "$API_WORKERS" \
  OS_PLACEMENT_CONFIG_DIR="$CTL/etc/placement"
# Only OS_NOVA_CONFIG_DIR: OS_NOVA_CONFIG_FILES' first entry is the paste file.
gunicorn_start nova-api nova.wsgi.osapi_compute:application "$NOVA_PORT" "$API_WORKERS" \
  OS_NOVA_CONFIG_DIR="$CTL/etc/nova"
gunicorn_start neutron-api neutron.wsgi.api:application "$NEUTRON_PORT" "$API_WORKERS" \
  OS_NEUTRON_CONFIG_DIR="$CTL/etc/neutron" OS_NEUTRON_CONFIG_FILES="neutron.conf;ml2_conf.ini"
start neutron-rpc-server "$CTL_NS" "$CTL/log/neutron-rpc-server.log" \
  neutron-rpc-server --config-file "$CTL/etc/neutron/neutron.conf" --config-file "$CTL/etc/neutron/ml2_conf.ini"
start nova-conductor "$CTL_NS" "$CTL/log/nova-conductor.log" nova-conductor --config-file "$CTL/etc/nova/nova.conf"
start nova-scheduler "$CTL_NS" "$CTL/log/nova-scheduler.log" nova-scheduler --config-file "$CTL/etc/nova/nova.conf"

wait "$rabbit_timer" || die "RabbitMQ did not come up: $CTL/rabbitmq/log, $CTL/log/rabbitmq.out"
# epmd: forked by the Erlang VM with our ERL_EPMD_PORT in its environment.
epmd_pid=""
for _ in $(seq 50); do
  for p in $(pgrep -x epmd); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "ERL_EPMD_PORT=$EPMD_PORT" && epmd_pid=$p
  done
  [ -n "$epmd_pid" ] && break; sleep 0.1
done
if [ -n "$epmd_pid" ]; then echo "$epmd_pid" >"$PIDS/epmd.pid"; else log "WARNING: epmd pid not found"; fi

wait_http "$CTL_NS" "http://$API_HOST:$GLANCE_PORT/" 120 glance
wait_http "$CTL_NS" "http://$API_HOST:$PLACEMENT_PORT/" 120 placement
wait_http "$CTL_NS" "http://$API_HOST:$NOVA_PORT/" 120 nova-api
wait_http "$CTL_NS" "http://$API_HOST:$NEUTRON_PORT/" 120 neutron-api
record apis_up "$t"

# --- phase: cloud resources ---------------------------------------------------
t=$(now)
nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" \
  python3 "$OS_DEV_DIR/bootstrap_cloud.py" resources \
  >"$CTL/log/bootstrap-resources.log" 2>&1 || die "resources bootstrap failed: $CTL/log/bootstrap-resources.log"
record resources "$t"

record total "$T_ALL"
log "control plane up in ${CTL_NS:-the current namespace}; clouds.yaml: $CTL/clouds.yaml"
