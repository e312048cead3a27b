#!/usr/bin/env bash
# Smoke test of a running dev cloud: upload a tiny image, boot on a forced
# host until ACTIVE (port bound `ovs`), floating IP from `public`; then 3 at
# once; then a non-admin boot + delete (Nova's service token to Neutron);
# then delete the test servers and floating IPs.
#
#   openstack/dev/smoke.sh HOST         e.g. cmp1
#
# Timings (JSON lines) go to $SCRATCH/times/smoke.txt.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host=${1:?usage: smoke.sh HOST}
load_secrets
mkdir -p "$TIMES"
out="$TIMES/smoke.txt"; : >"$out"
ops() {
  nsx "$CTL_NS" env OS_CLIENT_CONFIG_FILE="$CTL/clouds.yaml" OS_CLOUD=microstack \
    python3 "$OS_DEV_DIR/cloudops.py" "$@" | tee -a "$out"
}
ops image
ops boot "$host" 1      # first boot after start-up (cold caches)
ops boot "$host" 1
ops boot "$host" 1
ops boot "$host" 3
ops demo-delete "$host"
# The CLI view, for the log.
osc server list --all-projects -c Name -c Status -c Host -c Networks --long >&2 || true
osc floating ip list -c "Floating IP Address" -c "Fixed IP Address" >&2
ops cleanup
log "smoke test passed on $host"
