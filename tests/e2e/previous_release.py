"""Test helper: put a compute back in the state the release before per-node
credentials (before commit 6d8ea8d) left it, so that the migration path
(``reconfigure`` giving it its own, control/reconfigure.py) can be tried on
a real cloud.

That release rendered every compute with control.yaml's shared RabbitMQ
user and service-user passwords, and made no ``compute-NODE`` user. Run on
the control, inside its namespace, as

    python -m tests.e2e.previous_release STATE_DIR NODE

it does what that release's issue-config and configure-node did, with the
product's own code: ``issue_compute_settings`` without the node's own
accounts (the shared path, still the one a control without its own
control plane takes) applied through the node's agent with the control's
identity, exactly as an enrolment does. The test then deletes the
``compute-NODE`` users and the control's record of them (never made by that
release), with rabbitmqctl and openstack: ``forget_own_accounts`` below.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from microstackd.control import config as control_config
from microstackd.model import Role
from microstackd.peers.cluster import AgentClient
from microstackd.store import Store
from microstackd.store.files import CA_CERT, CA_KEY
from microstackd.trust import x509


async def render_shared(state_dir: Path, node_name: str) -> str:
    store = Store(state_dir)
    cluster = store.cluster()
    node = store.node(node_name)
    assert cluster is not None and node is not None, (cluster, node_name)
    config = control_config.ensure(state_dir / "control.yaml", cluster.control_address)
    key, cert = store.read_file(CA_KEY), store.read_file(CA_CERT)
    assert key is not None and cert is not None
    crl = x509.revocation_list(
        x509.CertificateAuthority.from_pem(key, cert), store.revoked_serials(), datetime.now(UTC)
    )
    settings = control_config.issue_compute_settings(
        config, node, revocation_list=crl.decode(), own=None
    )
    client = AgentClient(node, store.credentials())
    store.close()
    try:
        async for step in client.apply_role(Role.COMPUTE.value, settings):
            if step.final:
                return f"{step.state.value}: {step.message}"
    finally:
        await client.close()
    raise AssertionError(f"the agent of {node_name} ended its stream without a result")


if __name__ == "__main__":
    print(json.dumps({"applied": asyncio.run(render_shared(Path(sys.argv[1]), sys.argv[2]))}))
