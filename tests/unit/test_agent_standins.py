"""The agent starts a role's stand-ins together and reports them one by one,
with the same events, in the same order, as when it started them one after
the other; a failure leaves none of the later ones running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from microstackd import commands, errors
from microstackd.config import DaemonConfig
from microstackd.control import config as control_config
from microstackd.enrolment.events import EventBus
from microstackd.enrolment.runner import Runner
from microstackd.model import AgentStep, NodeRecord, NodeState, Role, ServiceRecord, StepState
from microstackd.node.agent import APPLIED_ROLE, Agent
from microstackd.node.roles import DEFINITIONS
from microstackd.node.services import ServiceSpec
from microstackd.node.services.spec import RUNNING, STOPPED
from microstackd.store import Store

#: A CRL as the control issues it (its content does not matter here).
CRL = "-----BEGIN X509 CRL-----\n-----END X509 CRL-----"

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
SERVICES = [s.name for s in DEFINITIONS[Role.COMPUTE].services if not s.real_only]


class RecordingManager:
    """A ServiceManager that records what it was asked, in order."""

    kind = "process"

    def __init__(self, fail_wait: str = "", fail_start: str = "", hang_wait: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.running: set[str] = set()
        self.fail_wait, self.fail_start, self.hang_wait = fail_wait, fail_start, hang_wait
        self.waiting = asyncio.Event()  # set once hang_wait is being waited for

    async def restart(self, spec: ServiceSpec) -> None:
        self.calls.append(("restart", spec.name))
        if spec.name == self.fail_start:
            raise errors.ServiceFailed(f"{spec.name}: cannot run it")
        self.running.add(spec.name)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
        self.calls.append(("wait", spec.name))
        await asyncio.sleep(0)
        if spec.name == self.hang_wait:
            self.waiting.set()
            await asyncio.Event().wait()  # until cancelled
        if spec.name == self.fail_wait:
            raise errors.ServiceFailed(f"{spec.name} exited with status 1")
        return ServiceRecord(spec.name, RUNNING)

    async def status(self, spec: ServiceSpec) -> ServiceRecord:
        return ServiceRecord(spec.name, RUNNING if spec.name in self.running else STOPPED)

    async def stop(self, spec: ServiceSpec) -> None:
        self.calls.append(("stop", spec.name))
        self.running.discard(spec.name)

    async def close(self) -> None:
        pass

    async def log_tail(self, spec: ServiceSpec, lines: int = 20) -> str:
        return ""


def _config(tmp_path: Path, openstack_prefix: Path | None = None) -> DaemonConfig:
    return DaemonConfig(
        state_dir=tmp_path / "state",
        socket=tmp_path / "sock",
        listen_host="127.0.0.1",
        listen_port=10002,
        cluster_port=10003,
        node_name="node-1",
        hostname="node-1",
        service_manager="process",
        config_root=tmp_path / "etc",
        openstack_prefix=openstack_prefix,
    )


#: Makes an agent on the given manager, and the settings it applies.
AgentFor = Callable[[RecordingManager], tuple[Agent, dict[str, str]]]


@pytest.fixture
def agent_for(tmp_path: Path) -> AgentFor:
    def make(manager: RecordingManager) -> tuple[Agent, dict[str, str]]:
        config = _config(tmp_path)
        ctl = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
        settings = control_config.issue_compute_settings(ctl, NODE, revocation_list=CRL)
        store = Store(config.state_dir)
        return Agent(config, store, manager, Runner(store, EventBus(store))), settings

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


def test_standins_start_together_and_report_in_order(
    agent_for: AgentFor,
) -> None:
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


def test_a_failed_standin_leaves_none_after_it_running(
    agent_for: AgentFor,
) -> None:
    manager = RecordingManager(fail_wait=SERVICES[0])
    agent, settings = agent_for(manager)
    steps, failure = _apply(agent, settings)
    assert isinstance(failure, errors.ServiceFailed)
    assert f"{SERVICES[0]} exited" in failure.message
    assert SERVICES[1] not in manager.running  # the later one was stopped
    assert ("stop", SERVICES[1]) in manager.calls
    assert [s.step for s in steps][-1] == f"service {SERVICES[0]}"  # reported as it started


def test_a_standin_that_cannot_start_fails_at_its_turn(
    agent_for: AgentFor,
) -> None:
    manager = RecordingManager(fail_start=SERVICES[1])
    agent, settings = agent_for(manager)
    steps, failure = _apply(agent, settings)
    assert isinstance(failure, errors.ServiceFailed)
    assert failure.message == f"{SERVICES[1]}: cannot run it"
    # The first was still waited for and reported running, as before.
    assert ("wait", SERVICES[0]) in manager.calls
    assert (f"service {SERVICES[0]}", StepState.DONE) in [(s.step, s.state) for s in steps]
    assert steps[-1].step == f"service {SERVICES[1]}" and steps[-1].state is StepState.RUNNING


def test_a_cancelled_apply_leaves_none_after_the_waited_one_running(
    agent_for: AgentFor,
) -> None:
    # The control went away mid-apply (its call cancelled): as when they were
    # started one by one, the stand-ins after the one being waited for do not run.
    manager = RecordingManager(hang_wait=SERVICES[0])
    agent, settings = agent_for(manager)

    async def run() -> None:
        async def consume() -> None:
            async for _ in agent.apply_role("compute", settings):
                pass

        task = asyncio.create_task(consume())
        await asyncio.wait_for(manager.waiting.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert manager.calls[-1] == ("stop", SERVICES[1])
    assert manager.running == {SERVICES[0]}


def test_a_new_revocation_list_is_written_where_libvirtd_reads_it(
    agent_for: AgentFor, tmp_path: Path
) -> None:
    """A removal elsewhere: the agent rewrites the CRL (here stand-ins run, so
    no libvirtd of the node's own reloads it, and the agent says so)."""
    agent, settings = agent_for(RecordingManager())
    before = asyncio.run(agent.update_revocations(b"-----BEGIN X509 CRL-----\n"))
    assert before == "no migration transport on this node: nothing to update"
    assert _apply(agent, settings)[1] is None
    crl = tmp_path / "etc" / "libvirt" / "pki" / "ca-crl.pem"
    assert crl.read_text().strip() == CRL
    new = b"-----BEGIN X509 CRL-----\nnew\n-----END X509 CRL-----\n"
    told = asyncio.run(agent.update_revocations(new))
    assert told == f"{crl} written (libvirtd is not this node's own: not reloaded)"
    assert crl.read_bytes() == new
    with pytest.raises(errors.InvalidArgument, match="not a PEM CRL"):
        asyncio.run(agent.update_revocations(b"nonsense"))
    assert crl.read_bytes() == new


def test_a_renewed_certificate_or_new_ca_is_reloaded_by_the_nodes_libvirtd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """libvirtd reads its TLS files only at start: after a renewal or a CA
    rotation the agent has it reload them (else a live migration meets the
    previous certificate, revoked or under a retired CA). Only where the
    compute role, with its migration transport, is applied; a failure is
    logged, never raised into the renewal."""
    config = _config(tmp_path, tmp_path / "openstack")  # real services: libvirtd is its own
    store = Store(config.state_dir)
    agent = Agent(config, store, RecordingManager(), Runner(store, EventBus(store)))
    ran: list[tuple[str, ...]] = []
    returncode = 0

    async def fake_run(argv: tuple[str, ...], *, timeout: float, **_: object) -> commands.Completed:
        ran.append(tuple(argv))
        return commands.Completed(tuple(argv), returncode, "", "error: no server 'libvirtd'")

    monkeypatch.setattr(commands, "run", fake_run)

    asyncio.run(agent.certificates_changed())  # no role yet
    store.set_meta({APPLIED_ROLE: "control"})
    asyncio.run(agent.certificates_changed())  # no migration transport on a control
    assert ran == []

    store.set_meta({APPLIED_ROLE: "compute"})
    with caplog.at_level(logging.INFO, logger="microstackd.node.agent"):
        asyncio.run(agent.certificates_changed())
    admin = tmp_path / "sock.services" / "libvirt" / "libvirt-admin-sock"  # steps.run_dir
    assert ran == [
        ("virt-admin", "-c", f"libvirtd:///system?socket={admin}", "server-update-tls", "libvirtd")
    ]
    assert "migration TLS credentials changed and reloaded by libvirtd" in caplog.text

    returncode = 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="microstackd.node.agent"):
        asyncio.run(agent.certificates_changed())  # does not raise
    assert "migration TLS not reloaded" in caplog.text
    assert "libvirtd did not reload it: error: no server 'libvirtd'" in caplog.text
