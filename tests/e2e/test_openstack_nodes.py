"""Day two for nodes, on the real cloud: one cloud for the module (a control
that is also the network node, two computes on Nova's libvirt driver, each a
microstackd in its own network namespace with the real OpenStack), exactly
the CLI an operator types.

In order, the destructive ones last: ``remove`` refuses a compute that
still hosts an instance and changes nothing; then a compute is lost with
its state directory (the machine reinstalled), removed with ``--force``,
which takes away everything the cloud held for the host (its nova-compute
service, compute node, Placement resource provider and Neutron agents:
each checked through the APIs), and the fresh machine rejoins under the
same name and receives a new instance.

Slow (minutes): marked ``openstack`` and ``e2e``, as tests/e2e/test_openstack.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microstackd.node import testimage
from sandbox import netns
from sandbox.netns import Host, Network, clean_env
from sandbox.openstack_env import PREFIX, measure
from tests.e2e.conftest import NETWORKS, PASSWORD
from tests.e2e.test_openstack import Cloud, _join_all, _launch, _start, osc, qemu_pids

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.timeout(1800)]

EXIT_ERROR = 1

#: What the cloud holds for a host, read through openstacksdk in the
#: control's namespace (the OpenStack environment's own Python): Placement
#: has no command in this openstackclient.
HELD = """
import json, sys
import openstack
host = sys.argv[1]
conn = openstack.connect(cloud="microstack")
print(json.dumps({
    "services": [s.id for s in conn.compute.services(binary="nova-compute") if s.host == host],
    "hypervisors": [h.id for h in conn.compute.hypervisors(details=True)
                    if ((h.service_details or {}).get("host") or h.name) == host],
    "providers": [p.id for p in conn.placement.resource_providers() if p.name == host],
    "agents": [a.binary for a in conn.network.agents() if a.host == host],
    "servers": [s.name for s in conn.compute.servers(all_projects=True, details=True)
                if s.compute_host == host],
}))
"""


def held(cloud: Cloud, host: str) -> dict[str, list[str]]:
    control = cloud.control
    assert control.state_dir is not None
    result = control.run(
        [str(PREFIX / "bin" / "python"), "-c", HELD, host],
        env=clean_env({"OS_CLIENT_CONFIG_FILE": str(control.state_dir / "clouds.yaml")}),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, list[str]] = json.loads(result.stdout)
    return data


def _nova_logs(cloud: Cloud, lines: int = 40) -> str:
    """The tails of the scheduler's, the conductor's and each nova-compute's log."""
    parts = []
    for host in (cloud.control, *cloud.computes.values()):
        assert host.state_dir is not None
        for name in ("nova-scheduler", "nova-conductor", "nova-compute", "placement"):
            log = host.state_dir / "logs" / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {host.name} {name}\n" + "\n".join(tail))
    return "\n".join(parts)


def node_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in status["nodes"] if n["name"] == name)
    return found


@pytest.fixture(scope="module")
def cloud(openstack_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    netns_reason = netns.unavailable_reason()
    if netns_reason is not None:
        pytest.skip(f"e2e needs network namespaces: {netns_reason}")
    testimage.build()  # the nodes' namespaces have no route to Debian's archive
    work = tmp_path_factory.mktemp("nodes")
    password_file = work / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    home = work / "home"
    home.mkdir()
    network = Network(work / "net")
    try:
        control = network.add_host("control")
        computes = {name: network.add_host(name.replace("-", "")) for name in ("node-1", "node-2")}
        result = Cloud(network, control, computes, password_file, home)
        _start(control, "control", openstack_prefix)
        started = time.monotonic()
        control.ctl(
            "init", "--role", "control", "--address", control.address,
            "--password-file", str(password_file), timeout=1200,
        )  # fmt: skip
        result.timings["control_init_s"] = round(time.monotonic() - started, 1)
        for name, host in computes.items():
            _start(host, name, openstack_prefix)
        _join_all(result)
        measure(nodes_cloud=result.timings)
        yield result
    finally:
        network.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> None:
    """A failed test's report carries the cloud's daemon logs (conftest's hook)."""
    if "cloud" in request.fixturenames:
        request.node.stash.setdefault(NETWORKS, []).append(request.getfixturevalue("cloud").network)


# ------------------------------------------------------------------ tests --


def test_remove_refuses_a_compute_that_still_hosts_an_instance(cloud: Cloud) -> None:
    _launch(cloud, "vm-a", "node-2")
    before = node_of(cloud.control.status(), "node-2")

    refused = cloud.ctl("remove", "node-2", timeout=300)
    assert refused.returncode == EXIT_ERROR, refused.stdout + refused.stderr
    assert "node-2 still hosts 1 instance(s): vm-a (ACTIVE)" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr, refused.stderr
    # Nothing changed: the node, its guest, its place in Nova.
    after = node_of(cloud.control.status(), "node-2")
    assert (after["state"], after["cert_serial"]) == (before["state"], before["cert_serial"])
    assert len(qemu_pids(cloud.computes["node-2"])) == 1
    assert held(cloud, "node-2")["servers"] == ["vm-a"]
    osc(cloud.control, "server", "delete", "--wait", "vm-a")


def _wipe(host: Host) -> None:
    """The machine is reinstalled: its daemon and everything it kept are gone."""
    assert host.state_dir is not None and host.socket is not None
    host.stop_daemon(timeout=120)
    for path in (host.state_dir, host.workdir / "etc", host.socket.with_suffix(".services")):
        shutil.rmtree(path, ignore_errors=True)


def test_a_compute_reinstalled_rejoins_under_its_name_and_gets_a_new_instance(
    cloud: Cloud, openstack_prefix: Path
) -> None:
    control, node2 = cloud.control, cloud.computes["node-2"]
    was = held(cloud, "node-2")
    assert len(was["services"]) == len(was["hypervisors"]) == len(was["providers"]) == 1, was
    assert "neutron-openvswitch-agent" in was["agents"], was

    _wipe(node2)
    removed = cloud.ctl("remove", "node-2", "--force", timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    message = removed.stdout
    assert "node-2 removed" in message and "removed by force" in message, message
    assert "Nova compute service on node-2 deleted" in message, message
    assert "1 Neutron agent(s) deleted" in message, message
    gone = held(cloud, "node-2")
    assert gone == {"services": [], "hypervisors": [], "providers": [], "agents": [],
                    "servers": []}, gone  # fmt: skip

    # The fresh machine joins under the same name and is a fresh compute to Nova.
    _start(node2, "node-2", openstack_prefix)
    started = time.monotonic()
    result = node2.ctl(
        "join", control.address, "--password-file", str(cloud.password_file),
        "--address", node2.address, timeout=900,
    )  # fmt: skip
    cloud.timings["rejoin_s"] = round(time.monotonic() - started, 1)
    assert "done" in result.stdout.lower(), result.stdout
    assert node_of(control.status(), "node-2")["state"] == "active"
    now = held(cloud, "node-2")
    assert len(now["services"]) == len(now["hypervisors"]) == len(now["providers"]) == 1, now
    assert now["services"] != was["services"] and now["providers"] != was["providers"], now

    try:
        data, elapsed = _launch(cloud, "vm-b", "node-2")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_nova_logs(cloud)}") from None
    cloud.timings["launch_after_rejoin_s"] = round(elapsed, 1)
    assert data["host"] == "node-2"
    assert len(qemu_pids(node2)) == 1
    measure(nodes_cloud=cloud.timings)
