"""The control's cloud: which cloud, nova-manage detection, and the
operations in-process against a stand-in for openstacksdk's connection."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackd import cloud, errors
from microstackd.cloud import CloudRef, connection, ops, session
from microstackd.cloud.service import Cloud
from microstackd.control import config as control_config
from microstackd.enrolment import machine as enrolment
from microstackd.model import StepState
from microstackd.wire import convert


def test_resolve_prefers_the_section_then_os_cloud() -> None:
    section = {"name": "microstack", "clouds_yaml": "/s/clouds.yaml"}
    assert cloud.resolve(section, {"OS_CLOUD": "other"}) == cloud.CloudRef(
        "microstack", "/s/clouds.yaml"
    )
    assert cloud.resolve({}, {"OS_CLOUD": "other"}) == cloud.CloudRef("other", "")
    env = {"OS_CLOUD": "other", "OS_CLIENT_CONFIG_FILE": "/e/clouds.yaml"}
    assert cloud.resolve(None, env) == cloud.CloudRef("other", "/e/clouds.yaml")
    assert cloud.resolve({"clouds_yaml": "/s/c.yaml"}, {}) is None
    assert cloud.resolve("junk", {}) is None


def test_nova_manage_detection(tmp_path: Path) -> None:
    prefix, root = tmp_path / "env", tmp_path / "etc"
    assert cloud.nova_manage_argv(None, root) is None
    assert cloud.nova_manage_argv(prefix, root) is None
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "nova-manage").touch()
    assert cloud.nova_manage_argv(prefix, root) is None  # no nova.conf: not our Nova
    (root / "nova").mkdir(parents=True)
    (root / "nova" / "nova.conf").touch()
    assert cloud.nova_manage_argv(prefix, root) == [
        str(prefix / "bin" / "nova-manage"),
        "--config-file",
        str(root / "nova" / "nova.conf"),
    ]


def test_compute_plan_admits_to_cloud_before_done() -> None:
    plan = enrolment.COMPUTE_PLAN
    assert plan[-2:] == (enrolment.ADMIT_TO_CLOUD, enrolment.DONE)
    assert plan.index(enrolment.CONFIGURE_NODE) < plan.index(enrolment.ADMIT_TO_CLOUD)


def test_control_config_reads_the_cloud_section(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    assert control_config.ensure(path, "10.0.0.1").cloud == ()
    control_config.record_cloud(path, tmp_path / "clouds.yaml")
    config = control_config.ensure(path, "10.0.0.1")
    assert cloud.resolve(dict(config.cloud), {}) == cloud.CloudRef(
        "microstack", str(tmp_path / "clouds.yaml")
    )


class _Service:
    def __init__(self, host: str, state: str, status: str = "enabled") -> None:
        self.host, self.binary, self.state, self.status = host, "nova-compute", state, status
        self.disabled_reason = None


class _Compute:
    """Enough of openstacksdk's compute proxy for admit and view."""

    def __init__(self) -> None:
        self.states = iter(["down", "down", "up"])

    def services(self, **query: str) -> list[_Service]:
        return [_Service("node1", next(self.states, "up"))]

    def hypervisors(self, details: bool = False) -> list[object]:
        class H:
            name, state, status, service_details = "node1", "up", "enabled", {"host": "node1"}

        return [H()]

    def servers(self, **query: object) -> list[object]:
        return []


class _Placement:
    """Placement as nova-compute left it: the host's provider and its inventory."""

    def resource_providers(self, **query: str) -> list[object]:
        class P:
            id, name = "p1", "node1"

        return [P()]

    def resource_provider_inventories(self, provider: object) -> list[object]:
        class Inventory:
            def __init__(self, rc: str) -> None:
                self.resource_class = rc

        return [Inventory("VCPU"), Inventory("MEMORY_MB"), Inventory("DISK_GB")]


class _Agent:
    def __init__(self, alive: bool, configuration: dict[str, object]) -> None:
        self.id, self.host, self.is_alive, self.configuration = "a1", "node1", alive, configuration


class _Network:
    """Neutron as a starting compute's OVS agent fills it: registered, alive,
    then with its tunnel address."""

    def __init__(self) -> None:
        self.agents_seen = iter(
            [
                [],
                [_Agent(False, {})],
                [_Agent(True, {})],
                [_Agent(True, {"tunneling_ip": "10.0.0.11"})],
            ]
        )

    def agents(self, **query: str) -> list[_Agent]:
        assert query == {"host": "node1", "binary": "neutron-openvswitch-agent"}, query
        return next(self.agents_seen, [_Agent(True, {"tunneling_ip": "10.0.0.11"})])


class _Conn:
    def __init__(self) -> None:
        self.compute = _Compute()
        self.placement = _Placement()
        self.network = _Network()
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> list[_Conn]:
    """Connections made to a stand-in cloud; fast polls. The admit tests'
    time-outs are generous: the first check imports openstacksdk's
    exceptions, which took over 5 s once on a loaded machine."""
    made: list[_Conn] = []

    def connect(ref: CloudRef) -> _Conn:
        made.append(_Conn())
        return made[-1]

    monkeypatch.setattr(connection, "_connect", connect)
    monkeypatch.setattr(session, "POLL", 0.01)
    return made


