#!/usr/bin/env bash
# A real MicroStack cluster on this machine: a control and two computes, each
# in its own network namespace, init and joins streamed live, then a
# real instance launched on node-1, `ssh cirros@FLOATING_IP uname -a`, then
# `status`. Run as root.
#   ./scripts/demo.sh            with the real OpenStack (creates its environment once)
#   ./scripts/demo.sh --light    without OpenStack (stand-in services), in seconds
#   ./scripts/demo.sh --keep     leave the cluster running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
