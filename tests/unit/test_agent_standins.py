"""The agent starts a role's stand-ins together and reports them one by one,
with the same events, in the same order, as when it started them one after
the other; a failure leaves none of the later ones running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microstackd import control_config, errors
from microstackd.agent import Agent, AgentStep
from microstackd.config import DaemonConfig
from microstackd.model import NodeRecord, NodeState, Role, StepState
from microstackd.node.roles import COMPUTE
from microstackd.node.services import RUNNING, STOPPED, ServiceSpec, ServiceStatus
from microstackd.store import Store

NODE = NodeRecord(
    name="node-1",
    role=Role.COMPUTE,
    address="10.0.0.2",
    hostname="node-1",
    state=NodeState.ENROLLING,
    message="",
    cert_serial="aa",
    cert_not_after=0,
    joined=0,
)
SERVICES = [s.name for s in COMPUTE.services if not s.real_only]


class RecordingManager:
    """A ServiceManager that records what it was asked, in order."""

    kind = "process"

    def __init__(self, fail_wait: str = "", fail_start: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.running: set[str] = set()
        self.fail_wait, self.fail_start = fail_wait, fail_start

    async def restart(self, spec: ServiceSpec) -> None:
        self.calls.append(("restart", spec.name))
        if spec.name == self.fail_start:
            raise errors.ServiceFailed(f"{spec.name}: cannot run it")
        self.running.add(spec.name)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceStatus:
        self.calls.append(("wait", spec.name))
        await asyncio.sleep(0)
        if spec.name == self.fail_wait:
            raise errors.ServiceFailed(f"{spec.name} exited with status 1")
        return ServiceStatus(spec.name, RUNNING)

    async def status(self, spec: ServiceSpec) -> ServiceStatus:
        return ServiceStatus(spec.name, RUNNING if spec.name in self.running else STOPPED)

    async def stop(self, spec: ServiceSpec) -> None:
        self.calls.append(("stop", spec.name))
        self.running.discard(spec.name)

    async def close(self) -> None:
        pass

    async def log_tail(self, spec: ServiceSpec, lines: int = 20) -> str:
        return ""


@pytest.fixture
def agent_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(manager: RecordingManager) -> tuple[Agent, dict[str, str]]:
        config = DaemonConfig(
            state_dir=tmp_path / "state",
            socket=tmp_path / "sock",
            listen_host="127.0.0.1",
            listen_port=10002,
            cluster_port=10003,
            node_name="node-1",
            hostname="node-1",
            service_manager="process",
            config_root=tmp_path / "etc",
        )
        ctl = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
        settings = control_config.issue_compute_settings(ctl, NODE)
        return Agent(config, Store(config.state_dir), manager), settings

    return make


def _apply(agent: Agent, settings: dict[str, str]) -> tuple[list[AgentStep], Exception | None]:
    steps: list[AgentStep] = []

    async def run() -> None:
        async for step in agent.apply_role("compute", settings):
            steps.append(step)

    try:
        asyncio.run(run())
    except errors.MicrostackError as exc:
        return steps, exc
    return steps, None


def test_standins_start_together_and_report_in_order(agent_for) -> None:  # type: ignore[no-untyped-def]
    assert len(SERVICES) == 2
    manager = RecordingManager()
    agent, settings = agent_for(manager)
    steps, failure = _apply(agent, settings)
    assert failure is None
    # Both started before the first is waited for; then waited for in order.
    assert manager.calls == [("restart", s) for s in SERVICES] + [("wait", s) for s in SERVICES]
    shown = [(s.step, s.state, s.message.split(" (")[0]) for s in steps]
    expected = [("render-config", StepState.RUNNING), ("render-config", StepState.DONE)]
    for name in SERVICES:
        expected += [(f"service {name}", StepState.RUNNING), (f"service {name}", StepState.DONE)]
    expected.append(("role", StepState.DONE))
    assert [(step, state) for step, state, _ in shown] == expected
    assert shown[2][2] == f"starting {SERVICES[0]} through process"
    assert shown[3][2] == f"{SERVICES[0]} is running"
    assert steps[-1].message == "role compute applied: 2/2 services running"


def test_a_failed_standin_leaves_none_after_it_running(agent_for) -> None:  # type: ignore[no-untyped-def]
    manager = RecordingManager(fail_wait=SERVICES[0])
    agent, settings = agent_for(manager)
    steps, failure = _apply(agent, settings)
    assert isinstance(failure, errors.ServiceFailed)
    assert f"{SERVICES[0]} exited" in failure.message
    assert SERVICES[1] not in manager.running  # the later one was stopped
    assert ("stop", SERVICES[1]) in manager.calls
    assert [s.step for s in steps][-1] == f"service {SERVICES[0]}"  # reported as it started


def test_a_standin_that_cannot_start_fails_at_its_turn(agent_for) -> None:  # type: ignore[no-untyped-def]
    manager = RecordingManager(fail_start=SERVICES[1])
    agent, settings = agent_for(manager)
    steps, failure = _apply(agent, settings)
    assert isinstance(failure, errors.ServiceFailed)
    assert failure.message == f"{SERVICES[1]}: cannot run it"
    # The first was still waited for and reported running, as before.
    assert ("wait", SERVICES[0]) in manager.calls
    assert (f"service {SERVICES[0]}", StepState.DONE) in [(s.step, s.state) for s in steps]
    assert steps[-1].step == f"service {SERVICES[1]}" and steps[-1].state is StepState.RUNNING