def test_admit_streams_what_it_waits_for_and_reuses_one_connection(fake_cloud: list[_Conn]) -> None:
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    seen: list[tuple[str, bool]] = []

    async def progress(note: cloud.Note) -> None:
        seen.append((note.message, note.state is StepState.WAITING))

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        admitted = await service.run(
            "admit", {"host": "node1", "timeout": 120, "discover_interval": 0}, progress
        )
        viewed = await service.run("view", {})
        return admitted, viewed

    admitted, viewed = asyncio.run(go())
    assert admitted["service"] == "nova-compute up, enabled"
    assert admitted["hypervisor"] == "hypervisor node1 up, enabled"
    assert admitted["provider"] == "resource provider p1 with DISK_GB, MEMORY_MB, VCPU"
    assert re.fullmatch(
        r"waiting for nova-compute on node1 to be up \(\d+ s so far; nova-compute down, enabled\)",
        seen[0][0],
    )
    assert seen[0][1]  # waiting
    assert seen[1][0].startswith("nova-compute on node1 to be up: nova-compute up, enabled after")
    assert viewed["hosts"]["node1"]["compute_service"] == "up"
    assert len(fake_cloud) == 1  # one connection for both operations
    assert admitted["tunnel"] == admitted["network_agent"] == ""  # not asked for
    service.close()


def test_admit_asked_waits_for_the_hosts_network_agent_and_its_tunnel_address(
    fake_cloud: list[_Conn],
) -> None:
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    seen: list[str] = []

    async def progress(note: cloud.Note) -> None:
        seen.append(note.message)

    request = {"host": "node1", "timeout": 120, "discover_interval": 0, "network_agent": True}
    admitted = asyncio.run(service.run("admit", request, progress))
    assert admitted["tunnel"] == "10.0.0.11"
    assert admitted["network_agent"] == (
        "neutron-openvswitch-agent a1 alive, tunnel address 10.0.0.11"
    )
    waits = [m for m in seen if m.startswith("waiting for the network agent of node1")]
    assert any("no neutron-openvswitch-agent registered in Neutron yet" in m for m in waits), seen
    assert any("registered, not alive yet" in m for m in waits), seen
    assert any("alive, no tunnel address reported yet" in m for m in waits), seen
    service.close()
    assert fake_cloud[0].closed


def test_a_wait_times_out_naming_the_host_and_the_last_state(fake_cloud: list[_Conn]) -> None:
    async def never() -> tuple[bool, str]:
        return False, "nova-compute down, enabled"

    s = session.Session(connection.Connections(), CloudRef("c"))
    with pytest.raises(session.Failure) as failed:
        asyncio.run(session.wait(s, "nova-compute on node1 to be up", never, 0.05, "node1"))
    assert failed.value.kind == "timeout"
    assert failed.value.message.startswith(
        "node1: timed out after 0 s waiting for nova-compute on node1 to be up"
    )
    assert failed.value.message.endswith("last state seen: nova-compute down, enabled")


def test_an_operation_over_its_time_is_a_cloud_error(fake_cloud: list[_Conn]) -> None:
    service = Cloud(lambda: CloudRef("c"))
    with pytest.raises(
        errors.CloudError, match="cloud operation admit did not finish within 0.05 s"
    ):
        asyncio.run(service.run("admit", {"host": "nowhere", "timeout": 60}, timeout=0.05))
    with pytest.raises(errors.CloudError, match="no cloud configured"):
        asyncio.run(Cloud(lambda: None).run("view", {}))


def test_nova_view_renders() -> None:
    node = pb.Node(name="n1", role=pb.ROLE_COMPUTE)
    assert render.nova_text(node) == "-"
    assert render.node_dict(node)["nova"] is None
    node.nova.CopyFrom(
        convert.nova_host_to_pb(
            {"compute_service": "up", "hypervisor": "up", "running_instances": 2, "drained": True}
        )
    )
    assert render.nova_text(node) == "up drained, hv up, 2 running"
    assert render.node_dict(node)["nova"] == {
        "compute_service": "up",
        "hypervisor": "up",
        "running_instances": 2,
        "drained": True,
    }


def test_status_table_shows_nova_only_when_known() -> None:
    import io

    from rich.console import Console

    from microstackctl import render as r

    status = pb.StatusResponse(local_node="ctl", local_role=pb.ROLE_CONTROL)
    status.cluster.id = "c1"
    status.nodes.add(name="ctl", role=pb.ROLE_CONTROL, state="active")
    compute = status.nodes.add(name="n1", role=pb.ROLE_COMPUTE, state="active")

    def table() -> str:
        buf = io.StringIO()
        r.print_status(status, Console(file=buf, width=200, highlight=False))
        return buf.getvalue()

    assert "NOVA" not in table()
    compute.nova.CopyFrom(pb.NovaHost(compute_service="up", hypervisor="up", running_instances=1))
    out = table()
    assert "NOVA" in out and "up, hv up, 1 running" in out


