"""Faults on loopback: daemons killed mid-enrolment, removal and revocation,
join tokens, heartbeats."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from microstackd.store import Store
from tests.integration.harness import Node, join_in_background, wait_for_text
from tests.integration.test_adversarial import _status_code

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED = 1, 2, 3, 4


def _node(control: Node, name: str) -> dict[str, object]:
    nodes = {n["name"]: n for n in control.status()["nodes"]}
    return nodes[name]  # type: ignore[no-any-return]


def _events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _assert_each_event_once(events: list[dict[str, object]]) -> None:
    seqs = [e["seq"] for e in events if e["seq"]]
    assert seqs == sorted(set(seqs)), f"events repeated or out of order: {seqs}"  # type: ignore[type-var]
    assert events[-1]["final"] and events[-1]["state"] == "done", events[-1]


# ---------------------------------------------------------------- resume --


@pytest.mark.parametrize("step", ["admit", "issue-config", "configure-node", "done"])
def test_control_killed_at_a_step_resumes_and_the_joiner_sees_each_event_once(
    make_node: Callable[..., Node], password_file: Path, step: str
) -> None:
    control = make_node("ctl", "--step-delay", f"{step}=30")
    control.init_control(password_file)
    compute = make_node("node-1")
    join = join_in_background(compute, control, password_file)
    try:
        wait_for_text(control.log, f"pausing before' step={step} node=node-1")
        control.stop(signal.SIGKILL)
        control.extra = []  # back without the pause
        control.start()
        out, err = join.communicate(timeout=90)
    finally:
        join.kill()
    assert join.returncode == 0, err
    events = _events(out)
    _assert_each_event_once(events)
    waits = [i for i, e in enumerate(events) if e["state"] == "waiting"]
    assert waits, "the re-attach was not shown"
    # Shown under the step that was under way when the control went (the
    # step of the last event of the control's before it), not as "bootstrap".
    for i in waits:
        seen = [e["step"] for e in events[:i] if e["seq"]]
        assert events[i]["step"] == (seen[-1] if seen else "bootstrap"), events[: i + 1]
    node = _node(control, "node-1")
    assert node["state"] == "active"
    assert [n["name"] for n in control.status()["nodes"]].count("node-1") == 1


def test_compute_killed_mid_enrolment_is_waited_for_and_the_cli_reattaches(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl", "--step-delay", "configure-node=2")
    control.init_control(password_file)
    compute = make_node("node-1")
    join = join_in_background(compute, control, password_file)
    try:
        wait_for_text(control.log, "pausing before' step=configure-node node=node-1")
        compute.stop(signal.SIGKILL)
        # The control finds the agent gone and waits for it, however long.
        deadline = time.monotonic() + 30
        while "waiting for the agent" not in str(_node(control, "node-1")["message"]):
            assert time.monotonic() < deadline, _node(control, "node-1")
            time.sleep(0.2)
        assert _node(control, "node-1")["state"] == "enrolling"
        compute.start()
        out, err = join.communicate(timeout=90)
    finally:
        join.kill()
    assert join.returncode == 0, err + out
    events = _events(out)
    _assert_each_event_once(events)
    assert any("waiting for the agent of node-1" in str(e["message"]) for e in events)
    assert _node(control, "node-1")["state"] == "active"


# ---------------------------------------------------------------- remove --


def test_remove_revokes_and_the_node_can_join_again(
    control: Node, make_node: Callable[..., Node], password_file: Path, tmp_path: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    old_serial = _node(control, "node-1")["cert_serial"]
    saved = Store(compute.state_dir).credentials()
    out = control.ctl("remove", "node-1").stdout
    assert "revoked" in out and "services were stopped" in out
    assert _node(control, "node-1")["state"] == "removed"
    assert compute.status()["cluster"] == {}  # the node forgot the cluster
    refused = asyncio.run(_status_code(control, saved.key_pem, saved.cert_pem, saved.ca_pem))
    assert refused is grpc.StatusCode.PERMISSION_DENIED
    control.stop()
    control.start()
    refused = asyncio.run(_status_code(control, saved.key_pem, saved.cert_pem, saved.ca_pem))
    assert refused is grpc.StatusCode.PERMISSION_DENIED
    compute.join(control, password_file)
    node = _node(control, "node-1")
    assert node["state"] == "active" and node["cert_serial"] != old_serial


def test_removing_an_unreachable_node_needs_force(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    compute.stop()
    result = control.ctl("remove", "node-1", check=False)
    assert result.returncode == EXIT_UNREACHABLE
    assert "--force" in result.stderr
    assert _node(control, "node-1")["state"] == "active"
    out = control.ctl("remove", "node-1", "--force").stdout
    assert "removed by force" in out
    # Back, it still believes it is a member; a join finds out it is not.
    compute.start()
    out = compute.join(control, password_file).stdout
    assert "is an active compute node" in out


def test_remove_refuses_the_control_and_unknown_nodes(control: Node) -> None:
    result = control.ctl("remove", "ctl", check=False)
    assert result.returncode == EXIT_ERROR and "cannot be removed" in result.stderr
    result = control.ctl("remove", "nobody", check=False)
    assert result.returncode == EXIT_ERROR and "no node named 'nobody'" in result.stderr


# ---------------------------------------------------------------- tokens --


def _token(control: Node, name: str, ttl: str = "1h") -> str:
    data = json.loads(control.ctl("add-node", name, "--ttl", ttl, "--format", "json").stdout)
    assert set(data) >= {"token", "expires"}
    return str(data["token"])


def test_a_token_joins_once(control: Node, make_node: Callable[..., Node]) -> None:
    token = _token(control, "node-1")
    compute = make_node("node-1")
    out = compute.ctl("join", "--token", token, "--address", compute.address).stdout
    assert "proving the join token" in out
    assert _node(control, "node-1")["state"] == "active"
    listed = json.loads(control.ctl("tokens", "--format", "json").stdout)["tokens"]
    assert [(t["name"], t["state"]) for t in listed] == [("node-1", "used")]
    # Reused on a fresh node of the same name: refused.
    again = make_node("node-1")
    result = again.ctl("join", "--token", token, "--address", again.address, check=False)
    assert result.returncode == EXIT_REJECTED and "used" in result.stderr


def test_expired_revoked_and_misnamed_tokens_are_refused(
    control: Node, make_node: Callable[..., Node]
) -> None:
    expired = _token(control, "node-1", "1s")
    revoked = _token(control, "node-2")
    control.ctl("tokens", "revoke", "node-2")
    misnamed = _token(control, "node-3")
    time.sleep(1.5)
    n1, n2, other = make_node("node-1"), make_node("node-2"), make_node("node-9")
    for node, token, code, text in [
        (n1, expired, EXIT_REJECTED, "expired"),
        (n2, revoked, EXIT_REJECTED, "revoked"),
        (other, misnamed, EXIT_ERROR, "this join token is for a node named 'node-3'"),
    ]:
        result = node.ctl("join", "--token", token, "--address", node.address, check=False)
        assert result.returncode == code, result.stderr
        assert text in result.stderr
    states = {
        t["name"]: t["state"]
        for t in json.loads(control.ctl("tokens", "--format", "json").stdout)["tokens"]
    }
    assert states == {"node-1": "expired", "node-2": "revoked", "node-3": "valid"}


def test_a_token_pinned_to_another_control_is_not_used(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    """A token names the control's certificate; an impostor at the address
    it names never receives anything that depends on the secret."""
    token = _token(control, "node-1")
    impostor = make_node("impostor")
    impostor.init_control(password_file)
    # Point the token at the impostor: same token, another control.
    from microstackd.trust import tokens as token_codec

    decoded = token_codec.decode(token)
    forged = token_codec.encode(
        token_codec.JoinToken(**{**decoded.__dict__, "controls": (impostor.endpoint,)})
    )
    compute = make_node("node-1")
    result = compute.ctl(
        "join", "--token", forged, "--address", compute.address, "--timeout", "2", check=False
    )
    assert result.returncode == EXIT_REJECTED
    assert "not the" in result.stderr and "the join token names" in result.stderr
    # No exchange reached it (the control's bootstrap logs every one).
    assert "logger=microstackd.control.bootstrap" not in impostor.log.read_text()


def test_a_malformed_token_is_a_usage_error(make_node: Callable[..., Node]) -> None:
    compute = make_node("node-1")
    result = compute.ctl(
        "join", "--token", "mst1.garbage", "--address", compute.address, check=False
    )
    assert result.returncode == EXIT_ERROR and "not a microstackd join token" in result.stderr


# ------------------------------------------------------------ heartbeats --


def test_a_silent_member_is_shown_unreachable_then_active_again(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl", "--unreachable-after", "3")
    control.init_control(password_file)
    compute = make_node("node-1")
    compute.join(control, password_file)
    assert _node(control, "node-1")["state"] == "active"
    assert compute.proc is not None
    compute.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 15
        while _node(control, "node-1")["state"] != "unreachable":
            assert time.monotonic() < deadline, "never shown unreachable"
            time.sleep(0.5)
    finally:
        compute.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 15
    while _node(control, "node-1")["state"] != "active":
        assert time.monotonic() < deadline, "never active again"
        time.sleep(0.5)


def test_a_member_removed_while_away_is_refused_at_its_next_beat(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    """Heartbeats flow on one long-lived stream (ClusterService.Heartbeats);
    a member removed with --force while it could not be told keeps that
    stream, and its next beat is refused: it stops beating."""
    control = make_node("ctl", "--unreachable-after", "3")
    control.init_control(password_file)
    compute = make_node("node-1")
    compute.join(control, password_file)
    assert compute.proc is not None
    compute.proc.send_signal(signal.SIGSTOP)
    try:
        control.ctl("remove", "node-1", "--force")
    finally:
        compute.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    while "heartbeat refused" not in compute.log.read_text():
        assert time.monotonic() < deadline, "the removed member went on beating"
        time.sleep(0.2)
    assert "revoked" in compute.log.read_text().split("heartbeat refused", 1)[1]


def test_watch_replays_a_finished_enrolment(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    events = _events(control.ctl("watch", "node-1", "--format", "json").stdout)
    _assert_each_event_once(events)
    assert events[0]["seq"] == 1
    later = _events(control.ctl("watch", "node-1", "--after", "3", "--format", "json").stdout)
    assert later[0]["seq"] == 4
