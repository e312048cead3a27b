"""node/watch.py: report every change at once, start again what is found down
(after it was reported), with back-off while that fails."""

from __future__ import annotations

import asyncio

import pytest

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.node.watch import ServiceWatch, unless_a_service_fails

RUNNING = [ServiceRecord("nova-compute", "running"), ServiceRecord("ovs-agent", "running")]
NOVA_STOPPED = [ServiceRecord("nova-compute", "stopped"), ServiceRecord("ovs-agent", "running")]
T0 = 1_700_000_000.0  # 22:13:20 UTC


class Node:
    """The services' states, and what the watch did to them."""

    def __init__(self, states: list[ServiceRecord]) -> None:
        self.states = states
        self.restored: list[str] = []
        self.changes = 0
        self.fail_with = ""
        self.now = 100.0

    async def statuses(self) -> list[ServiceRecord]:
        return list(self.states)

    async def restore(self, name: str) -> None:
        self.restored.append(name)
        if self.fail_with:
            raise errors.ServiceFailed(self.fail_with + "\nmore lines")
        self.states = [
            ServiceRecord(s.name, "running") if s.name == name else s for s in self.states
        ]

    async def changed(self) -> None:
        self.changes += 1

    def watch(self, restore: bool = True) -> ServiceWatch:
        return ServiceWatch(
            self.statuses,
            self.restore if restore else None,
            self.changed,
            interval=5.0,
            backoff_cap=40.0,
            clock=lambda: self.now,
            wall_clock=lambda: T0 + self.now - 100.0,
        )


def tick(watch: ServiceWatch) -> list[ServiceRecord]:
    return asyncio.run(watch.tick())


def test_a_stopped_service_is_reported_at_once_and_started_at_the_next_look() -> None:
    node = Node(RUNNING)
    watch = node.watch()
    assert tick(watch) == RUNNING and node.changes == 1
    assert tick(watch) == RUNNING and node.changes == 1  # nothing changed: nothing sent

    node.states = NOVA_STOPPED
    node.now += 5.0
    shown = tick(watch)
    assert node.restored == [] and node.changes == 2
    assert shown[0] == ServiceRecord(
        "nova-compute",
        "stopped",
        "nova-compute was stopped, not by microstackd; microstackd starts it again at 22:13:30 UTC",
    )
    node.now += 4.9
    tick(watch)
    assert node.restored == []  # not before the next look

    node.now += 0.1
    shown = tick(watch)
    assert node.restored == ["nova-compute"] and node.changes == 3
    assert shown[0] == ServiceRecord(
        "nova-compute",
        "running",
        "started again by microstackd at 22:13:30 UTC after it was found stopped",
    )
    assert shown[1] == RUNNING[1]


def test_a_failed_service_keeps_its_reason_and_retries_with_back_off() -> None:
    node = Node([ServiceRecord("nova-compute", "failed", "nova-compute exited with status 1")])
    node.fail_with = "nova-compute exited with status 1"
    watch = node.watch()
    tick(watch)
    tries = []
    for _ in range(40):
        node.now += 1.0
        before = len(node.restored)
        shown = tick(watch)
        if len(node.restored) > before:
            tries.append(node.now - 100.0)
    # The first try at the next look, then 10, 20, 40, 40 s later (capped).
    assert tries[:3] == [5.0, 15.0, 35.0]
    assert shown[0].state == "failed"
    assert shown[0].message.startswith(
        "nova-compute exited with status 1; microstackd starts it again at "
    )
    assert shown[0].message.endswith(
        "(attempt 4; the last failed: nova-compute exited with status 1)"
    )
    node.now += 40.0
    tick(watch)
    assert len(node.restored) == 4  # 75 s: capped at 40 s after 35 s


def test_without_restore_it_only_reports() -> None:
    """The process manager restarts its own children."""
    node = Node(RUNNING)
    watch = node.watch(restore=False)
    tick(watch)
    node.states = NOVA_STOPPED
    for _ in range(5):
        node.now += 10.0
        assert tick(watch) == NOVA_STOPPED
    assert node.restored == [] and node.changes == 2


def test_a_service_back_on_its_own_is_forgotten() -> None:
    node = Node(NOVA_STOPPED)
    watch = node.watch()
    tick(watch)
    node.states = RUNNING  # systemd restarted it
    assert tick(watch) == RUNNING
    node.states = NOVA_STOPPED
    node.now += 5.0
    tick(watch)
    assert node.restored == []  # down again: reported first, as new


@pytest.mark.parametrize("state", ["starting", "running"])
def test_services_on_their_way_are_left_alone(state: str) -> None:
    node = Node([ServiceRecord("nova-compute", state)])
    watch = node.watch()
    for _ in range(3):
        node.now += 10.0
        tick(watch)
    assert node.restored == [] and node.changes == 1


# -- the control waiting on a node: a failed service ends the wait --------------
CRASH = (
    "nova-compute keeps exiting before it is ready (3 times so far; restarted each time). "
    "The last time: nova-compute exited with status 1; last log lines:\n"
    "ERROR nova.virt.driver Unable to load the virtualization driver: No module named 'libvirt'"
)


def test_a_failed_service_ends_the_wait_with_its_own_message() -> None:
    answers: list[errors.NodeUnreachable | list[ServiceRecord]] = [
        errors.NodeUnreachable("cannot reach the agent of node-1"),  # asked again
        [ServiceRecord("ovsdb-server", "running"), ServiceRecord("nova-compute", "starting")],
        [ServiceRecord("ovsdb-server", "running"), ServiceRecord("nova-compute", "failed", CRASH)],
    ]
    cancelled: list[bool] = []

    async def fetch() -> list[ServiceRecord]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def admit() -> None:
        try:
            await asyncio.sleep(300)  # Nova never sees a crash-looping nova-compute
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> str:
        with pytest.raises(errors.ServiceFailed) as failed:
            await unless_a_service_fails(admit(), fetch, "node-1", "being admitted", interval=0.01)
        return failed.value.message

    message = asyncio.run(main())
    assert message.startswith("nova-compute on node-1 failed while being admitted: ")
    assert "Unable to load the virtualization driver" in message
    assert cancelled == [True] and answers == []


def test_the_wait_returns_its_result_when_nothing_fails() -> None:
    async def fetch() -> list[ServiceRecord]:
        return [ServiceRecord("nova-compute", "running")]

    async def admit() -> dict[str, str]:
        await asyncio.sleep(0.05)
        return {"host": "node-1"}

    result = asyncio.run(unless_a_service_fails(admit(), fetch, "node-1", "x", interval=0.01))
    assert result == {"host": "node-1"}


def test_the_waits_own_error_is_raised_unchanged() -> None:
    async def fetch() -> list[ServiceRecord]:
        return []

    async def admit() -> None:
        raise errors.CloudError("node-1: timed out after 300 s waiting for nova-compute")

    with pytest.raises(errors.CloudError, match="timed out after 300 s"):
        asyncio.run(unless_a_service_fails(admit(), fetch, "node-1", "x", interval=0.01))
