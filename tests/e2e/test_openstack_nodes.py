"""Day two for nodes, on the real cloud: one cloud for the module (a control
that is also the network node, two computes on Nova's libvirt driver, each a
microstackd in its own network namespace with the real OpenStack), exactly
the CLI an operator types.

In order, the destructive ones last: ``remove`` refuses a compute that
still hosts two instances and changes nothing; ``drain`` moves both live
(libvirtd to libvirtd over TLS with the nodes' certificates, QEMU's own TLS
for memory and disks, no shared storage) to the other compute, where they
end ACTIVE, and ``undrain`` opens the host again; then the other compute
is lost (its daemon and services stop) and its drain evacuates both back;
then that compute's state directory is wiped too (the machine reinstalled),
it is removed with ``--force``, which tells the remaining compute's
libvirtd to refuse its certificate and takes away everything the cloud
held for the host (its nova-compute service, compute node, Placement
resource provider and Neutron agents: each checked through the APIs), and
the fresh machine rejoins under the same name and receives a new instance.

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
from tests.e2e.test_openstack import Cloud, _join_all, _launch, _start, osc_json, qemu_pids

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


def test_remove_refuses_a_compute_that_still_hosts_instances(cloud: Cloud) -> None:
    _launch(cloud, "vm-a", "node-1")
    _launch(cloud, "vm-b", "node-1")
    before = node_of(cloud.control.status(), "node-1")

    refused = cloud.ctl("remove", "node-1", timeout=300)
    assert refused.returncode == EXIT_ERROR, refused.stdout + refused.stderr
    assert "node-1 still hosts 2 instance(s): vm-" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr, refused.stderr
    # Nothing changed: the node, its guests, its place in Nova.
    after = node_of(cloud.control.status(), "node-1")
    assert (after["state"], after["cert_serial"]) == (before["state"], before["cert_serial"])
    assert len(qemu_pids(cloud.computes["node-1"])) == 2
    assert sorted(held(cloud, "node-1")["servers"]) == ["vm-a", "vm-b"]


def test_drain_moves_both_instances_live_to_the_other_compute(cloud: Cloud) -> None:
    node1, node2 = cloud.computes["node-1"], cloud.computes["node-2"]
    started = time.monotonic()
    drained = cloud.ctl("drain", "node-1", "--instance-timeout", "400", timeout=1200)
    cloud.timings["drain_two_live_s"] = round(time.monotonic() - started, 1)
    assert drained.returncode == 0, drained.stdout + drained.stderr + _nova_logs(cloud)
    out = drained.stdout
    assert "nova-compute on node-1 disabled" in out, out
    assert "live migration over TLS started" in out, out
    for name in ("vm-a", "vm-b"):
        assert f"{name}  live to node-2  ACTIVE" in out, out
    assert "node-1 is drained: 2 instance(s) moved, none left" in out, out
    servers = osc_json(cloud.control, "server", "list", "--all-projects", "--long")
    assert {(s["Name"], s["Host"], s["Status"]) for s in servers} == {
        ("vm-a", "node-2", "ACTIVE"),
        ("vm-b", "node-2", "ACTIVE"),
    }, servers
    assert qemu_pids(node1) == [] and len(qemu_pids(node2)) == 2
    nova = node_of(cloud.control.status(), "node-1")["nova"]
    assert nova["drained"] and "disabled" in nova["compute_service"], nova
    assert "drained" in cloud.ctl("status").stdout
    # Again: nothing left to move.
    again = cloud.ctl("drain", "node-1", "--format", "json", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == {"node": "node-1", "moved": []}

    opened = cloud.ctl("undrain", "node-1")
    assert opened.returncode == 0 and "enabled" in opened.stdout, opened.stdout + opened.stderr
    assert not node_of(cloud.control.status(), "node-1")["nova"]["drained"]
    measure(nodes_cloud=cloud.timings)


def _client_pki(host: Host) -> Path:
    """A copy of ``host``'s key, certificate and CA as libvirt's client wants them."""
    assert host.state_dir is not None
    pki = host.workdir.parent / f"{host.name}-old-pki"
    pki.mkdir(exist_ok=True)
    for name, source in (("cacert.pem", "ca.crt"), ("clientcert.pem", "node.crt"),
                         ("clientkey.pem", "node.key")):  # fmt: skip
        shutil.copy(host.state_dir / "tls" / source, pki / name)
    return pki


def _virsh_hostname(client: Host, server: Host, pki: Path) -> tuple[int, str]:
    """``virsh hostname`` on ``server``'s libvirtd over TLS, from ``client``'s namespace."""
    uri = f"qemu+tls://{server.address}/system?pkipath={pki}"
    result = client.run(["virsh", "-c", uri, "hostname"], timeout=60)
    return result.returncode, result.stdout.strip()


def _wipe(host: Host) -> None:
    """The machine is reinstalled: its daemon and everything it kept are gone."""
    assert host.state_dir is not None and host.socket is not None
    host.stop_daemon(timeout=120)  # a no-op when it is stopped already
    for path in (host.state_dir, host.workdir / "etc", host.socket.with_suffix(".services")):
        shutil.rmtree(path, ignore_errors=True)


def test_drain_of_a_compute_that_is_gone_evacuates_its_instances(cloud: Cloud) -> None:
    """node-2 (hosting vm-a and vm-b since the drain above) is lost: its
    daemon and every service stop. Its drain rebuilds both on node-1."""
    node2 = cloud.computes["node-2"]
    cloud.timings["node_stop_s"] = _timed(lambda: node2.stop_daemon(timeout=120))
    assert qemu_pids(node2) == []
    started = time.monotonic()
    drained = cloud.ctl("drain", "node-2", "--instance-timeout", "400", timeout=1200)
    cloud.timings["drain_two_evacuated_s"] = round(time.monotonic() - started, 1)
    assert drained.returncode == 0, drained.stdout + drained.stderr + _nova_logs(cloud)
    out = drained.stdout
    assert "node-2 cannot be reached" in out and "taken as down" in out, out
    assert "forced down" in out, out
    for name in ("vm-a", "vm-b"):
        assert f"{name}  evacuated to node-1  ACTIVE" in out, out
    servers = osc_json(cloud.control, "server", "list", "--all-projects", "--long")
    assert {(s["Name"], s["Host"], s["Status"]) for s in servers} == {
        ("vm-a", "node-1", "ACTIVE"),
        ("vm-b", "node-1", "ACTIVE"),
    }, servers
    assert len(qemu_pids(cloud.computes["node-1"])) == 2
    measure(nodes_cloud=cloud.timings)


def _timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return round(time.monotonic() - started, 1)


def test_a_compute_reinstalled_rejoins_under_its_name_and_gets_a_new_instance(
    cloud: Cloud, openstack_prefix: Path
) -> None:
    control, node2 = cloud.control, cloud.computes["node-2"]
    was = held(cloud, "node-2")
    assert len(was["services"]) == len(was["hypervisors"]) == len(was["providers"]) == 1, was
    assert "neutron-openvswitch-agent" in was["agents"], was

    # node-2's certificate reaches node-1's libvirtd over TLS (the migration
    # transport), kept aside as a client's pkipath before the machine is wiped.
    node1 = cloud.computes["node-1"]
    pki = _client_pki(node2)
    assert _virsh_hostname(node2, node1, pki) == (0, "node-1")

    _wipe(node2)
    removed = cloud.ctl("remove", "node-2", "--force", timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    message = removed.stdout
    assert "node-2 removed" in message and "removed by force" in message, message
    assert "Nova compute service on node-2 deleted" in message, message
    assert "1 Neutron agent(s) deleted" in message, message
    # The removal told node-1: its libvirtd refuses node-2's certificate now.
    assert "1 other compute(s) refuse its certificate from now on" in message, message
    code, _out = _virsh_hostname(node2, node1, pki)
    assert code != 0
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
        data, elapsed = _launch(cloud, "vm-c", "node-2")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_nova_logs(cloud)}") from None
    cloud.timings["launch_after_rejoin_s"] = round(elapsed, 1)
    assert data["host"] == "node-2"
    assert len(qemu_pids(node2)) == 1
    measure(nodes_cloud=cloud.timings)
