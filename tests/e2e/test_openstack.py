"""The real cloud, end to end, on the default path: no control.yaml, the real
OpenStack environment (``--openstack-prefix``), each node a microstackd in
its own network namespace, exactly the CLI an operator types.

One cloud for the whole module (a control that is also the network node,
two computes on Nova's libvirt driver), built once by the ``cloud``
fixture: ``init --role control`` SIGKILLed in the middle of a bootstrap
step and resumed, then two joins at once. The tests then boot real guests
(the test image, TCG here: no usable KVM) on each compute with
``microstackctl launch``, ssh into each through its floating IP (the L3
agent's router on the control) from the control's namespace, ping from one
guest to the other across computes (vxlan), exercise launch's errors,
status and removal, and the last test stops every daemon and checks that
nothing is left (QEMU, libvirtd, dnsmasq, namespaces, mounts).

Slow (minutes): marked ``openstack`` and ``e2e``, run last. The OpenStack
environment is created or updated with ``openstack/install-env.sh`` into
``MICROSTACK_OPENSTACK_PREFIX`` (default /opt/microstack-openstack/venv).
Figures go to ``MICROSTACK_OPENSTACK_MEASUREMENTS`` for docs/performance.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from microstackd.node import testimage
from microstackd.node.roles.control import CONTROL
from sandbox import guests, netns
from sandbox.guests import osc, osc_json
from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, join, wait_for
from sandbox.openstack_env import PREFIX, measure
from tests.e2e.conftest import NETWORKS, PASSWORD
from tests.e2e.credentials import (
    hold_login,
    rabbitmqctl,
    rendered_credentials,
    try_credentials,
)

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.timeout(1800)]

CONTROL_SERVICES = {
    "mariadb", "epmd", "rabbitmq", "keystone", "glance", "placement", "nova-api",
    "neutron-api", "neutron-rpc-server", "nova-conductor", "nova-scheduler",
    "ovsdb-server", "ovs-vswitchd", "ovs-uplink", "neutron-openvswitch-agent",
    "neutron-dhcp-agent", "neutron-l3-agent",
}  # fmt: skip
COMPUTE_SERVICES = {
    "ovsdb-server", "ovs-vswitchd", "ovs-uplink", "neutron-openvswitch-agent",
    "libvirtd", "nova-compute",
}  # fmt: skip


# ---------------------------------------------------------------- helpers --


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return round(total / 1024, 1)


def qemu_pids(host: Host) -> list[int]:
    """QEMU processes of the node's guests (in its network namespace)."""
    return [p for p in netns.namespace_pids(host.ns) if _comm(p).startswith("qemu-system")]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _step_seconds(control: Host, node: str, step: str) -> float:
    """How long ``step`` of ``node``'s enrolment took, from the control's own
    record of it (the times of its first and last events in its store)."""
    assert control.state_dir is not None
    uri = f"file:{control.state_dir / 'microstackd.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        first, last = db.execute(
            "SELECT MIN(time), MAX(time) FROM events WHERE node = ? AND step = ?", (node, step)
        ).fetchone()
    return round(float(last) - float(first), 2)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _status_cost(control: Host, rounds: int = 3) -> dict[str, float]:
    """``status`` with Nova's view asked afresh each time (its cache is 5 s):
    the median wall time of the CLI command, and the daemon's CPU for it."""
    daemon = _daemon_pid(control)
    walls, cpus = [], []
    for _ in range(rounds):
        time.sleep(5.5)  # past the view's cache
        cpu = _cpu_seconds(daemon)
        started = time.monotonic()
        control.ctl("status", "--format", "json")
        walls.append(time.monotonic() - started)
        cpus.append(_cpu_seconds(daemon) - cpu)
    return {
        "status_nova_s": round(statistics.median(walls), 3),
        "status_nova_daemon_cpu_s": round(statistics.median(cpus), 3),
    }


def _daemon_pid(host: Host) -> int:
    """The microstackd process itself (the harness starts it through ``ip netns exec``)."""
    assert host.daemon is not None
    for pid in [host.daemon.pid, *_children(host.daemon.pid)]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"microstackd") for part in cmdline[:2]):
            return pid
    raise AssertionError(f"no microstackd process under {host.daemon.pid}")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_children(int(child))]
    return found