def test_ensure_key_makes_and_reads_the_keypair(tmp_path: Path) -> None:
    import shutil

    from microstackctl import cmd_launch

    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen here")
    key = tmp_path / ".ssh" / "id_microstack"
    public = cmd_launch.ensure_key(key)
    assert public.startswith("ssh-ed25519 ") and key.exists()
    assert cmd_launch.ensure_key(key) == public  # kept, not remade
    assert cmd_launch.ssh_command(Path("~/.ssh/id_microstack"), "10.232.0.7") == (
        "ssh -i ~/.ssh/id_microstack cirros@10.232.0.7"
    )


def _fake_nova_manage(tmp_path: Path, seconds: float, status: int = 0) -> tuple[list[str], Path]:
    """A nova-manage whose every run is a line in a file (and takes ``seconds``)."""
    runs = tmp_path / "runs"
    script = f'echo "$*" >> {runs}; sleep {seconds}; exit {status}'
    return ["/bin/sh", "-c", script, "nova-manage"], runs


def test_discover_hosts_runs_once_for_callers_at_once_and_again_after(tmp_path: Path) -> None:
    argv, runs = _fake_nova_manage(tmp_path, 0.3)

    async def go() -> None:
        await asyncio.gather(*(ops.discover_hosts(argv) for _ in range(3)))
        assert runs.read_text().splitlines() == ["cell_v2 discover_hosts"]
        await ops.discover_hosts(argv)  # the one before is over: a new run

    asyncio.run(go())
    assert runs.read_text().splitlines() == ["cell_v2 discover_hosts"] * 2


def test_a_failed_discover_hosts_fails_every_caller_waiting_on_it(tmp_path: Path) -> None:
    argv, runs = _fake_nova_manage(tmp_path, 0.1, status=3)

    async def go() -> list[BaseException | None]:
        return await asyncio.gather(
            *(ops.discover_hosts(argv) for _ in range(2)), return_exceptions=True
        )

    failures = asyncio.run(go())
    assert all(isinstance(f, session.Failure) for f in failures), failures
    assert "nova-manage cell_v2 discover_hosts exited 3" in str(failures[0])
    assert len(runs.read_text().splitlines()) == 1


def test_admit_takes_the_listed_hypervisor_as_the_mapping_and_discovers_when_it_is_not(
    fake_cloud: list[_Conn], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nova lists a hypervisor once its host is in a cell: until then admit
    runs discover_hosts (here at once: a discovery period of 0 s)."""
    argv, runs = _fake_nova_manage(tmp_path, 0.0)
    listed = _Compute.hypervisors

    def hypervisors(self: _Compute, details: bool = False) -> list[object]:
        return listed(self, details) if runs.exists() else []

    monkeypatch.setattr(_Compute, "hypervisors", hypervisors)
    monkeypatch.setattr(ops, "MAPPED_POLL", 0.01)
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    seen: list[str] = []

    async def progress(note: cloud.Note) -> None:
        seen.append(note.message)

    request = {"host": "node1", "timeout": 120, "discover_interval": 0, "nova_manage": argv}
    admitted = asyncio.run(service.run("admit", request, progress))
    assert runs.read_text().splitlines() == ["cell_v2 discover_hosts"]
    assert admitted["hypervisor"] == "hypervisor node1 up, enabled"
    assert admitted["mapping"] == (
        "mapped to a cell (Nova lists its hypervisor, "
        "nova-manage cell_v2 discover_hosts run 1 time(s))"
    )
    service.close()
    # Listed already (nova-scheduler's discovery mapped it): no nova-manage.
    runs.write_text("")
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    admitted = asyncio.run(service.run("admit", request, progress))
    assert (
        runs.read_text() == ""
        and admitted["mapping"] == "mapped to a cell (Nova lists its hypervisor)"
    )
    service.close()


def test_an_api_that_refuses_connections_is_a_cloud_error_and_status_still_answers(
    fake_cloud: list[_Conn], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """nova-api restarting (its port closed): keystoneauth raises
    ConnectFailure, which openstacksdk lets through. It is a CloudError
    naming it, and Nova's view in ``status`` is empty rather than the whole
    status call an internal error (seen in the rotation's kill test)."""
    from keystoneauth1 import exceptions as auth

    def refused(self: _Compute, **query: object) -> list[object]:
        raise auth.ConnectFailure("Unable to establish connection to http://10.0.0.1:8774")

    monkeypatch.setattr(_Compute, "services", refused, raising=False)
    service = Cloud(lambda: CloudRef("c"))
    with pytest.raises(errors.CloudError, match="ConnectFailure: Unable to establish connection"):
        asyncio.run(service.run("view", {}))
    assert asyncio.run(service.nova_view()) == {}
    assert "cannot read Nova's view" in caplog.text
