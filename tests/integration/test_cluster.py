"""A cluster of real daemons on loopback, driven through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.harness import Node

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED = 1, 2, 3, 4


def _nodes(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in status["nodes"]}


def test_control_and_compute_form_a_cluster(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    out = compute.join(control, password_file).stdout
    assert "admit" in out and "is an active compute node" in out
    status = control.status()
    nodes = _nodes(status)
    assert nodes["ctl"]["role"] == "control" and nodes["ctl"]["state"] == "active"
    assert nodes["node-1"] == nodes["node-1"] | {
        "role": "compute",
        "address": compute.address,
        "state": "active",
    }
    cluster = status["cluster"]
    assert isinstance(cluster, dict) and cluster["control_name"] == "ctl"
    # The compute relays the control's view over mTLS.
    relayed = compute.status()
    assert relayed["cluster"] == cluster
    assert _nodes(relayed).keys() == nodes.keys()


def test_join_streams_events_as_json_lines(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    out = compute.join(control, password_file, "--format", "json").stdout
    events = [json.loads(line) for line in out.splitlines()]
    control_events = [e for e in events if e["seq"]]
    assert [e["seq"] for e in control_events] == sorted({e["seq"] for e in control_events})
    assert events[-1]["final"] and events[-1]["step"] == "done" and events[-1]["state"] == "done"
    assert {"bootstrap", "admit", "done"} <= {e["step"] for e in events}


def test_password_from_stdin(control: Node, make_node: Callable[..., Node]) -> None:
    compute = make_node("node-1")
    compute.ctl(
        "join",
        control.endpoint,
        "--password-stdin",
        "--address",
        compute.address,
        input="correct horse battery staple\n",
    )
    assert _nodes(control.status())["node-1"]["state"] == "active"


def test_wrong_password_is_rejected_and_leaves_nothing_behind(
    control: Node, make_node: Callable[..., Node], tmp_path: Path, password_file: Path
) -> None:
    compute = make_node("node-1")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("incorrect horse\n")
    result = compute.ctl(
        "join",
        control.endpoint,
        "--password-file",
        str(wrong),
        "--address",
        compute.address,
        check=False,
    )
    assert result.returncode == EXIT_REJECTED
    assert "the control node rejected the cluster password" in result.stderr
    assert "node-1" not in _nodes(control.status())
    assert compute.status()["cluster"] == {}
    assert "reason=wrong-password" in control.log.read_text()
    # Nothing half-written: the right password now works.
    compute.join(control, password_file)
    assert _nodes(control.status())["node-1"]["state"] == "active"


def test_second_init_is_refused_and_changes_nothing(control: Node, password_file: Path) -> None:
    before = control.status()
    result = control.init_control(password_file, check=False)
    assert result.returncode == EXIT_ERROR
    assert "already the control node" in result.stderr
    assert control.status() == before


def test_a_node_name_already_taken_is_refused(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    first = make_node("node-1")
    first.ctl(
        "join", control.endpoint, "--password-file", str(password_file), "--address", first.address
    )
    impostor = make_node("node-1")
    result = impostor.join(control, password_file, check=False)
    assert result.returncode == EXIT_ERROR
    assert "a node named 'node-1' is already in the cluster" in result.stderr
    assert _nodes(control.status())["node-1"]["address"] == first.address


def test_joining_twice_is_refused(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    args = (
        "join",
        control.endpoint,
        "--password-file",
        str(password_file),
        "--address",
        compute.address,
    )
    compute.ctl(*args)
    result = compute.ctl(*args, check=False)
    assert result.returncode == EXIT_ERROR and "already a member" in result.stderr


def test_the_control_cannot_join_another_cluster(control: Node, password_file: Path) -> None:
    result = control.join(control, password_file, check=False)
    assert result.returncode == EXIT_ERROR and "control node of cluster" in result.stderr


def test_unreachable_control(make_node: Callable[..., Node], password_file: Path) -> None:
    compute = make_node("node-1")
    result = compute.ctl(
        "join",
        "127.0.0.1:9",
        "--password-file",
        str(password_file),
        "--address",
        compute.address,
        "--timeout",
        "2",
        check=False,
    )
    assert result.returncode == EXIT_UNREACHABLE
    assert "cannot reach the control node at 127.0.0.1:9" in result.stderr
    assert "waiting for the control node at 127.0.0.1:9 (attempt 1)" in result.stdout


def test_joining_a_node_that_is_not_a_control(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    lonely = make_node("lonely")
    compute = make_node("node-1")
    result = compute.ctl(
        "join",
        lonely.endpoint,
        "--password-file",
        str(password_file),
        "--address",
        compute.address,
        "--timeout",
        "2",
        check=False,
    )
    assert result.returncode == EXIT_ERROR
    assert "not the control node of a cluster" in result.stderr
    assert "gave up after waiting 2 s" in result.stderr


def test_malformed_input_is_refused_with_the_field_named(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    for target, address, expected in [
        ("1.2.3", compute.address, "control address '1.2.3' is not an IP address"),
        ("127.0.0.1:99999", compute.address, "port must be 1-65535"),
        (control.endpoint, "not-an-ip", "node address 'not-an-ip' is not an IP address"),
    ]:
        result = compute.ctl(
            "join", target, "--password-file", str(password_file), "--address", address, check=False
        )
        assert result.returncode == EXIT_ERROR, result.stderr
        assert expected in result.stderr


def test_cli_without_a_daemon_says_so(tmp_path: Path) -> None:
    node = Node(name="ghost", address="127.0.0.1", root=tmp_path)
    result = node.ctl("status", check=False)
    assert result.returncode == EXIT_UNREACHABLE
    assert "is microstackd running?" in result.stderr


def test_password_flags_are_checked(control: Node, tmp_path: Path) -> None:
    result = control.ctl(
        "join", control.endpoint, "--password-file", str(tmp_path / "nope"), check=False
    )
    assert result.returncode == EXIT_USAGE and "cannot read the password file" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = control.ctl("join", control.endpoint, "--password-file", str(empty), check=False)
    assert result.returncode == EXIT_USAGE and "empty" in result.stderr


def test_state_survives_a_restart(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    before = control.status()
    control.stop()
    control.start()
    compute.stop()
    compute.start()
    assert control.status() == before | {"nodes": control.status()["nodes"]}
    assert _nodes(compute.status())["node-1"]["state"] == "active"


def test_the_bootstrap_port_does_not_list_nodes_to_strangers(
    control: Node, make_node: Callable[..., Node], password_file: Path, tmp_path: Path
) -> None:
    """A taken name is only revealed to a joiner that proved the password."""
    first = make_node("node-1")
    first.ctl(
        "join", control.endpoint, "--password-file", str(password_file), "--address", first.address
    )
    stranger = make_node("node-1")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("guess\n")
    result = stranger.ctl(
        "join",
        control.endpoint,
        "--password-file",
        str(wrong),
        "--address",
        stranger.address,
        check=False,
    )
    assert result.returncode == EXIT_REJECTED
    assert "node-1" not in result.stderr and first.address not in result.stderr
