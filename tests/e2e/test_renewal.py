"""Certificates that renew themselves, with real daemons and lifetimes of
seconds: a control and two computes whose certificates renew several times
while heartbeats and ``status`` keep working; the old serial refused once
the new one is in use; a compute off for longer than its certificate had
left comes back under its name with a join token."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandbox.netns import Cluster, Host, Network, init_control, join, wait_for

pytestmark = pytest.mark.e2e

#: Certificates live 16 s and renew with 10 s left (every ~6 s, looked at
#: every 1.25 s); heartbeats every 2 s.
FLAGS = (
    "--cert-lifetime", "16s", "--bootstrap-cert-lifetime", "20s", "--renew-before", "10s",
    "--unreachable-after", "6",
)  # fmt: skip


@pytest.fixture
def short_lived(network: Network, password_file: Path) -> Cluster:
    control = network.add_host("control")
    control.start_daemon("control", extra_args=FLAGS)
    init_control(control, password_file)
    result = Cluster(network, control, [])
    for name in ("compute1", "compute2"):
        host = network.add_host(name)
        host.start_daemon(name, extra_args=FLAGS)
        result.joins[name] = join(host, control, password_file)
        result.computes.append(host)
    return result


def _nodes(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in status["nodes"]}


def _log(host: Host) -> str:
    assert host.log_path is not None
    return host.log_path.read_text(errors="replace")


#: Run inside a compute's namespace: one heartbeat to the control with the
#: key and certificate given; prints the gRPC status code's name.
_CALL = """
import asyncio, sys
from microstackd.model import ClusterRecord, NodeCredentials, Role, Software
from microstackd.peers.cluster import ControlClient
from microstackd import errors, versions
key, cert, ca, address, port = sys.argv[1:]
creds = NodeCredentials(open(key, "rb").read(), open(cert, "rb").read(), open(ca, "rb").read())
cluster = ClusterRecord("x", Role.COMPUTE, "control", address, 0, int(port), "", 0.0)
async def main():
    client = ControlClient(cluster, creds)
    try:
        await client.heartbeat([], Software(versions.VERSION, versions.API_VERSION))
        print("accepted")
    except errors.MicrostackError as exc:
        print(type(exc).__name__, exc.message)
    finally:
        await client.close()
asyncio.run(main())
"""


def _heartbeat_with(host: Host, key: Path, cert: Path, control: Host) -> str:
    cluster_port = str(control.status()["cluster"]["cluster_port"])
    ca = host.state_dir / "tls" / "ca.crt"  # type: ignore[operator]
    result = host.run(
        [sys.executable, "-c", _CALL, str(key), str(cert), str(ca), control.address, cluster_port],
        timeout=30,
    )
    return str(result.stdout + result.stderr).strip()


def test_certificates_renew_several_times_while_the_cluster_keeps_working(
    short_lived: Cluster, tmp_path: Path
) -> None:
    control, computes = short_lived.control, short_lived.computes
    first = computes[0]
    assert first.state_dir is not None
    old_key, old_cert = tmp_path / "old.key", tmp_path / "old.crt"
    old_key.write_bytes((first.state_dir / "tls" / "node.key").read_bytes())
    old_cert.write_bytes((first.state_dir / "tls" / "node.crt").read_bytes())
    joined_serial = _nodes(control.status())["compute1"]["cert_serial"]
    wait_for(
        lambda: _nodes(control.status())["compute1"]["cert_serial"] != joined_serial,
        20,
        "compute1's renewed certificate in use",
        interval=0.2,
    )
    # The certificate it joined with is still valid (a few seconds are left
    # of it), but the renewed one is in use: it is refused.
    answer = _heartbeat_with(first, old_key, old_cert, control)
    assert "PermissionDenied" in answer and "revoked" in answer, answer

    serials: dict[str, set[str]] = {}
    bootstrap: set[str] = set()
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        status = control.status()  # answers throughout
        bootstrap.add(status["local"]["bootstrap_fingerprint"])
        for name, node in _nodes(status).items():
            assert node["state"] == "active", status  # never unreachable nor warning
            serials.setdefault(name, set()).add(node["cert_serial"])
        relayed = computes[1].status()  # relayed from the control over (renewed) mTLS
        assert _nodes(relayed)["compute2"]["state"] == "active", relayed
        if min(len(s) for s in serials.values()) >= 4 and len(bootstrap) >= 2:
            break
        time.sleep(1)
    assert all(len(s) >= 4 for s in serials.values()), serials  # three renewals each at least
    assert len(bootstrap) >= 2, bootstrap

    for host in (control, *computes):
        log = _log(host)
        own = f"logger=microstackd.member.renewal msg='certificate renewed' node={host.node_name} "
        assert log.count(own) >= 3, host.daemon_log(80)
        assert "msg='bootstrap certificate renewed'" in log, host.daemon_log(80)
        assert "renewal failed" not in log, host.daemon_log(80)
    assert _log(control).count("msg='renewed certificate in use' node=compute1 ") >= 3

    # Heartbeats kept coming: every compute was seen within the last 4 s.
    for host in computes:
        node = _nodes(control.status())[host.node_name or ""]
        seen = datetime.fromisoformat(node["last_seen"])
        assert datetime.now(UTC) - seen < timedelta(seconds=4), node

    # The one in use now is accepted.
    now_key, now_cert = first.state_dir / "tls" / "node.key", first.state_dir / "tls" / "node.crt"
    assert _heartbeat_with(first, now_key, now_cert, control) == "accepted"

    # The compute's cluster port presents its renewed certificate (the
    # control's calls to its agent): a removal reaches the agent and stops it.
    removed = control.ctl("remove", "compute2", "--format", "json")
    assert "services were stopped" in json.loads(removed.stdout)["message"], removed.stdout


def test_a_compute_off_past_its_expiry_comes_back_under_its_name(
    short_lived: Cluster,
) -> None:
    control, compute = short_lived.control, short_lived.computes[0]
    compute.stop_daemon()
    wait_for(
        lambda: _nodes(control.status())["compute1"]["state"] == "warning",
        30,
        "compute1 shown warning (certificate not renewed)",
        interval=0.5,
    )
    wait_for(
        lambda: "expired" in _nodes(control.status())["compute1"]["message"],
        30,
        "compute1's certificate expired",
        interval=0.5,
    )
    table = control.ctl("status").stdout
    assert "warning" in table and "microstackctl add-node compute1" in table, table

    compute.start_daemon("compute1", extra_args=FLAGS)
    wait_for(lambda: "certificate expired at" in _log(compute), 15, "the compute's expiry notice")
    token = json.loads(control.ctl("add-node", "compute1", "--format", "json").stdout)["token"]
    rejoined = compute.ctl("join", "--token", token, "--address", compute.address, timeout=90)
    assert "done" in rejoined.stdout.lower(), rejoined.stdout
    node = _nodes(control.status())["compute1"]
    assert (node["state"], node["address"]) == ("active", compute.address), node
    assert _nodes(compute.status())["compute1"]["state"] == "active"
