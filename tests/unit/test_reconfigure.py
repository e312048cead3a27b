"""``reconfigure`` (control/reconfigure.py): one compute after the other,
an unreachable one skipped and named, a failed one stopping the rolling
change, a compute on the shared credentials moved to its own, what is left
recorded so a restarted control carries on, and bad requests refused
before anything is touched. The agents are fakes here; the OpenStack suite
runs it on the real cloud."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from microstackd import errors
from microstackd.cloud import Note
from microstackd.control import config as control_config
from microstackd.control import reconfigure as reconfigure_module
from microstackd.control.node_accounts import Accounts
from microstackd.control.reconfigure import PENDING, Reconfigure
from microstackd.model import AgentStep, ClusterRecord, NodeState, Role, StepState
from microstackd.store import Store
from tests.unit.test_node_accounts import CRL, _node


class FakeCluster:
    def __init__(self, store: Store, tmp_path: Path) -> None:
        self.store = store
        self._config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")

    def require(self) -> ClusterRecord:
        cluster = self.store.cluster()
        assert cluster is not None
        return cluster

    def load_control_config(self) -> control_config.ControlConfig:
        return self._config

    def revocation_list(self) -> bytes:
        return CRL.encode()


class FakeAccounts:
    def __init__(self) -> None:
        self.own: dict[str, Accounts] = {}
        self.issued: list[str] = []

    def unavailable(self) -> str | None:
        return None

    def current(self, node: str) -> Accounts | None:
        return self.own.get(node)

    async def issue(self, node: str) -> tuple[Accounts, str]:
        self.issued.append(node)
        self.own[node] = Accounts(node, f"compute-{node}", "p1", f"compute-{node}", "p2")
        return self.own[node], f"RabbitMQ user compute-{node} created"


#: What each fake agent does: "ok", "down" (unreachable) or "fail".
BEHAVIOUR: dict[str, str] = {}
APPLIED: list[tuple[str, Mapping[str, str]]] = []


class FakeAgent:
    def __init__(self, node: Any, credentials: Any) -> None:
        self.node = node

    async def apply_role(self, role: str, settings: Mapping[str, str]) -> AsyncIterator[AgentStep]:
        how = BEHAVIOUR.get(self.node.name, "ok")
        if how == "down":
            raise errors.NodeUnreachable(f"{self.node.name} at {self.node.address}: refused")
        yield AgentStep("render-config", StepState.DONE, "wrote 6 files (changed: nova.conf)")
        if how == "fail":
            raise errors.ServiceFailed("nova-compute exited 1: bad virt_type")
        APPLIED.append((self.node.name, settings))
        yield AgentStep("role", StepState.DONE, "role compute applied: 6/6 services running",
                        100, final=True)  # fmt: skip

    async def close(self) -> None:
        pass


#: The rolling change, the accounts it issues and the control's store.
Rolling = tuple[Reconfigure, FakeAccounts, Store]


@pytest.fixture
def rolling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rolling:
    BEHAVIOUR.clear()
    APPLIED.clear()
    monkeypatch.setattr(reconfigure_module, "AgentClient", FakeAgent)
    store = Store(tmp_path / "state", "ctl")
    store.set_cluster(ClusterRecord("c1", Role.CONTROL, "ctl", "10.0.0.1", 10002, 10003, "ff", 0.0))
    for name in ("node-1", "node-2", "node-3"):
        store.put_node(dataclasses.replace(_node(name), state=NodeState.ACTIVE, agent_port=10003))
    monkeypatch.setattr(Store, "credentials", lambda self: None)
    accounts = FakeAccounts()
    made = Reconfigure(FakeCluster(store, tmp_path), accounts)  # type: ignore[arg-type]
    return made, accounts, store


def _run(made: Reconfigure, nodes: list[str]) -> tuple[list[Any], list[Note]]:
    notes: list[Note] = []

    async def progress(note: Note) -> None:
        notes.append(note)

    return asyncio.run(made.run(nodes, progress)), notes


def test_every_compute_in_turn_each_moved_to_its_own_credentials(
    rolling: Rolling,
) -> None:
    made, accounts, store = rolling
    outcomes, notes = _run(made, [])
    assert [(o.node, o.result) for o in outcomes] == [
        ("node-1", "applied"), ("node-2", "applied"), ("node-3", "applied"),
    ]  # fmt: skip
    assert [n for n, _ in APPLIED] == ["node-1", "node-2", "node-3"]  # one at a time, in order
    assert accounts.issued == ["node-1", "node-2", "node-3"]
    assert APPLIED[0][1]["transport_url"].startswith("rabbit://compute-node-1:p1@")
    assert "moved to its own credentials" in outcomes[0].message
    assert any("render-config: wrote 6 files" in n.message for n in notes)
    assert store.get_meta(PENDING) == "[]"
    # Again: they have their own now, nothing is issued (nor rotated).
    _run(made, ["node-2"])
    assert accounts.issued == ["node-1", "node-2", "node-3"]


def test_an_unreachable_compute_is_skipped_and_named(
    rolling: Rolling,
) -> None:
    made, _accounts, _store = rolling
    BEHAVIOUR["node-2"] = "down"
    outcomes, _ = _run(made, [])
    assert [(o.node, o.result) for o in outcomes] == [
        ("node-1", "applied"), ("node-2", "skipped"), ("node-3", "applied"),
    ]  # fmt: skip
    assert "microstackctl reconfigure node-2` finishes the job" in outcomes[1].message


def test_a_failed_compute_stops_the_rolling_change(
    rolling: Rolling,
) -> None:
    made, _accounts, _store = rolling
    BEHAVIOUR["node-1"] = "fail"
    outcomes, notes = _run(made, [])
    assert [(o.node, o.result) for o in outcomes] == [
        ("node-1", "failed"), ("node-2", "not reached"), ("node-3", "not reached"),
    ]  # fmt: skip
    assert "bad virt_type" in outcomes[0].message and "Stopped here" in outcomes[0].message
    assert APPLIED == []
    assert notes[-1].state is StepState.FAILED


def test_a_restarted_control_carries_on_with_what_was_left(
    rolling: Rolling,
) -> None:
    made, _accounts, store = rolling
    store.set_meta({PENDING: '["node-3", "node-1"]'})
    outcomes = asyncio.run(made.resume())
    assert [(o.node, o.result) for o in outcomes] == [("node-3", "applied"), ("node-1", "applied")]
    assert store.get_meta(PENDING) == "[]"


@pytest.mark.parametrize(
    ("nodes", "error"),
    [
        (["nowhere"], "no node named 'nowhere'"),
        (["ctl"], "ctl is the control node"),
        (["Bad_Name"], "is not valid"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_touched(
    rolling: Rolling, nodes: list[str], error: str
) -> None:
    made, _accounts, store = rolling
    store.put_node(dataclasses.replace(_node("ctl"), role=Role.CONTROL, state=NodeState.ACTIVE))
    with pytest.raises(errors.MicrostackError, match=error):
        _run(made, nodes)
    assert APPLIED == []


def test_a_node_not_active_is_refused_with_what_to_do(
    rolling: Rolling,
) -> None:
    made, _accounts, store = rolling
    store.put_node(dataclasses.replace(_node("node-4"), state=NodeState.ENROLLING, agent_port=1))
    with pytest.raises(errors.InvalidArgument, match="node-4 is enrolling, not active"):
        _run(made, ["node-1", "node-4"])
    assert APPLIED == []
