"""The cloud end to end: two computes join a real control plane, are admitted
to Nova (compute service up, mapped into cell1, hypervisor listed), a server
is launched onto a chosen host with a floating IP from ``public``, ``status``
shows Nova's view, and removing a node deletes its compute service.

Nova runs the fake driver (no KVM here): the server is ACTIVE in Nova, on the
chosen host, with a Neutron port and a floating IP, but there is no guest to
ssh into. Marked ``openstack`` and ``e2e``; the namespaces (and with them
every process of the cloud) are torn down by the ``network`` fixture, even on
failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, join, wait_for
from tests.e2e.test_openstack import (
    FAKE_DRIVER,
    _measure,
    _osc,
    _osc_json,
    _start,
    openstack_prefix,  # noqa: F401  (the session fixture)
)

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.timeout(1200)]


def _compute_hosts(control: Host) -> dict[str, str]:
    found = _osc_json(control, "compute", "service", "list", "--service", "nova-compute")
    return {s["Host"]: s["State"] for s in found}


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
    assert control.daemon is not None
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


def test_admit_launch_status_remove(
    network: Network,
    password_file: Path,
    openstack_prefix: Path,  # noqa: F811  (the session fixture imported above)
    tmp_path: Path,
) -> None:
    timings: dict[str, float] = {}
    control = network.add_host("control")
    _start(control, "control", openstack_prefix)
    assert control.state_dir is not None
    (control.state_dir / "control.yaml").write_text(f"compute:\n  compute_driver: {FAKE_DRIVER}\n")
    started = time.monotonic()
    argv = ["init", "--role", "control", "--address", control.address]
    control.ctl(*argv, "--password-file", str(password_file), timeout=900)
    timings["control_init_s"] = round(time.monotonic() - started, 1)

    # A tiny image named cirros: a few KB, uploaded raw.
    image = tmp_path / "cirros.img"
    image.write_bytes(b"\0" * 4096)
    _osc(control, "image", "create", "--disk-format", "raw", "--container-format", "bare",
         "--file", str(image), "cirros")  # fmt: skip
    assert [i["Name"] for i in _osc_json(control, "image", "list", "--name", "cirros")] == [
        "cirros"
    ]

    # Two computes join with the password, at the same time.
    computes = {name: network.add_host(name) for name in ("node1", "node2")}
    for name, host in computes.items():
        _start(host, name, openstack_prefix)
    outputs: dict[str, subprocess.CompletedProcess[str] | BaseException] = {}

    def joiner(name: str, host: Host) -> None:
        try:
            outputs[name] = join(host, control, password_file, check=False, timeout=900)
        except BaseException as exc:  # reported below
            outputs[name] = exc

    started = time.monotonic()
    threads = [threading.Thread(target=joiner, args=item) for item in computes.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timings["two_joins_s"] = round(time.monotonic() - started, 1)
    for out in outputs.values():
        assert isinstance(out, subprocess.CompletedProcess), out
        text = out.stdout + out.stderr
        assert out.returncode == 0, text + control.daemon_log()
        assert "admit-to-cloud" in text and "admitted to Nova" in text, text
        assert "mapped to cell" in text and "hypervisor" in text, text
        assert "waiting for nova-compute on" in text or "nova-compute up" in text, text
    for name in computes:
        timings[f"admit_{name}_s"] = _step_seconds(control, name, "admit-to-cloud")
    hosts = _compute_hosts(control)
    assert hosts.get("node1") == "up" and hosts.get("node2") == "up", hosts
    hypervisors = {h["Hypervisor Hostname"] for h in _osc_json(control, "hypervisor", "list")}
    assert {"node1", "node2"} <= hypervisors, hypervisors
    nova_conf = control.workdir / "etc" / "nova" / "nova.conf"
    listed = control.run(
        [str(openstack_prefix / "bin" / "nova-manage"), "--config-file", str(nova_conf)]
        + ["cell_v2", "list_hosts"],
        timeout=120,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    mapped = {row.strip("| ").split("|")[-1].strip() for row in listed.stdout.splitlines()}
    assert {"node1", "node2"} <= mapped, listed.stdout
    first = outputs["node1"]
    assert isinstance(first, subprocess.CompletedProcess)
    print(first.stdout)

    # Launch onto node1, as the user running the CLI (a fresh HOME: the key is made).
    home = tmp_path / "home"
    home.mkdir()
    started = time.monotonic()
    result = control.run(
        [MICROSTACKCTL, "--socket", str(control.socket), "launch", "cirros", "--name", "test"]
        + ["--availability-zone", "nova:node1"],
        env=clean_env({"HOME": str(home)}),
        timeout=600,
    )
    timings["launch_s"] = round(time.monotonic() - started, 1)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out + control.daemon_log()
    assert (home / ".ssh" / "id_microstack").exists()
    assert "host     node1" in out and "status   ACTIVE" in out, out
    floating = next(
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("floating")
    )
    assert floating.startswith("10.232.0."), out  # the public pool
    assert f"ssh -i ~/.ssh/id_microstack cirros@{floating}" in out, out
    print(out)
    server = _osc_json(control, "server", "show", "test")
    assert server["OS-EXT-SRV-ATTR:host"] == "node1" and server["status"] == "ACTIVE", server

    # Errors: each a clear message and a non-zero exit.
    for extra, text in (
        (["no-such-image"], "unknown image 'no-such-image'"),
        (["cirros", "--flavor", "huge"], "unknown flavor 'huge'"),
        (["cirros", "--availability-zone", "nowhere"], "unknown availability zone 'nowhere'"),
        (["cirros", "--availability-zone", "nova:node9"], "unknown host 'node9'"),
    ):
        bad = control.run(
            [MICROSTACKCTL, "--socket", str(control.socket), "launch", *extra],
            env=clean_env({"HOME": str(home)}),
            timeout=300,
        )
        assert bad.returncode != 0 and text in bad.stdout + bad.stderr, bad

    # status: Nova's view per node.
    def node_1_running() -> bool:
        nodes = {n["name"]: n for n in control.status()["nodes"]}
        nova = nodes["node1"]["nova"] or {}
        return nova.get("running_instances") == 1 and nova.get("compute_service") == "up"

    wait_for(node_1_running, 60, "status showing node1 running one instance", interval=2)
    timings.update(_status_cost(control))
    table = control.ctl("status").stdout
    assert "NOVA" in table and "1 running" in table, table
    nodes = {n["name"]: n for n in control.status()["nodes"]}
    assert nodes["node2"]["nova"]["running_instances"] == 0, nodes["node2"]
    assert nodes["node2"]["nova"]["hypervisor"].startswith("up"), nodes["node2"]

    # --format json, no capacity (NoValidHost with Nova's fault), quota.
    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        return control.run(
            [MICROSTACKCTL, "--socket", str(control.socket), "launch", "cirros", *args],
            env=clean_env({"HOME": str(home)}),
            timeout=300,
        )

    second = launch("--name", "test2", "--availability-zone", "nova:node1", "--format", "json")
    assert second.returncode == 0, second.stdout + second.stderr
    data = json.loads(second.stdout)
    assert data["host"] == "node1" and data["status"] == "ACTIVE", data
    assert data["ssh"] == f"ssh -i ~/.ssh/id_microstack cirros@{data['floating_ip']}", data
    # More disk than a fake host has (600000 GB); no quota limits disk.
    _osc(control, "flavor", "create", "--ram", "64", "--disk", "1000000", "--vcpus", "1", "huge")
    full = launch("--name", "too-big", "--flavor", "huge")
    assert full.returncode != 0, full.stdout
    assert "no capacity" in full.stderr and "No valid host" in full.stderr, full.stderr
    _osc(control, "quota", "set", "--instances", "3", "admin")  # test, test2, too-big
    over = launch("--name", "over")
    assert over.returncode != 0 and "quota exceeded" in over.stderr.lower(), over.stderr
    print(full.stderr, over.stderr)

    # Remove node2: its compute service leaves Nova.
    removed = control.ctl("remove", "node2", timeout=180).stdout
    print(removed)
    assert "disabled and deleted" in removed, removed
    assert "node2" not in _compute_hosts(control)
    assert "node1" in _compute_hosts(control)
    _measure(cloud=timings)
    print(json.dumps(timings))
