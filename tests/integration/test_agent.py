"""The control configures each compute through its agent: rendered files,
services started by the process manager, failures reaching the joiner."""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.model import NodeCredentials
from microstackd.node.roles.compute import NOVA_COMPUTE_CONF
from microstackd.node.roles.network import OVS_AGENT_INI
from microstackd.peers.cluster import member_channel
from microstackd.store import Store
from tests.integration.harness import Node, wait_for_text


def _services(control: Node, name: str) -> dict[str, str]:
    node = next(n for n in control.status()["nodes"] if n["name"] == name)
    return {s["name"]: s["state"] for s in node["services"]}


def _standin_pids(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"microstackd.node.standin" in cmdline and str(root).encode() in b" ".join(cmdline):
                pids.append(int(entry.name))
    return pids


def test_join_configures_the_node_and_status_shows_its_services(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    out = compute.join(control, password_file).stdout
    for text in (
        "issue-config",
        "render-config",
        "service nova-compute",
        "service neutron-openvswitch-agent",
        "2/2 services running",
    ):
        assert text in out
    nova = configparser.ConfigParser(interpolation=None)
    nova.read(compute.root / "etc" / NOVA_COMPUTE_CONF)
    assert nova["DEFAULT"]["host"] == "node-1" and nova["DEFAULT"]["my_ip"] == compute.address
    assert oct(os.stat(compute.root / "etc" / NOVA_COMPUTE_CONF).st_mode & 0o777) == "0o640"
    assert _services(control, "node-1") == {
        "neutron-openvswitch-agent": "running",
        "nova-compute": "running",
    }
    assert len(_standin_pids(compute.root)) == 2
    # The virt type is resolved for the rendered file; a stand-in runs no
    # driver, so status shows no detail for it (the real nova-compute does).
    assert nova["libvirt"]["virt_type"] in ("kvm", "qemu")
    node = next(n for n in control.status()["nodes"] if n["name"] == "node-1")
    assert {s["detail"] for s in node["services"]} == {""}


def test_secrets_stay_out_of_logs_and_status(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    out = compute.join(control, password_file).stdout
    secrets = [
        line.split("=", 1)[1].strip()
        for line in (compute.root / "etc" / NOVA_COMPUTE_CONF).read_text().splitlines()
        if line.startswith("password")
    ]
    assert secrets
    control_yaml = (control.state_dir / "control.yaml").read_text()
    rabbit = control_yaml.split("rabbitmq:", 1)[1].split("password:", 1)[1].split()[0]
    secrets.append(rabbit)
    shown = (
        out
        + control.ctl("status", "--format", "json").stdout
        + control.log.read_text()
        + compute.log.read_text()
    )
    for secret in secrets + [password_file.read_text().strip()]:
        assert secret not in shown


def test_a_failing_service_reaches_the_joiner_and_a_rejoin_resumes(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    config = control.state_dir / "control.yaml"
    original = config.read_text()
    config.write_text(
        original + "\n"
        if "network:" not in original
        else original.replace("tunnel_types: vxlan", "tunnel_types: ''")
    )
    compute = make_node("node-1")
    result = compute.join(control, password_file, check=False)
    assert result.returncode == 1
    assert "neutron-openvswitch-agent" in result.stderr and "exited with status 1" in result.stderr
    assert "[agent] tunnel_types" in result.stderr  # the service's own last log line
    node = next(n for n in control.status()["nodes"] if n["name"] == "node-1")
    assert node["state"] == "failed" and "configure-node" in node["message"]
    # Fix the configuration; the same join retries only what failed.
    config.write_text(original)
    out = compute.join(control, password_file).stdout
    assert "resuming the enrolment" in out
    # admit is not redone (admit-to-cloud, after configure-node, is run: skipped here)
    assert "admit" not in out.replace("admitting", "").replace("admit-to-cloud", "")
    assert "2/2 services running" in out
    # No cloud in this control's control.yaml: admitted to Nova it is not.
    assert re.search(r"–\s+admit-to-cloud\s+no cloud configured", out), out
    assert _services(control, "node-1")["neutron-openvswitch-agent"] == "running"


def test_only_the_control_may_call_an_agent(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    first, second = make_node("node-1"), make_node("node-2")
    first.join(control, password_file)
    second.join(control, password_file)
    # node-2's own, valid cluster certificate against node-1's agent.
    creds = Store(second.state_dir).credentials()

    async def call(creds: NodeCredentials) -> grpc.StatusCode:
        channel = member_channel(first.address, first.cluster_port, creds, "node-1")
        try:
            await pb_grpc.AgentServiceStub(channel).GetServices(pb.GetServicesRequest(), timeout=5)
            return grpc.StatusCode.OK
        except aio.AioRpcError as exc:
            return exc.code()
        finally:
            await channel.close(None)

    assert asyncio.run(call(creds)) is grpc.StatusCode.PERMISSION_DENIED
    control_creds = Store(control.state_dir).credentials()
    assert asyncio.run(call(control_creds)) is grpc.StatusCode.OK
    # The daemon logs it before it answers; its log reaches the file through
    # the harness's reader thread, which a loaded machine may run later.
    wait_for_text(first.log, "permission denied")


def test_services_stop_with_the_daemon_and_return_with_it(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    before = _standin_pids(compute.root)
    assert len(before) == 2
    compute.stop(signal.SIGTERM)
    assert _standin_pids(compute.root) == []
    compute.start()
    for _ in range(50):
        if len(_standin_pids(compute.root)) == 2:
            break
        asyncio.run(asyncio.sleep(0.1))
    after = _standin_pids(compute.root)
    assert len(after) == 2 and not set(after) & set(before)


def test_rendered_config_for_ovs_agent(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    ovs = configparser.ConfigParser(interpolation=None)
    ovs.read(compute.root / "etc" / OVS_AGENT_INI)
    assert ovs["ovs"]["local_ip"] == compute.address


#: A line of ``python -X importtime`` output for the top-level openstack package.
OPENSTACK_IMPORTED = re.compile(r"^import time:.*\|\s+openstack$", re.MULTILINE)


def test_a_compute_never_loads_openstacksdk(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    """openstacksdk is imported only where a cloud is used (the control, on
    its first cloud operation): a compute's memory does not pay for it."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # every import, to the log
    probe = subprocess.run(
        [sys.executable, "-c", "import openstack"], env=env, capture_output=True, text=True
    )
    assert OPENSTACK_IMPORTED.search(probe.stderr), "the import log would not show openstack"
    control = make_node("ctl", env=env)
    control.init_control(password_file)
    compute = make_node("node-1", env=env)
    compute.join(control, password_file)
    compute.status()
    control.status()  # no cloud configured: not even the control loads it
    assert "import time:" in compute.log.read_text()
    assert not OPENSTACK_IMPORTED.search(compute.log.read_text())
    assert not OPENSTACK_IMPORTED.search(control.log.read_text())
