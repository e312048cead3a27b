"""Day two for nodes, on the real cloud: one cloud for the module (a control
that is also the network node, two computes on Nova's libvirt driver, each a
microstackd in its own network namespace with the real OpenStack), exactly
the CLI an operator types.

In order, the destructive ones last: ``remove`` refuses a compute that
still hosts two instances and changes nothing; the cluster CA rotates under
the running cloud (every node's certificate re-issued, the old CA retired)
and each compute's libvirtd takes the new certificate and CA without a
restart, the guests untouched; ``drain`` (under the new CA) moves both live
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

import functools
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from microstackd.node import testimage
from sandbox import netns
from sandbox.guests import osc_json
from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, wait_for
from sandbox.openstack_env import PREFIX, measure
from tests.e2e.conftest import NETWORKS, PASSWORD
from tests.e2e.credentials import rendered_credentials, try_credentials
from tests.e2e.test_openstack import (
    Cloud,
    _join_all,
    _launch,
    _mariadb,
    _start,
    assert_rotated,
    qemu_pids,
    secrets_before_rotation,
)

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.timeout(1800)]

EXIT_ERROR = 1
#: What a compute's daemon logs when its libvirtd took a new certificate or CA.
RELOADED = "migration TLS credentials changed and reloaded by libvirtd"
#: Fault injection for the rotation test: the rotation pauses before this step.
PAUSED_AT = "control-files"
PAUSE = f"rotate-secrets.{PAUSED_AT}=900"

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


def _logged(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


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
        # The pause lets test_a_control_killed_mid_rotation... stop the
        # daemon between two steps; no other test here rotates secrets.
        control.start_daemon(
            "control",
            extra_args=["--openstack-prefix", str(openstack_prefix), "--step-delay", PAUSE],
        )
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


def test_a_ca_rotation_reaches_each_computes_libvirtd_and_leaves_the_guests_alone(
    cloud: Cloud,
) -> None:
    """libvirtd reads its TLS files only at start: unless the node has it
    reload them, after the rotation it still trusts only the retired CA and
    refuses every peer's new certificate (a live migration fails). The
    drain after this test migrates under the new CA."""
    control, node1, node2 = cloud.control, cloud.computes["node-1"], cloud.computes["node-2"]
    old_fp = control.status()["cluster"]["ca_fingerprint"]
    guests = qemu_pids(node1)
    assert len(guests) == 2
    started = time.monotonic()
    rotated = cloud.ctl("ca", "rotate", "--format", "json", timeout=600)
    cloud.timings["ca_rotate_s"] = round(time.monotonic() - started, 1)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    final = json.loads(rotated.stdout.splitlines()[-1])
    assert final["final"] and final["state"] == "done", rotated.stdout
    status = control.status()
    assert [c["state"] for c in status["cluster"]["cas"]] == ["signing"], status["cluster"]
    assert status["cluster"]["ca_fingerprint"] != old_fp
    assert all(n["state"] == "active" for n in status["nodes"]), status["nodes"]
    for host in (node1, node2):
        log = host.log_path
        assert log is not None
        wait_for(
            functools.partial(_logged, log, RELOADED),
            60,
            f"{host.name}'s libvirtd reloaded its TLS files",
        )
    # Each libvirtd accepts the other's certificate of the new CA, over TLS.
    assert _virsh_hostname(node1, node2, _client_pki(node1, "new-ca")) == (0, "node-2")
    assert _virsh_hostname(node2, node1, _client_pki(node2, "new-ca")) == (0, "node-1")
    assert qemu_pids(node1) == guests  # the guests kept their processes
    measure(nodes_cloud=cloud.timings)


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


def _client_pki(host: Host, name: str = "old") -> Path:
    """A copy of ``host``'s key, certificate and CA as libvirt's client wants them."""
    assert host.state_dir is not None
    pki = host.workdir.parent / f"{host.name}-{name}-pki"
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

    stolen = rendered_credentials(node2)  # what a thief of the machine would have kept
    _wipe(node2)
    removed = cloud.ctl("remove", "node-2", "--force", timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    message = removed.stdout
    assert "node-2 removed" in message and "removed by force" in message, message
    # Unreachable, removed by force: its own users are deleted all the same.
    assert "RabbitMQ user compute-node-2 deleted" in message, message
    assert "Keystone user compute-node-2 deleted" in message, message
    tried = try_credentials(node2, stolen)
    assert "ACCESS_REFUSED - Login was refused" in tried["rabbitmq"], tried
    assert tried["keystone"] == 401, tried
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
    # Its agent was deleted at the remove and made anew: the control's tunnel
    # to the same address follows (two fanouts that can cross: tunnels.py).
    assert "the control's tunnel to node-2 is up" in result.stdout, result.stdout
    assert node_of(control.status(), "node-2")["state"] == "active"
    # Under the same name, fresh credentials: the old ones stay refused.
    fresh = rendered_credentials(node2)
    assert fresh["rabbitmq_user"] == stolen["rabbitmq_user"] == "compute-node-2"
    assert fresh["url"] != stolen["url"]
    assert fresh["placement_password"] != stolen["placement_password"]
    assert try_credentials(node2, fresh)["keystone"] == 201
    tried = try_credentials(node2, stolen)
    assert "ACCESS_REFUSED" in tried["rabbitmq"] and tried["keystone"] == 401, tried
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


def _servers(cloud: Cloud) -> dict[str, tuple[str, str, str]]:
    """name -> (host, status, networks) as Nova lists them."""
    listed = osc_json(cloud.control, "server", "list", "--all-projects", "--long")
    return {s["Name"]: (s["Host"], s["Status"], json.dumps(s["Networks"], sort_keys=True))
            for s in listed}  # fmt: skip


def _computes_back(cloud: Cloud) -> bool:
    """Both computes active again, heard from, and Nova sees their services up."""
    nodes = {n["name"]: n for n in cloud.control.status()["nodes"]}
    return all(
        nodes[name]["state"] == "active"
        and (nodes[name].get("nova") or {}).get("compute_service", "").startswith("up")
        for name in cloud.computes
    )


def test_a_control_killed_mid_rotation_says_so_and_finishes_it(
    cloud: Cloud, openstack_prefix: Path
) -> None:
    """``rotate-secrets``, and the control's daemon SIGKILLed between two
    steps (paused before control-files by --step-delay: Keystone's, RabbitMQ's
    and MariaDB's passwords changed, the control plane's files not yet). The
    daemon restarted says at once, in its log and in ``status``, that the
    rotation is unfinished and the command that finishes it, and carries it
    on by itself; the operator's ``rotate-secrets`` follows it to the end;
    then the old passwords are refused and the cloud answers."""
    control = cloud.control
    assert control.state_dir is not None and control.log_path is not None
    old, old_clouds = secrets_before_rotation(control)
    rotation = control.popen(
        [MICROSTACKCTL, "--socket", str(control.socket), "rotate-secrets"],
        env=clean_env({"HOME": str(cloud.home)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: f"step=rotate-secrets.{PAUSED_AT}" in control.daemon_log(tail=50),
            600,
            f"the rotation to pause before {PAUSED_AT}",
            1,
        )
        started = time.monotonic()
        control.stop_daemon(signal.SIGKILL)
        out, _ = rotation.communicate(timeout=60)
    finally:
        rotation.kill()
    assert rotation.returncode != 0, out
    record = json.loads((control.state_dir / "rotate-secrets.json").read_text())
    assert record["done"] == ["service-users", "rabbitmq", "database"], record["done"]
    # Half rotated: MariaDB refuses the password control.yaml still holds.
    refused = _mariadb(control, old["database"]["password"])
    assert refused.returncode != 0 and "Access denied" in refused.stderr, refused

    control.start_daemon(
        "control", extra_args=["--openstack-prefix", str(openstack_prefix)], timeout=600
    )
    unfinished = control.status()["unfinished"]
    assert [u["operation"] for u in unfinished] == ["rotate-secrets"], unfinished
    assert unfinished[0]["command"] == "microstackctl rotate-secrets", unfinished
    message = unfinished[0]["message"]
    assert "is unfinished: done service-users, rabbitmq, database; left control-files" in message
    assert "being finished by this daemon since it started" in message, message
    table = control.ctl("status").stdout
    assert "UNFINISHED, finish it with `microstackctl rotate-secrets`" in table, table
    log = control.daemon_log(tail=400)
    assert "rotate-secrets unfinished: the secret rotation begun at" in log, log
    assert "carrying it on now (`microstackctl rotate-secrets` follows it" in log, log

    again = cloud.ctl("rotate-secrets", "--format", "json", timeout=1800)
    measure(rotate_secrets_killed_and_finished_s=round(time.monotonic() - started, 1))
    assert again.returncode == 0, again.stdout + again.stderr + control.daemon_log()
    steps = json.loads(again.stdout)["steps"]
    assert [(s["step"], s["result"]) for s in steps] == [
        ("service-users", "done"), ("rabbitmq", "done"), ("database", "done"),
        ("control-files", "done"), ("admin", "done"), ("computes", "done"),
    ], steps  # fmt: skip
    assert [s["message"] for s in steps[:3]] == ["done before"] * 3, steps
    assert not (control.state_dir / "rotate-secrets.json").exists()
    assert control.status()["unfinished"] == []
    assert "rotate-secrets carried on at start-up: finished" in control.daemon_log(tail=400)

    # The old passwords are refused, the recorded (new) ones work.
    new = yaml.safe_load((control.state_dir / "control.yaml").read_text())
    for section in ("database", "rabbitmq", "admin"):
        assert new[section]["password"] == record["secrets"][section], section
    assert_rotated(control, old, new, old_clouds)
    # The control plane runs on the new ones, and the computes still report to it.
    states = {s["name"]: s["state"] for s in node_of(control.status(), "control")["services"]}
    assert set(states.values()) == {"running"}, states
    wait_for(lambda: _computes_back(cloud), 300, "both computes up in Nova", 3)


def test_a_lost_control_is_restored_from_its_backup(
    cloud: Cloud, openstack_prefix: Path, tmp_path: Path
) -> None:
    """Backup of the running control (two computes, instances on them); the
    control machine is lost (its namespace and state destroyed), a fresh one
    with the same address restores the backup: the computes come back by
    themselves, every instance is listed on its host with its network, and
    a guest still answers ssh on its floating IP through the new control."""
    control = cloud.control
    if not _servers(cloud):  # run alone: one instance to find again
        _launch(cloud, "vm-r", "node-1")
    before = _servers(cloud)
    networks = {n["Name"] for n in osc_json(control, "network", "list")}
    members = {n["name"]: n["cert_serial"] for n in control.status()["nodes"]}

    archive = tmp_path / "control.backup"
    started = time.monotonic()
    made = cloud.ctl("backup", str(archive), "--format", "json", timeout=600)
    cloud.timings["backup_s"] = round(time.monotonic() - started, 1)
    assert made.returncode == 0, made.stdout + made.stderr
    result = json.loads(made.stdout)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert result["bytes"] == archive.stat().st_size
    names = {f["name"] for f in result["manifest"]["files"]}
    for name in ("state/microstackd.db", "state/tls/ca.key", "state/verifier.json",
                 "state/control.yaml", "openstack/databases.sql",
                 "openstack/rabbitmq-definitions.json",
                 # each compute's own OpenStack passwords (issue 16)
                 "state/node-accounts/node-1.json", "state/node-accounts/node-2.json"):  # fmt: skip
        assert name in names, sorted(names)
    assert any(n.startswith("openstack/glance/images/") for n in names), sorted(names)
    assert any(n.startswith("openstack/keystone/credential-keys/") for n in names), sorted(names)
    listed = cloud.ctl("backup", "--list", str(archive))
    assert listed.returncode == 0 and "every checksum matches" in listed.stdout, listed.stderr
    cloud.timings["backup_bytes"] = result["bytes"]

    # The control machine is lost: its daemon, services, namespace and state.
    assert control.state_dir is not None and control.socket is not None
    control.replace()
    # Its logs are kept aside (not restored) for a post-mortem of this run.
    shutil.move(control.state_dir / "logs", control.workdir / "lost-control-logs")
    for path in (control.state_dir, control.workdir / "etc",
                 control.socket.with_suffix(".services")):  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)
    assert netns.namespace_pids(control.ns) == []

    # A fresh machine with the same address and name restores it.
    _start(control, "control", openstack_prefix)
    started = time.monotonic()
    restored = cloud.ctl("restore", str(archive), timeout=1500)
    cloud.timings["restore_s"] = round(time.monotonic() - started, 1)
    assert restored.returncode == 0, restored.stdout + restored.stderr + control.daemon_log(80)
    assert "restore-databases" in restored.stdout and "loaded databases.sql" in restored.stdout
    assert "restored from backup" in restored.stdout, restored.stdout
    started = time.monotonic()
    wait_for(lambda: _computes_back(cloud), 300, "both computes active and up in Nova", 3)
    cloud.timings["computes_back_after_restore_s"] = round(time.monotonic() - started, 1)
    status = control.status()
    assert {n["name"]: n["cert_serial"] for n in status["nodes"]} == members
    assert _servers(cloud) == before
    assert networks <= {n["Name"] for n in osc_json(control, "network", "list")}

    # The network node came back too: a guest answers on its floating IP.
    # (Any guest Nova lists with one. Every guest was once listed with its
    # private address only: the compute's own Keystone user had the service
    # role alone and could not read floating IPs.)
    with_floating = {
        name: [a for a in re.findall(r"\d+\.\d+\.\d+\.\d+", entry[2]) if a.startswith("10.20.20.")]
        for name, entry in sorted(before.items())
    }
    name, floating = next(((n, f) for n, f in with_floating.items() if f), ("", []))
    assert floating, before
    wait_for(lambda: cloud.ssh(floating[0], "true").returncode == 0, 240,
             f"ssh to {name} at {floating[0]} through the restored control", 5)  # fmt: skip

    # A second restore over the restored cluster is refused, changing nothing.
    again = cloud.ctl("restore", str(archive))
    assert again.returncode == EXIT_ERROR, again.stdout + again.stderr
    assert "already the control node of cluster" in again.stderr, again.stderr
    measure(nodes_cloud=cloud.timings)