@dataclass
class Cloud:
    network: Network
    control: Host
    computes: dict[str, Host]
    password_file: Path
    #: A HOME for the CLI user (launch makes ~/.ssh/id_microstack there).
    home: Path
    init_before_kill: str = ""
    init_after_kill: str = ""
    joins: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    def ctl(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """microstackctl on the control, as the CLI user (its HOME), unchecked."""
        return guests.ctl(self.control, self.home, *args, timeout=timeout)

    def ssh(
        self, address: str, command: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return guests.ssh(self.control, self.home, address, command, timeout)

    def login(self, address: str, command: str) -> tuple[str, float]:
        """``ssh cirros@ADDRESS COMMAND`` from the control, once (its output, seconds)."""
        return guests.login(self.control, self.home, address, command, [*self.computes.values()])

    def diagnose(self) -> str:
        return guests.diagnose(self.control, [*self.computes.values()])


def _start(host: Host, name: str, prefix: Path) -> None:
    host.start_daemon(name, extra_args=["--openstack-prefix", str(prefix)])


def _init_killed_and_resumed(cloud: Cloud, prefix: Path) -> None:
    """init --role control, SIGKILLed inside the identity step, then resumed."""
    control = cloud.control
    argv = ["init", "--role", "control", "--address", control.address]
    argv += ["--password-file", str(cloud.password_file)]
    started = time.monotonic()
    first = control.popen(
        [MICROSTACKCTL, "--socket", str(control.socket), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    assert first.stdout is not None
    for line in first.stdout:
        seen.append(line)
        if re.search(r"identity\s+creating the service project", line):
            break
    else:
        raise AssertionError("init ended before the identity step:\n" + "".join(seen))
    # Into the step (some users may already exist), and the lanes beside it
    # with it: the lines they print meanwhile are part of what was seen.
    reader = threading.Thread(target=lambda: seen.extend(first.stdout or ()), daemon=True)
    reader.start()
    time.sleep(1.5)
    control.stop_daemon(signal.SIGKILL)
    first.wait(30)
    reader.join(30)
    first.stdout.close()
    _start(control, "control", prefix)
    cloud.init_before_kill = "".join(seen)
    cloud.init_after_kill = control.ctl(*argv, timeout=1200).stdout
    cloud.timings["control_init_s"] = round(time.monotonic() - started, 1)


def _join_all(cloud: Cloud) -> None:
    """Both computes join at once, with the password."""
    errors: dict[str, BaseException] = {}

    def joiner(name: str, host: Host) -> None:
        started = time.monotonic()
        try:
            cloud.joins[name] = join(host, cloud.control, cloud.password_file, False, 900)
        except BaseException as exc:  # reported below
            errors[name] = exc
        cloud.timings[f"join_{name}_s"] = round(time.monotonic() - started, 1)

    threads = [threading.Thread(target=joiner, args=item) for item in cloud.computes.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.fixture(scope="module")
def cloud(openstack_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    netns_reason = netns.unavailable_reason()
    if netns_reason is not None:
        pytest.skip(f"e2e needs network namespaces: {netns_reason}")
    # The nodes' namespaces have no route to Debian's archive: the test image
    # is built (or found in the machine's cache) here, where control init
    # then finds it.
    started = time.monotonic()
    built = testimage.build()
    measure(test_image_s=round(time.monotonic() - started, 1), test_image_cached=built.cached)
    work = tmp_path_factory.mktemp("cloud")
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
        assert control.state_dir is not None
        assert not (control.state_dir / "control.yaml").exists()  # the default path
        _init_killed_and_resumed(result, openstack_prefix)
        for name, host in computes.items():
            _start(host, name, openstack_prefix)
        _join_all(result)
        measure(cloud=result.timings)
        yield result
    finally:
        network.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> None:
    """A failed test's report carries the cloud's daemon logs (conftest's hook)."""
    if "cloud" in request.fixturenames:
        request.node.stash.setdefault(NETWORKS, []).append(request.getfixturevalue("cloud").network)


# ------------------------------------------------------------------ tests --


def test_control_init_resumes_after_a_sigkill_and_makes_the_network_node(cloud: Cloud) -> None:
    before, after = cloud.init_before_kill, cloud.init_after_kill
    done_before, cut_short = _steps_at_kill(before)
    for text in ("service mariadb", "service rabbitmq", "keystone-bootstrap", "service keystone"):
        assert text in done_before, before
    # Which of the other lanes' steps were under way at the kill depends on
    # the machine's speed; whatever they were, each is redone, and nothing
    # done before the kill is.
    assert "identity" in cut_short, before
    done_after = _steps_done(after)
    for step in CONTROL.order_names():
        if step in done_before:
            assert step not in done_after, f"{step} redone:\n{after}"
        else:
            assert step in done_after, f"{step} not done after the resume:\n{after}"
    assert "skipped" not in after, after
    measure(init_cut_short=sorted(cut_short))
    control = cloud.control
    assert control.state_dir is not None
    assert oct((control.state_dir / "clouds.yaml").stat().st_mode & 0o777) == "0o600"
    catalog = {entry["Type"] for entry in osc_json(control, "catalog", "list")}
    assert {"identity", "image", "placement", "compute", "network"} <= catalog
    # No duplicates from the interrupted identity step and the redone one.
    users = [u["Name"] for u in osc_json(control, "user", "list")]
    shared = sorted(u for u in users if not u.startswith("compute-"))
    assert shared == sorted(["admin", "glance", "placement", "nova", "neutron"]), users
    # The computes joined already (the fixture): each has its own user, no more.
    assert sorted(set(users) - set(shared)) == ["compute-node-1", "compute-node-2"], users
    assert len(osc_json(control, "endpoint", "list")) == 15  # 5 services x 3 interfaces
    flavors = osc_json(control, "flavor", "list")
    assert [(f["Name"], f["RAM"], f["Disk"]) for f in flavors] == [("m1.tiny", 128, 1)]
    images = osc_json(control, "image", "list", "--long")
    assert [(i["Name"], i["Disk Format"], i["Status"]) for i in images] == [
        ("cirros", "qcow2", "active")
    ]
    assert {n["Name"] for n in osc_json(control, "network", "list")} == {"public", "private"}
    subnet = osc_json(control, "subnet", "show", "public-subnet")
    assert subnet["cidr"] == "10.20.20.0/24" and subnet["gateway_ip"] == "10.20.20.1"
    assert subnet["allocation_pools"] == [{"start": "10.20.20.2", "end": "10.20.20.254"}]
    # The external network's gateway on the control's br-ex; its own address on br-phy.
    addresses = control.run(["ip", "-br", "-4", "addr"]).stdout
    assert re.search(r"^br-ex\s+\S+\s+10\.20\.20\.1/24", addresses, re.MULTILINE), addresses
    assert re.search(rf"^br-phy\s+\S+\s+{control.address}/24", addresses, re.MULTILINE)
    agents = osc_json(control, "network", "agent", "list")
    alive = {(a["Agent Type"], a["Host"]) for a in agents if a["Alive"] in (True, ":-)")}
    for kind in ("Open vSwitch agent", "DHCP agent", "L3 agent"):
        assert (kind, "control") in alive, agents
    services = {
        s["name"]: s["state"]
        for n in control.status()["nodes"]
        if n["name"] == "control"
        for s in n["services"]
    }
    assert services == dict.fromkeys(CONTROL_SERVICES, "running"), services
    pids = [
        p for p in netns.namespace_pids(control.ns) if control.daemon and p != control.daemon.pid
    ]
    measure(control_rss_mib=rss_mib(pids))
    again = control.ctl("init", "--role", "control", "--address", control.address,
                        "--password-file", str(cloud.password_file), check=False)  # fmt: skip
    assert again.returncode != 0 and "already the control node" in again.stdout + again.stderr


def _steps_marked(output: str, mark: str) -> set[str]:
    """The role's steps an init's plain output shows with ``mark`` (its
    lines are ``f"{mark} {step:<18} {message}"``)."""
    lines = output.splitlines()
    return {
        step
        for step in CONTROL.order_names()
        if any(line.startswith(f"{mark} {step:<18} ") for line in lines)
    }


def _steps_done(output: str) -> set[str]:
    return _steps_marked(output, "✓")


def _steps_at_kill(output: str) -> tuple[set[str], set[str]]:
    """The steps done before the kill, and those under way and cut short."""
    done = _steps_done(output)
    return done, _steps_marked(output, "…") - done


def test_both_computes_join_with_libvirt_and_say_which_hypervisor(cloud: Cloud) -> None:
    for name, out in cloud.joins.items():
        text = out.stdout + out.stderr
        assert out.returncode == 0, text + cloud.control.daemon_log()
        for step in ("service libvirtd", "service nova-compute", "service ovs-uplink"):
            assert step in text, text
        assert "6/6 services running" in text, text
        assert f"{name} admitted to Nova" in text and "mapped to a cell" in text, text
        assert "waiting for nova-compute on" in text or "nova-compute up" in text, text
        # The control checked its own end of the network path (control/tunnels.py).
        assert f"the control's tunnel to {name} is up" in text, text
    measure(
        admission={
            f"admit_{name}_s": _step_seconds(cloud.control, name, "admit-to-cloud")
            for name in cloud.joins
        }
    )
    hypervisors = osc_json(cloud.control, "hypervisor", "list", "--long")
    kinds = {h["Hypervisor Hostname"]: h["Hypervisor Type"] for h in hypervisors}
    assert kinds == {"node-1": "QEMU", "node-2": "QEMU"}, hypervisors
    status = cloud.control.status()
    for node in status["nodes"]:
        if node["name"] in cloud.computes:
            services = {s["name"]: s for s in node["services"]}
            assert set(services) == COMPUTE_SERVICES, services
            assert {s["state"] for s in services.values()} == {"running"}, services
            detail = services["nova-compute"]["detail"]
            assert detail.startswith("libvirt.LibvirtDriver, virt_type "), detail
            # This machine's /dev/kvm stalls guests: detected, not assumed.
            assert "(detected: " in detail, detail
    table = cloud.control.ctl("status").stdout
    assert "node-1 nova-compute: libvirt.LibvirtDriver, virt_type" in table, table


def test_each_compute_holds_its_own_openstack_credentials_and_no_shared_one(
    cloud: Cloud,
) -> None:
    """Every secret in a compute's rendered files is its own: its RabbitMQ
    user (nova-compute and the Open vSwitch agent), its Keystone user (role
    ``service`` only); none of control.yaml's; and its RabbitMQ user cannot
    take another compute's RPC traffic."""
    control = cloud.control
    assert control.state_dir is not None
    shared = yaml.safe_load((control.state_dir / "control.yaml").read_text())
    secrets = [shared["rabbitmq"]["password"], shared["metadata_secret"]]
    secrets += [shared["database"]["password"], shared["admin"]["password"]]
    secrets += [entry["password"] for entry in shared["service_users"].values()]
    seen = {}
    for name, host in cloud.computes.items():
        creds = rendered_credentials(host)
        own = f"compute-{name}"
        assert creds["rabbitmq_user"] == own and creds["agent_url"] == creds["url"], name
        for section in ("keystone_authtoken", "service_user", "placement", "neutron"):
            assert creds[f"{section}_user"] == own, (name, section)
        for path in (host.workdir / "etc").rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                assert not [s for s in secrets if s in text], path  # no shared secret anywhere
        other = next(n for n in cloud.computes if n != name)
        tried = try_credentials(host, creds, other=other)
        assert tried["rabbitmq"] == "ok" and tried["keystone"] == 201, tried
        # The shared service users' roles (nova-compute reads its servers'
        # floating IPs); a token lists the roles admin implies too.
        assert {"admin", "service"} <= set(tried["roles"]), tried
        assert "ACCESS_REFUSED" in tried["consume_other"], tried
        assert f"access to topic 'compute.{other}'" in tried["bind_other"], tried
        seen[name] = (creds["url"], creds["placement_password"])
    assert seen["node-1"] != seen["node-2"]
    # The running services log in as their node's own user, from its address.
    listed = rabbitmqctl(control, "list_connections", "user", "peer_host").splitlines()[1:]
    logins = {tuple(line.split("\t")) for line in listed}
    for name, host in cloud.computes.items():
        assert (f"compute-{name}", host.address) in logins, logins
        assert ("openstack", host.address) not in logins, logins


def network_diagnostics(cloud: Cloud, host: str) -> str:
    return guests.network_diagnostics(cloud.control, cloud.computes[host])


def _launch(cloud: Cloud, name: str, host: str) -> tuple[dict[str, Any], float]:
    """launch on ``host``, then its ssh line once (sandbox/guests.py's ``launch``)."""
    computes = [*cloud.computes.values()]
    return guests.launch(cloud.control, cloud.home, name, host, cloud.computes[host], computes)


def test_real_guests_on_each_compute_answer_ssh_and_ping_each_other(cloud: Cloud) -> None:
    timings: dict[str, float] = {}
    guests: dict[str, dict[str, Any]] = {}
    for name, host, label in (("vm1", "node-1", "cold"), ("vm2", "node-2", "cold_node2")):
        guests[name], login = _launch(cloud, name, host)
        timings[f"active_after_launch_{label}_s"] = guests[name]["active_after_seconds"]
        timings[f"sshd_after_launch_{label}_s"] = guests[name]["ssh_after_seconds"]
        timings[f"ssh_login_after_launch_{label}_s"] = round(login, 1)
    for name, guest in guests.items():
        assert guest["login"].startswith("Linux "), guest["login"]
        assert guest["login"].endswith(f"\ncirros\n{name}\n"), guest["login"]
        address, _ = cloud.login(guest["floating_ip"], "ip -4 -o addr show eth0")
        assert "10.233.0." in address, address
    # Guest to guest across computes: over vxlan between node-1 and node-2.
    vm1_fixed = next(a for a in guests["vm1"]["addresses"]["private"] if a.startswith("10.233."))
    ping = cloud.ssh(guests["vm2"]["floating_ip"], f"ping -c 3 -W 2 {vm1_fixed}")
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    # A guest costs its QEMU: measure it.
    qemu = {n: qemu_pids(h) for n, h in cloud.computes.items()}
    assert all(len(pids) == 1 for pids in qemu.values()), qemu
    timings["guest_qemu_rss_mib"] = rss_mib(qemu["node-1"])
    nodes_rss = {}
    for node in (cloud.control, *cloud.computes.values()):
        daemon = node.daemon.pid if node.daemon else -1
        pids = netns.namespace_pids(node.ns)
        nodes_rss[node.name] = {
            "services_mib": rss_mib([p for p in pids if p != daemon]),
            "microstackd_mib": rss_mib([daemon]),
        }
    measure(node_rss_with_one_guest=nodes_rss)
    # Warm: the image is in node-1's cache now.
    vm3, login = _launch(cloud, "vm3", "node-1")
    timings["active_after_launch_warm_s"] = vm3["active_after_seconds"]
    timings["sshd_after_launch_warm_s"] = vm3["ssh_after_seconds"]
    timings["ssh_login_after_launch_warm_s"] = round(login, 1)
    assert len(qemu_pids(cloud.computes["node-1"])) == 2
    started = time.monotonic()
    osc(cloud.control, "server", "delete", "--wait", "vm3")
    timings["server_delete_s"] = round(time.monotonic() - started, 1)
    wait_for(lambda: len(qemu_pids(cloud.computes["node-1"])) == 1, 60, "vm3's QEMU to go")
    measure(guests=timings)
    print(json.dumps(timings))


def _pid(host: Host, service: str) -> int:
    assert host.state_dir is not None
    return int((host.state_dir / "logs" / f"{service}.pid").read_text().split()[0])


def test_reconfigure_rolls_a_setting_to_both_computes_restarting_only_what_changed(
    cloud: Cloud,
) -> None:
    """control.yaml's compute.virt_type from auto (detected) to qemu: each
    compute in turn renders it and restarts nova-compute alone; the Open
    vSwitch agent, libvirtd and the running guests are left as they are."""
    control = cloud.control
    assert control.state_dir is not None
    path = control.state_dir / "control.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["compute"]["virt_type"] == "auto"
    data["compute"]["virt_type"] = "qemu"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = {
        name: {s: _pid(h, s) for s in ("nova-compute", "neutron-openvswitch-agent", "libvirtd")}
        for name, h in cloud.computes.items()
    }
    guests = {name: qemu_pids(h) for name, h in cloud.computes.items()}
    started = time.monotonic()
    result = cloud.ctl("reconfigure", "--format", "json", timeout=900)
    measure(reconfigure_two_computes_s=round(time.monotonic() - started, 1))
    assert result.returncode == 0, result.stdout + result.stderr + control.daemon_log()
    outcomes = json.loads(result.stdout)["nodes"]
    assert [(o["node"], o["result"]) for o in outcomes] == [
        ("node-1", "applied"), ("node-2", "applied"),
    ], outcomes  # fmt: skip
    for name, host in cloud.computes.items():
        conf = (host.workdir / "etc" / "nova/nova.conf.d/microstackd-compute.conf").read_text()
        assert "virt_type = qemu" in conf and "set in control.yaml" in conf, conf
        after = {s: _pid(host, s) for s in before[name]}
        assert after["nova-compute"] != before[name]["nova-compute"], (name, before, after)
        assert after["neutron-openvswitch-agent"] == before[name]["neutron-openvswitch-agent"]
        assert after["libvirtd"] == before[name]["libvirtd"]
        assert qemu_pids(host) == guests[name]  # the running guest did not notice
    status = {n["name"]: n for n in control.status()["nodes"]}
    for name in cloud.computes:
        services = {s["name"]: s for s in status[name]["services"]}
        assert {s["state"] for s in services.values()} == {"running"}, services
        detail = services["nova-compute"]["detail"]
        assert "virt_type qemu (set in control.yaml" in detail, detail
    # Nothing changed since: a second run restarts nothing.
    pids = {name: _pid(h, "nova-compute") for name, h in cloud.computes.items()}
    again = cloud.ctl("reconfigure", "node-1", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nova-compute is running, unchanged: not restarted" in again.stdout, again.stdout
    assert {name: _pid(h, "nova-compute") for name, h in cloud.computes.items()} == pids
    # A node that is not a member is refused, naming it.
    bad = cloud.ctl("reconfigure", "node-9")
    assert bad.returncode == 1 and "no node named 'node-9'" in bad.stderr, bad


REPO = Path(__file__).resolve().parents[2]


def _connections(control: Host, address: str) -> set[tuple[str, str]]:
    """(RabbitMQ user, program) of each connection from ``address``: the
    program is oslo.messaging's connection name (``nova-compute:PID:...``)."""
    fields = ("user", "peer_host", "client_properties")
    listed = json.loads(rabbitmqctl(control, "list_connections", *fields, "--formatter", "json"))
    found = set()
    for entry in listed:
        peer = entry["peer_host"]  # JSON gives an IPv4 address as a list of its bytes
        if (".".join(map(str, peer)) if isinstance(peer, list) else peer) != address:
            continue
        named = re.search(r'"connection_name",\s*"[^"]*",\s*"([^":]+):', json.dumps(entry))
        found.add((entry["user"], named.group(1) if named else "?"))
    return found


def _running_guest(cloud: Cloud, host: str) -> dict[str, Any]:
    """A guest already running on ``host`` (vm1 in a full run), or one launched now."""
    for server in osc_json(cloud.control, "server", "list", "--host", host, "--long"):
        if server["Status"] == "ACTIVE":
            shown = osc_json(cloud.control, "server", "show", server["ID"])
            floating = [a for addrs in shown["addresses"].values() for a in addrs
                        if a.startswith("10.20.20.")]  # fmt: skip
            if floating:
                return {"name": shown["name"], "floating_ip": floating[0]}
    launched, _ = _launch(cloud, "vm-mig0", host)
    return launched


def test_a_compute_on_the_shared_credentials_moves_to_its_own_at_reconfigure(
    cloud: Cloud,
) -> None:
    """The migration of a cluster enrolled before per-node credentials:
    node-1 is put back in the state that release left it in (its files
    rendered with control.yaml's shared RabbitMQ and service users, no
    compute-node-1 user anywhere, no record of one on the control:
    tests/e2e/previous_release.py), with a guest running on it; then
    ``reconfigure node-1`` gives it its own users, its services log in with
    them, the guest keeps running and answering, a new one boots there, and
    a second reconfigure restarts nothing."""
    control, node = cloud.control, cloud.computes["node-1"]
    assert control.state_dir is not None
    shared_config = yaml.safe_load((control.state_dir / "control.yaml").read_text())
    shared_user = shared_config["rabbitmq"]["user"]
    guest = _running_guest(cloud, "node-1")
    qemu_before = qemu_pids(node)
    assert qemu_before, "no guest runs on node-1"

    # The previous release's state, made with the product's own shared path.
    made = control.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "tests.e2e.previous_release",
         str(control.state_dir), "node-1"],
        cwd=REPO, timeout=600,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert json.loads(made.stdout)["applied"].startswith("done"), made.stdout
    rabbitmqctl(control, "delete_user", "compute-node-1")
    osc(control, "user", "delete", "compute-node-1")
    (control.state_dir / "node-accounts" / "node-1.json").unlink()
    old = rendered_credentials(node)
    assert old["rabbitmq_user"] == shared_user, old
    assert {old[f"{s}_user"] for s in ("placement", "neutron")} == {"placement", "neutron"}, old
    wanted_shared = {(shared_user, "nova-compute"), (shared_user, "neutron-openvswitch-agent")}
    wait_for(
        lambda: wanted_shared <= _connections(control, node.address),
        120,
        "node-1's services to log in with the shared user",
    )
    assert not [u for u, _ in _connections(control, node.address) if u == "compute-node-1"]
    assert qemu_pids(node) == qemu_before

    started = time.monotonic()
    result = cloud.ctl("reconfigure", "node-1", "--format", "json", timeout=900)
    measure(reconfigure_migrates_a_compute_s=round(time.monotonic() - started, 1))
    assert result.returncode == 0, result.stdout + result.stderr + control.daemon_log()
    outcomes = json.loads(result.stdout)["nodes"]
    assert [(o["node"], o["result"]) for o in outcomes] == [("node-1", "applied")], outcomes
    message = outcomes[0]["message"]
    assert "moved to its own credentials" in message, message
    assert "RabbitMQ user compute-node-1 set" in message, message
    assert "Keystone user compute-node-1 created" in message, message

    # Its files carry its own users now, and none of the shared secrets.
    creds = rendered_credentials(node)
    assert creds["rabbitmq_user"] == "compute-node-1" and creds["agent_url"] == creds["url"]
    for section in ("keystone_authtoken", "service_user", "placement", "neutron"):
        assert creds[f"{section}_user"] == "compute-node-1", (section, creds[f"{section}_user"])
    secrets = [shared_config["rabbitmq"]["password"]]
    secrets += [entry["password"] for entry in shared_config["service_users"].values()]
    for path in (node.workdir / "etc").rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s in path.read_text(errors="replace")], path
    # Its nova-compute and Open vSwitch agent log in as compute-node-1, not as the shared user.
    wanted_own = {("compute-node-1", "nova-compute"),
                  ("compute-node-1", "neutron-openvswitch-agent")}  # fmt: skip
    wait_for(
        lambda: wanted_own <= _connections(control, node.address),
        120,
        "node-1's services to log in as compute-node-1",
    )
    assert not [u for u, _ in _connections(control, node.address) if u == shared_user]
    tried = try_credentials(node, creds, other="node-2")
    assert tried["rabbitmq"] == "ok" and tried["keystone"] == 201, tried
    assert "ACCESS_REFUSED" in tried["consume_other"], tried

    # The guest kept its QEMU and answers on its floating IP; a new one boots there.
    assert qemu_pids(node) == qemu_before
    login, _ = cloud.login(guest["floating_ip"], "hostname")
    assert login.strip() == guest["name"], login
    booted, _ = _launch(cloud, "vm-mig1", "node-1")
    assert booted["login"].endswith("\ncirros\nvm-mig1\n"), booted["login"]
    osc(control, "server", "delete", "--wait", "vm-mig1")
    wait_for(lambda: qemu_pids(node) == qemu_before, 120, "vm-mig1's QEMU to go")

    # A second reconfigure restarts nothing: its own users are kept, not rotated.
    services = ("nova-compute", "neutron-openvswitch-agent", "libvirtd")
    pids = {s: _pid(node, s) for s in services}
    again = cloud.ctl("reconfigure", "node-1", "--format", "json", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    message = json.loads(again.stdout)["nodes"][0]["message"]
    assert "moved to" not in message, message
    assert {s: _pid(node, s) for s in services} == pids, message
    assert rendered_credentials(node) == creds


#: The longest a running guest's floating IP may stay silent while the
#: control's L3 and DHCP agents restart (rotate-secrets, a crash): their
#: routers outlive them. Measured: 0.11 s (L3 agent killed) and 0.22-0.51 s
#: (rotate-secrets) at 0.1 s pings; with the router rebuilt from scratch
#: (before) 75 s each on a loaded machine (load 17 on 2 cores); a rebuild
#: cannot take less than the new agent's own start (6-7 s idle).
FLOATING_IP_GAP_S = 3.0


class Pinger:
    """``ping`` of ADDRESS every ``interval`` s from the control's namespace
    (where an operator reaches the floating IPs), kept running in the
    background: the times of the replies (wall clock, ping's ``-D``)."""

    def __init__(self, host: Host, address: str, interval: float = 0.1) -> None:
        self.address = address
        self.started = time.time()
        self.replies: list[float] = []
        self._proc = host.popen(
            ["ping", "-n", "-D", "-i", str(interval), "-W", "1", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from ", line)
            if m:
                self.replies.append(float(m.group(1)))

    def wait_replying(self, timeout: float = 60) -> None:
        wait_for(lambda: len(self.replies) >= 5, timeout, f"pings of {self.address} answered")

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._reader.join(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] (wall clock) with no reply."""
        times = [start, *(t for t in self.replies if start < t < end), end]
        return round(max(b - a for a, b in zip(times, times[1:], strict=False)), 2)


def _log_count(host: Host, service: str, text: str) -> int:
    return guests.service_log(host, service).count(text)


def test_a_crashed_l3_agent_comes_back_to_its_routers_and_the_floating_ip_keeps_answering(
    cloud: Cloud,
) -> None:
    """The control's L3 agent killed (SIGKILL, a crash): the process manager
    starts it again, it finds its router's namespace alive (kept in the
    node's mount namespace, not the agent's) and resyncs it; a guest's
    floating IP answers pings all along."""
    control = cloud.control
    guest, _ = _launch(cloud, "vm-l3", "node-1")
    pinger = Pinger(control, guest["floating_ip"])
    try:
        pinger.wait_replying()
        updates = _log_count(control, "neutron-l3-agent", "Finished a router update for")
        agent = _pid(control, "neutron-l3-agent")
        killed = time.time()
        os.kill(agent, signal.SIGKILL)
        wait_for(
            lambda: (
                _log_count(control, "neutron-l3-agent", "Finished a router update for") > updates
            ),
            300,
            "the restarted L3 agent to process its router",
        )
        synced = time.time()
        time.sleep(3)  # what the resync did to the router shows by now
        end = time.time()
    finally:
        pinger.stop()
    gap = pinger.longest_gap(killed, end)
    measure(
        l3_agent_crash_longest_ping_gap_s=gap, l3_agent_crash_resync_s=round(synced - killed, 1)
    )
    assert _pid(control, "neutron-l3-agent") != agent
    log = guests.service_log(control, "neutron-l3-agent")
    assert gap < FLOATING_IP_GAP_S, (gap, guest["floating_ip"], log[-3000:])
    login, _ = cloud.login(guest["floating_ip"], "hostname")
    assert login.strip() == "vm-l3", login
    osc(control, "server", "delete", "--wait", "vm-l3")


def _mariadb(control: Host, password: str) -> subprocess.CompletedProcess[str]:
    """A login to the control's MariaDB as openstack (the password in MYSQL_PWD)."""
    argv = ["/usr/bin/mariadb", "-h", "127.0.0.1", "-P", "13306", "-u", "openstack"]
    return control.run(
        [*argv, "-e", "SELECT 1"], env=clean_env({"MYSQL_PWD": password}), timeout=60
    )


def secrets_before_rotation(control: Host) -> tuple[dict[str, Any], Path]:
    """control.yaml's secrets, and a copy of the admin's clouds.yaml, before a rotation."""
    assert control.state_dir is not None
    old = yaml.safe_load((control.state_dir / "control.yaml").read_text())
    old_clouds = control.workdir / "clouds-before-rotation.yaml"
    old_clouds.write_text((control.state_dir / "clouds.yaml").read_text())
    return old, old_clouds


def assert_rotated(
    control: Host, old: dict[str, Any], new: dict[str, Any], old_clouds: Path
) -> None:
    """The old MariaDB, RabbitMQ, Keystone (nova) and admin passwords are
    refused; the new ones are let in."""
    refused = _mariadb(control, old["database"]["password"])
    assert refused.returncode != 0 and "Access denied" in refused.stderr, refused
    assert _mariadb(control, new["database"]["password"]).returncode == 0

    def shared_rabbitmq_and_nova(secrets: dict[str, Any]) -> dict[str, Any]:
        return try_credentials(control, {
            "url": f"rabbit://openstack:{secrets['rabbitmq']['password']}@{control.address}:5672/",
            "auth_url": f"http://{control.address}:5000/v3",
            "placement_user": "nova",
            "placement_password": secrets["service_users"]["nova"]["password"],
        })  # fmt: skip

    tried = shared_rabbitmq_and_nova(old)
    assert "ACCESS_REFUSED" in tried["rabbitmq"] and tried["keystone"] == 401, tried
    tried = shared_rabbitmq_and_nova(new)
    assert tried["rabbitmq"] == "ok" and tried["keystone"] == 201, tried
    # The admin: a token with the old clouds.yaml refused, with the rewritten one issued.
    openstack = [str(PREFIX / "bin" / "openstack"), "--os-cloud", "microstack", "token", "issue"]
    stale = control.run(openstack, env=clean_env({"OS_CLIENT_CONFIG_FILE": str(old_clouds)}))
    assert stale.returncode != 0 and "401" in stale.stderr, stale
    osc(control, "token", "issue")


def test_rotate_secrets_keeps_the_cloud_and_refuses_the_old_passwords(cloud: Cloud) -> None:
    """Every secret control.yaml generated gets a new value: the old MariaDB,
    RabbitMQ and Keystone (service user, admin) passwords are refused, the
    new ones work; a guest that runs across the rotation keeps its QEMU and
    answers ssh; a new one boots; the computes (each on its own users) are
    not touched."""
    control = cloud.control
    assert control.state_dir is not None
    old, old_clouds = secrets_before_rotation(control)
    running, _ = _launch(cloud, "vm-rot1", "node-1")
    qemu_before = qemu_pids(cloud.computes["node-1"])
    computes_before = {name: _pid(h, "nova-compute") for name, h in cloud.computes.items()}

    pinger = Pinger(control, running["floating_ip"])
    try:
        pinger.wait_replying()
        started, rotation_started = time.monotonic(), time.time()
        result = cloud.ctl("rotate-secrets", "--format", "json", timeout=1800)
        measure(rotate_secrets_s=round(time.monotonic() - started, 1))
        time.sleep(3)  # the restarted agents' resync shows by now
    finally:
        pinger.stop()
    assert result.returncode == 0, result.stdout + result.stderr + control.daemon_log()
    # The guest's floating IP answered all along: the restarted L3 agent
    # found its router alive (measured).
    gap = pinger.longest_gap(rotation_started, time.time() - 0.5)
    measure(rotate_secrets_longest_ping_gap_s=gap)
    assert gap < FLOATING_IP_GAP_S, gap
    steps = json.loads(result.stdout)["steps"]
    assert [(s["step"], s["result"]) for s in steps] == [
        ("service-users", "done"), ("rabbitmq", "done"), ("database", "done"),
        ("control-files", "done"), ("admin", "done"), ("computes", "done"),
    ], steps  # fmt: skip
    assert "none touched" in steps[-1]["message"], steps
    new = yaml.safe_load((control.state_dir / "control.yaml").read_text())
    assert not (control.state_dir / "rotate-secrets.json").exists()
    secrets = [("database", "password"), ("rabbitmq", "password"), ("admin", "password")]
    for section, key in secrets:
        assert new[section][key] != old[section][key], section
    assert new["metadata_secret"] != old["metadata_secret"]
    for user, entry in old["service_users"].items():
        assert new["service_users"][user]["password"] != entry["password"], user
    for secret in (*(old[s][k] for s, k in secrets), old["metadata_secret"]):
        assert secret not in result.stdout + result.stderr + control.daemon_log(tail=400)

    assert_rotated(control, old, new, old_clouds)

    # The running guest kept its QEMU and answers ssh; the computes were not touched.
    assert qemu_pids(cloud.computes["node-1"]) == qemu_before
    login, _ = cloud.login(running["floating_ip"], "hostname")
    assert login.strip() == "vm-rot1", login
    assert {name: _pid(h, "nova-compute") for name, h in cloud.computes.items()} == computes_before
    status = {n["name"]: n for n in control.status()["nodes"]}
    for name in ("control", *cloud.computes):
        states = {s["name"]: s["state"] for s in status[name]["services"]}
        assert set(states.values()) == {"running"}, (name, states)
    # The cloud still boots one (Nova, Neutron, Glance and Placement with their new passwords).
    booted, _ = _launch(cloud, "vm-rot2", "node-1")
    assert booted["login"].endswith("\ncirros\nvm-rot2\n"), booted["login"]
    osc(control, "server", "delete", "--wait", "vm-rot1", "vm-rot2")
    wait_for(
        lambda: len(qemu_pids(cloud.computes["node-1"])) == len(qemu_before) - 1,
        120,
        "the rotation test's guests to go",
    )


def test_launch_errors_name_their_cause(cloud: Cloud) -> None:
    for extra, text in (
        (["no-such-image"], "unknown image 'no-such-image'"),
        (["cirros", "--flavor", "huge"], "unknown flavor 'huge'"),
        (["cirros", "--availability-zone", "nowhere"], "unknown availability zone 'nowhere'"),
        (["cirros", "--availability-zone", "nova:node9"], "unknown host 'node9'"),
    ):
        bad = cloud.ctl("launch", *extra, timeout=300)
        assert bad.returncode != 0 and text in bad.stdout + bad.stderr, bad
    # A host whose nova-compute is down (forced down: Nova says so at once).
    service_set = ("compute", "service", "set", "--os-compute-api-version", "2.11")
    osc(cloud.control, *service_set, "--down", "node-1", "nova-compute")
    try:
        down = cloud.ctl("launch", "cirros", "--availability-zone", "nova:node-1", timeout=300)
    finally:
        osc(cloud.control, *service_set, "--up", "node-1", "nova-compute")
    assert down.returncode == 1, down
    assert "host 'node-1' is down: its nova-compute service is down (forced down)" in down.stderr
    # sshd not up within --ssh-timeout: the console log's last lines, the
    # phases streamed before (plain text: not a terminal).
    slow = cloud.ctl("launch", "cirros", "--name", "slow", "--availability-zone",
                     "nova:node-1", "--ssh-timeout", "1", timeout=300)  # fmt: skip
    osc(cloud.control, "server", "delete", "--wait", "slow")
    assert slow.returncode == 1, slow
    for phase in ("scheduling", "spawning", "floating-ip"):
        assert re.search(rf"^✓ {phase} ", slow.stdout, re.MULTILINE), slow.stdout
    assert re.search(r"^… booting +slow booting; waiting for sshd", slow.stdout, re.MULTILINE)
    assert "server slow is ACTIVE but its sshd did not answer on 10.20.20." in slow.stderr
    assert "within 1 s" in slow.stderr and "The last lines of its console log:" in slow.stderr
    # More disk than any host has: no valid host, with Nova's fault.
    osc(cloud.control, "flavor", "create", "--ram", "128", "--disk", "1000000", "--vcpus", "1",
        "huge")  # fmt: skip
    full = cloud.ctl("launch", "cirros", "--name", "too-big", "--flavor", "huge", timeout=300)
    assert full.returncode != 0, full.stdout
    assert "no capacity" in full.stderr and "No valid host" in full.stderr, full.stderr
    osc(cloud.control, "server", "delete", "--wait", "too-big")
    # Over the project's instance quota (vm1 and vm2 run): quota exceeded, by name.
    osc(cloud.control, "quota", "set", "--instances", "2", "admin")
    try:
        over = cloud.ctl("launch", "cirros", "--name", "over", timeout=300)
    finally:
        osc(cloud.control, "quota", "set", "--instances", "10", "admin")
    assert over.returncode != 0 and "quota exceeded" in over.stderr.lower(), over.stderr


def test_status_shows_novas_view_of_each_compute(cloud: Cloud) -> None:
    def running(name: str, count: int) -> bool:
        nodes = {n["name"]: n for n in cloud.control.status()["nodes"]}
        nova = nodes[name]["nova"] or {}
        return nova.get("running_instances") == count and nova.get("compute_service") == "up"

    wait_for(lambda: running("node-1", 1) and running("node-2", 1), 60, "Nova's view", 2)
    measure(status_cost=_status_cost(cloud.control))
    table = cloud.control.ctl("status").stdout
    assert "NOVA" in table and "1 running" in table, table
    # On a compute, status is relayed from the control.
    relayed = cloud.computes["node-1"].status()
    assert {n["name"] for n in relayed["nodes"]} == {"control", "node-1", "node-2"}


def test_a_node_whose_nova_compute_crash_loops_fails_its_join_with_its_log(
    cloud: Cloud, tmp_path: Path
) -> None:
    """nova-compute without the libvirt module (a machine where install-env
    did not run): the join fails at nova-compute's step, within a minute,
    with nova-compute's own last lines, not a five-minute wait."""
    broken = tmp_path / "env"
    (broken / "bin").mkdir(parents=True)
    for entry in (PREFIX / "bin").iterdir():
        (broken / "bin" / entry.name).symlink_to(entry)
    blocker = tmp_path / "no-libvirt"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoLibvirt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'libvirt':\n"
        "            raise ModuleNotFoundError(\"No module named 'libvirt'\", name=name)\n"
        "sys.meta_path.insert(0, _NoLibvirt())\n"
    )
    (broken / "bin" / "nova-compute").unlink()
    (broken / "bin" / "nova-compute").write_text(
        f'#!/bin/sh\nPYTHONPATH={blocker} exec {PREFIX}/bin/nova-compute "$@"\n'
    )
    (broken / "bin" / "nova-compute").chmod(0o755)
    node = cloud.network.add_host("node3")
    _start(node, "node-3", broken)
    started = time.monotonic()
    out = join(node, cloud.control, cloud.password_file, check=False, timeout=600)
    elapsed = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "service nova-compute" in text, text
    assert "Unable to load the virtualization driver" in text, text
    assert "No module named 'libvirt'" in text, text
    assert elapsed < 240, elapsed
    measure(crash_loop_join_fails_s=round(elapsed, 1))
    removed = cloud.control.ctl("remove", "node-3", timeout=300).stdout
    assert "node-3 removed" in removed, removed


def test_removing_a_compute_stops_its_guest_and_services(cloud: Cloud) -> None:
    node2 = cloud.computes["node-2"]
    assert len(qemu_pids(node2)) == 1  # vm2 runs there
    # A compute that still hosts an instance is not removed by mistake.
    refused = cloud.control.ctl("remove", "node-2", timeout=300, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "vm2" in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert len(qemu_pids(node2)) == 1
    # A copy of its credentials, and a RabbitMQ login made with them and kept open.
    stolen = rendered_credentials(node2)
    held = hold_login(node2, stolen)
    try:
        # vm2 still runs there: --force (without it, remove refuses; test_openstack_nodes).
        removed = cloud.control.ctl("remove", "node-2", "--force", timeout=300).stdout
        # RabbitMQ closed the open login of the deleted user at once.
        out, _ = held.communicate(timeout=60)
    finally:
        held.kill()
    assert "node-2 removed" in removed and "its services were stopped (6)" in removed, removed
    assert "RabbitMQ user compute-node-2 deleted" in removed, removed
    assert "Keystone user compute-node-2 deleted" in removed, removed
    assert "closed" in json.loads(out), out
    # What was copied from node-2 no longer works anywhere on the cloud.
    tried = try_credentials(node2, stolen)
    assert "ACCESS_REFUSED - Login was refused" in tried["rabbitmq"], tried
    assert tried["keystone"] == 401, tried
    # node-1's own still do, and its services still report.
    node1 = cloud.computes["node-1"]
    kept = try_credentials(node1, rendered_credentials(node1))
    assert kept["rabbitmq"] == "ok" and kept["keystone"] == 201, kept
    services = {s["Host"]: s for s in osc_json(cloud.control, "compute", "service", "list")}
    assert services["node-1"]["State"] == "up", services
    # Nova keeps a compute service that hosts a server, and says so (drain first).
    assert "left behind: 1 instance(s) Nova still places on node-2: vm2" in removed, removed
    assert "disabled and forced down but kept" in removed, removed
    # Its daemon stopped every service: the guest first (libvirtd's stop hook).
    assert qemu_pids(node2) == []
    daemon = node2.daemon.pid if node2.daemon else -1
    left = [(p, _comm(p)) for p in netns.namespace_pids(node2.ns) if p != daemon]
    assert left == [], left
    assert "ovs-uplink" in (node2.state_dir / "logs" / "ovs-uplink.log").read_text()  # type: ignore[operator]
    assert node2.address in node2.run(["ip", "-br", "-4", "addr", "show", "eth0"]).stdout
    # With its server gone, removing it again deletes what Nova kept for it.
    osc(cloud.control, "server", "delete", "--wait", "vm2")
    again = cloud.control.ctl("remove", "node-2", timeout=300).stdout
    assert "already removed" in again and "Nova compute service on node-2 deleted" in again, again
    hosts = {s["Host"] for s in osc_json(cloud.control, "compute", "service", "list")}
    assert "node-2" not in hosts and "node-1" in hosts


def test_every_daemon_stops_its_cloud_and_nothing_is_left(cloud: Cloud) -> None:
    """Last: stopping the daemons (SIGTERM) stops every service they run,
    guests first, and nothing of the cloud outlives them: no QEMU, libvirtd,
    dnsmasq or agent, no namespace of the nodes' own, no mount."""
    network = cloud.network
    started = time.monotonic()
    threads = [threading.Thread(target=h.stop_daemon, kwargs={"timeout": 120})
               for h in network.hosts.values()]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    measure(cloud_stop_s=round(time.monotonic() - started, 1))
    paths = [network.workdir, network.rundir]
    assert netns.processes_referencing(paths) == []
    for host in network.hosts.values():
        left = [(p, _comm(p)) for p in netns.namespace_pids(host.ns)]
        assert left == [], (host.name, left)
    assert netns.mounts_referencing(paths) == []
    # The control's agents kept their namespaces across every restart; stopped
    # for good, they let them go (their teardown: the mounts of the node's own).
    logs = cloud.control.state_dir / "logs"  # type: ignore[operator]
    for agent, kind in (("neutron-l3-agent", "qrouter-"), ("neutron-dhcp-agent", "qdhcp-")):
        log = (logs / f"{agent}.log").read_text(errors="replace")
        assert re.search(rf"/netns-\w+/mnt released with {kind}\w", log), (agent, log[-2000:])
    network.close()
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(network.prefix)]
    assert netns.processes_referencing(paths) == []
