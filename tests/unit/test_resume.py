"""At daemon start-up, the agent and the control plane start what does not
run and leave what runs alone; a node that leaves forgets its role.

With systemd the role's units live in /run: after a reboot none is there and
every service must be started again, after a daemon restart all still run
and none may be restarted (tests/e2e/machines/test_machines.py does both for real).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstackd.config import DaemonConfig
from microstackd.control.plane import ControlPlane
from microstackd.enrolment.events import EventBus
from microstackd.enrolment.runner import Runner
from microstackd.model import ClusterRecord, EventRecord, Role, ServiceRecord, StepState
from microstackd.node.agent import APPLIED_ROLE, Agent
from microstackd.node.roles import COMPUTE
from microstackd.node.roles.parts import SERVICE_PREFIX
from microstackd.node.services import ServiceSpec
from microstackd.store import Store


class FakeManager:
    """An init system in memory: which units run, and what was asked of it."""

    def __init__(self, kind: str, running: set[str]) -> None:
        self.kind = kind
        self.running = set(running)
        self.calls: list[tuple[str, str]] = []

    async def restart(self, spec: ServiceSpec) -> None:
        self.calls.append(("restart", spec.name))
        self.running.add(spec.name)

    async def stop(self, spec: ServiceSpec) -> None:
        self.calls.append(("stop", spec.name))
        self.running.discard(spec.name)

    async def status(self, spec: ServiceSpec) -> ServiceRecord:
        return ServiceRecord(spec.name, "running" if spec.name in self.running else "stopped")

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
        return await self.status(spec)

    async def close(self) -> None:
        pass

    async def log_tail(self, spec: ServiceSpec, lines: int = 20) -> str:
        return ""


def _config(tmp_path: Path, prefix: Path | None) -> DaemonConfig:
    return DaemonConfig(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "microstackd.sock",
        listen_host="10.0.0.1",
        listen_port=10002,
        cluster_port=10003,
        node_name="control",
        hostname="control",
        config_root=tmp_path / "etc",
        openstack_prefix=prefix,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state")
    yield store
    store.close()


STANDINS = {s.name for s in COMPUTE.services if not s.real_only}


@pytest.mark.parametrize(
    ("kind", "running", "restarted"),
    [
        ("systemd", STANDINS, set()),  # the daemon was restarted: all still run
        ("systemd", set(), STANDINS),  # the node was rebooted: none runs
        ("systemd", {"nova-compute"}, STANDINS - {"nova-compute"}),
        ("process", set(), STANDINS),  # its children died with the daemon
    ],
)
def test_the_agent_starts_what_does_not_run(
    tmp_path: Path, store: Store, kind: str, running: set[str], restarted: set[str]
) -> None:
    store.set_meta({APPLIED_ROLE: "compute"})
    manager = FakeManager(kind, running)

    async def main() -> None:
        agent = Agent(_config(tmp_path, None), store, manager, Runner(store, EventBus(store)))
        await agent.resume()
        await agent.close()

    asyncio.run(main())
    assert {name for call, name in manager.calls if call == "restart"} == restarted
    assert manager.running == STANDINS


def test_a_node_that_leaves_stops_its_services_and_forgets_its_role(
    tmp_path: Path, store: Store
) -> None:
    store.set_meta({APPLIED_ROLE: "compute"})
    manager = FakeManager("systemd", STANDINS)

    async def main() -> tuple[list[ServiceRecord], list[ServiceRecord]]:
        agent = Agent(_config(tmp_path, None), store, manager, Runner(store, EventBus(store)))
        await agent.resume()
        stopped = await agent.stop_role()
        await agent.resume()  # the next start-up: nothing to run
        return stopped, await agent.services()

    stopped, after = asyncio.run(main())
    assert {s.state for s in stopped} == {"stopped"} and len(stopped) == len(STANDINS)
    assert after == [] and manager.running == set()
    assert store.get_meta(APPLIED_ROLE) == ""
    assert [call for call, _ in manager.calls] == ["stop"] * len(STANDINS)


def _started_control(store: Store, names: list[str]) -> None:
    store.set_cluster(
        ClusterRecord("c1", Role.CONTROL, "control", "10.0.0.1", 10002, 10003, "ff", 0.0)
    )
    store.record_all(
        [
            EventRecord("control", 0, SERVICE_PREFIX + name, StepState.DONE, "", 100, time.time())
            for name in names
        ]
    )


@pytest.mark.parametrize(
    ("kind", "running", "restarted"),
    [
        ("systemd", {"mariadb", "epmd"}, set()),
        ("systemd", {"mariadb"}, {"epmd"}),
        ("process", {"mariadb", "epmd"}, {"mariadb", "epmd"}),
    ],
)
def test_the_control_plane_starts_what_does_not_run(
    tmp_path: Path, store: Store, kind: str, running: set[str], restarted: set[str]
) -> None:
    _started_control(store, ["mariadb", "epmd"])
    manager = FakeManager(kind, running)
    plane = ControlPlane(_config(tmp_path, Path("/opt/os")), store, manager)

    async def main() -> None:
        await plane.resume()
        await plane.close()

    asyncio.run(main())
    assert {name for call, name in manager.calls if call == "restart"} == restarted
    assert manager.running == {"mariadb", "epmd"}
    # The configuration is rendered again before anything starts, and only then.
    assert (tmp_path / "etc" / "control" / "mariadb.cnf").exists() == bool(restarted)
