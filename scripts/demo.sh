#!/usr/bin/env bash
# A real cluster on this machine: one control and two compute daemons on
# loopback addresses, the control initialised and both computes joined with
# the cluster password, enrolment streamed live, then `status`.
#   ./scripts/demo.sh          run it, then stop every daemon it started
#   ./scripts/demo.sh --keep   leave the cluster running
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

DIR=${DEMO_DIR:-$PWD/demo-state}
PORT=${DEMO_PORT:-10002}
BIN=$PWD/.venv/bin
if [ -e "$DIR" ]; then
    if [ -f "$DIR/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DIR/pids"
        sleep 0.5
    fi
    rm -rf "$DIR"
fi
mkdir -p "$DIR"
umask 077
head -c 18 /dev/urandom | base64 > "$DIR/password"

cleanup() {
    if [ "$KEEP" = 0 ] && [ -f "$DIR/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DIR/pids"
        wait 2>/dev/null || true
        echo "demo: stopped every daemon; state left in $DIR"
    fi
}
trap cleanup EXIT

start() {  # name address
    "$BIN/microstackd" --state-dir "$DIR/$1" --socket "$DIR/$1.sock" \
        --listen "$2:$PORT" --node-name "$1" \
        --service-manager process --config-root "$DIR/$1/etc" >"$DIR/$1.log" 2>&1 &
    echo $! >> "$DIR/pids"
    for _ in $(seq 100); do [ -S "$DIR/$1.sock" ] && return 0; sleep 0.1; done
    echo "demo: $1 did not start; its log:" >&2; cat "$DIR/$1.log" >&2; exit 1
}

ctl() { local node=$1; shift; "$BIN/microstackctl" --socket "$DIR/$node.sock" "$@"; }

echo "== starting three daemons: ctl (127.0.0.1), node-1 (127.0.0.2), node-2 (127.0.0.3)"
start ctl 127.0.0.1
start node-1 127.0.0.2
start node-2 127.0.0.3
echo
echo "== microstackctl init --role control (on ctl)"
ctl ctl init --role control --address 127.0.0.1 --password-file "$DIR/password"
for n in 1 2; do
    echo
    echo "== microstackctl join 127.0.0.1 (on node-$n)"
    ctl "node-$n" join 127.0.0.1:$PORT --password-file "$DIR/password" --address "127.0.0.$((n + 1))"
done
echo
echo "== microstackctl status (on ctl)"
ctl ctl status
if [ "$KEEP" = 1 ]; then
    echo
    echo "The cluster keeps running. Try:"
    echo "  $BIN/microstackctl --socket $DIR/node-1.sock status --format json"
    echo "Stop it with: kill \$(cat $DIR/pids)"
fi
