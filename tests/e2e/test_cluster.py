"""Forming a cluster with the real CLI, each node a microstackd in its own namespace."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.netns import Cluster, Host, Network, join

pytestmark = pytest.mark.e2e

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def summary(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """name -> (role, address, state) of every node in a status."""
    return {n["name"]: (n["role"], n["address"], n["state"]) for n in status["nodes"]}


def _who(status: dict[str, Any]) -> dict[str, Any]:
    """The answering node's name and role (status's ``local``, without its fingerprint)."""
    return {k: status["local"][k] for k in ("name", "role")}


def stable(status: dict[str, Any]) -> dict[str, Any]:
    """A status without the fields that change by themselves (last_seen)."""
    nodes = [{k: v for k, v in n.items() if k != "last_seen"} for n in status["nodes"]]
    return {"cluster": status["cluster"], "nodes": sorted(nodes, key=lambda n: n["name"])}


def test_control_and_two_computes_form_a_cluster(cluster: Cluster) -> None:
    control, computes = cluster.control, cluster.computes
    status = control.status()
    expected = {
        "control": ("control", control.address, "active"),
        **{c.name: ("compute", c.address, "active") for c in computes},
    }
    assert summary(status) == expected, status
    assert status["cluster"]["id"], status
    assert status["cluster"]["control_name"] == "control"
    assert status["cluster"]["control_address"] == control.address
    assert _who(status) == {"name": "control", "role": "control"}

    for compute in computes:
        # Relayed from the control over mTLS.
        relayed = compute.status()
        assert _who(relayed) == {"name": compute.name, "role": "compute"}, relayed
        assert relayed["cluster"] == status["cluster"]
        assert summary(relayed) == expected, relayed

    for name, result in cluster.joins.items():
        lines = result.stdout.lower().splitlines()
        assert any("admit" in line for line in lines), f"{name}: {output(result)}"
        assert any("done" in line for line in lines), f"{name}: {output(result)}"
        assert any("service nova-compute" in line for line in lines), output(result)

    # Each compute's agent really runs its role's processes, inside its namespace.
    for node in status["nodes"]:
        if node["role"] == "compute":
            assert {s["name"]: s["state"] for s in node["services"]} == {
                "nova-compute": "running",
                "neutron-openvswitch-agent": "running",
            }, node
    for compute in computes:
        pids = subprocess.run(
            ["ip", "netns", "pids", compute.ns], capture_output=True, text=True, check=True
        ).stdout.split()
        services = [
            pid
            for pid in pids
            if b"microstackd.node.standin" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(services) == 2, f"{compute.name}: service processes in its namespace: {pids}"


def test_wrong_password_is_rejected_and_leaves_nothing_behind(
    network: Network, control: Host, password_file: Path, wrong_password_file: Path
) -> None:
    host = network.add_host("compute1")
    host.start_daemon("compute1")
    before = control.status()

    wrong = join(host, control, wrong_password_file, check=False)
    assert wrong.returncode == EXIT_REJECTED, output(wrong)
    assert "the control node rejected the cluster password" in wrong.stderr, output(wrong)
    assert "compute1" not in summary(control.status())
    assert stable(control.status()) == stable(before)
    mine = host.status()
    assert mine["cluster"] == {} and mine["local"]["role"] == "", mine

    right = join(host, control, password_file)
    assert "done" in right.stdout.lower(), output(right)
    assert summary(control.status())["compute1"] == ("compute", host.address, "active")
    assert _who(host.status()) == {"name": "compute1", "role": "compute"}


def test_second_init_on_the_control_is_refused(
    network: Network, control: Host, password_file: Path, tmp_path: Path
) -> None:
    before = control.status()
    other_password = tmp_path / "other-pw.txt"
    other_password.write_text("another password\n")
    again = control.ctl(
        "init", "--role", "control", "--address", control.address,
        "--password-file", str(other_password), check=False,
    )  # fmt: skip
    assert again.returncode != 0, output(again)
    assert "already the control node" in again.stderr, output(again)
    assert stable(control.status()) == stable(before)

    # The password did not change: a node still joins with the original one.
    host = network.add_host("compute1")
    host.start_daemon("compute1")
    join(host, control, password_file)
    assert summary(control.status())["compute1"] == ("compute", host.address, "active")


def test_a_taken_node_name_is_refused(cluster: Cluster, password_file: Path) -> None:
    control, taken = cluster.control, cluster.computes[0]
    before = control.status()
    impostor = cluster.network.add_host("impostor")
    impostor.start_daemon(taken.name)

    result = join(impostor, control, password_file, check=False)
    assert result.returncode == EXIT_ERROR, output(result)
    assert taken.name in result.stderr, output(result)
    assert "already" in result.stderr, output(result)
    # It names the command that frees the name, for a machine that replaces the node.
    assert f"`microstackctl remove {taken.name} --force`" in result.stderr, output(result)
    assert stable(control.status()) == stable(before)
    assert impostor.status()["cluster"] == {}


@pytest.mark.parametrize("listener", ["no-host", "no-daemon"])
def test_joining_an_unreachable_control_fails(
    network: Network, password_file: Path, listener: str
) -> None:
    host = network.add_host("compute1")
    host.start_daemon("compute1")
    if listener == "no-host":
        address = network.unused_address()
    else:
        address = network.add_host("silent").address  # a host, but nothing listens

    started = time.monotonic()
    result = host.ctl(
        "join", address, "--password-file", str(password_file), "--address", host.address,
        "--timeout", "6", check=False, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == EXIT_UNREACHABLE, output(result)
    assert "cannot reach the control node" in result.stderr, output(result)
    assert "gave up after waiting 6 s" in result.stderr, output(result)
    assert f"waiting for the control node at {address}:10002 (attempt 1)" in result.stdout
    assert address in result.stderr, output(result)
    assert elapsed < 30, f"took {elapsed:.1f} s\n{output(result)}"
    assert host.status()["cluster"] == {}


def test_joining_again_is_refused(cluster: Cluster, password_file: Path) -> None:
    control, member = cluster.control, cluster.computes[0]
    before = control.status()
    again = join(member, control, password_file, check=False)
    assert again.returncode != 0, output(again)
    assert "already a member" in again.stderr, output(again)
    assert stable(control.status()) == stable(before)
    assert _who(member.status()) == {"name": member.name, "role": "compute"}


def test_a_failing_service_reaches_the_joiners_cli(
    network: Network, control: Host, password_file: Path
) -> None:
    """An empty tunnel setting in control.yaml: the agent's service exits 1
    naming the key; the joiner sees it; fixed, a second join resumes."""
    assert control.state_dir is not None
    config = control.state_dir / "control.yaml"
    original = config.read_text()
    config.write_text(original.replace("tunnel_types: vxlan", "tunnel_types: ''"))
    host = network.add_host("compute1")
    host.start_daemon("compute1")
    failed = join(host, control, password_file, check=False)
    assert failed.returncode == EXIT_ERROR, output(failed)
    assert "neutron-openvswitch-agent exited with status 1" in failed.stderr, output(failed)
    assert "missing required setting" in failed.stderr, output(failed)
    assert summary(control.status())["compute1"][2] == "failed"

    config.write_text(original)
    again = join(host, control, password_file)
    assert "resuming the enrolment" in again.stdout, output(again)
    assert summary(control.status())["compute1"] == ("compute", host.address, "active")
