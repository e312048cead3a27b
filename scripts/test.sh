#!/usr/bin/env bash
# The whole test suite: lint, types, the fast suites, then the end-to-end
# suites (real daemons in network namespaces). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== buf lint (protos)"
bash scripts/lint-protos.sh
echo "== unit and integration tests"
.venv/bin/python -m pytest -p no:cacheprovider -m "not e2e and not openstack" tests/unit tests/integration
echo "== end-to-end tests"
.venv/bin/python -m pytest -p no:cacheprovider -m "e2e and not openstack" tests/e2e
echo "== machines: every node a container with systemd as PID 1 (microstackd as a system service)"
.venv/bin/python -m pytest -p no:cacheprovider -m machines tests/e2e/machines
echo "== OpenStack end-to-end tests (a real control plane and computes in namespaces)"
.venv/bin/python -m pytest -p no:cacheprovider -m openstack tests/e2e
