"""A host's removal from the cloud (cloud/hosts.py) against a stand-in of
openstacksdk's proxies: its compute service, its compute node and resource
provider, its Neutron agents, each gone and checked; a host that still hosts
servers keeps its service, disabled and forced down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from microstackd import errors
from microstackd.cloud import CloudRef, Note, connection, hosts, session
from microstackd.cloud.service import Cloud


@dataclass
class Thing:
    id: str
    host: str = ""
    name: str = ""
    binary: str = "nova-compute"
    status: str = "enabled"
    state: str = "up"
    is_forced_down: bool = False
    compute_host: str = ""
    task_state: str | None = None
    service_details: dict[str, str] = field(default_factory=dict)


class FakeCloud:
    """Nova, Neutron and Placement for two hosts; Nova's service delete takes
    the compute node and (unless ``nova_leaves_provider``) the provider."""

    def __init__(self) -> None:
        self.services = [Thing("s1", "node-1"), Thing("s2", "node-2")]
        self.nodes = [
            Thing("n1", name="node-1", service_details={"host": "node-1"}),
            Thing("n2", name="node-2", service_details={"host": "node-2"}),
        ]
        self.providers = [Thing("p1", name="node-1"), Thing("p2", name="node-2")]
        self.agents = [
            Thing("a1", "node-1", binary="neutron-openvswitch-agent"),
            Thing("a2", "node-2", binary="neutron-openvswitch-agent"),
            Thing("a3", "control", binary="neutron-dhcp-agent"),
        ]
        self.servers: list[Thing] = []
        self.nova_leaves_provider = False
        self.calls: list[str] = []

    def left(self, host: str) -> list[str]:
        return [
            *(s.id for s in self.services if s.host == host),
            *(n.id for n in self.nodes if n.name == host),
            *(p.id for p in self.providers if p.name == host),
            *(a.id for a in self.agents if a.host == host),
        ]


class Nova:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def services(self, **query: str) -> list[Thing]:
        return [s for s in self.c.services if s.host == query.get("host", s.host)]

    def hypervisors(self, details: bool = False) -> list[Thing]:
        return list(self.c.nodes)

    def servers(self, **query: Any) -> list[Thing]:
        return [s for s in self.c.servers if s.compute_host == query.get("compute_host")]

    def disable_service(self, svc: Thing, **kw: str) -> None:
        self.c.calls.append(f"disable {svc.id}")
        svc.status = "disabled"

    def update_service_forced_down(self, svc: Thing, **kw: object) -> None:
        self.c.calls.append(f"force-down {svc.id}")
        svc.is_forced_down = True

    def delete_service(self, svc: Thing, ignore_missing: bool = False) -> None:
        self.c.calls.append(f"delete {svc.id}")
        if any(s.compute_host == svc.host for s in self.c.servers):
            raise AssertionError("Nova refuses to delete a service hosting instances")
        self.c.services.remove(svc)
        self.c.nodes = [n for n in self.c.nodes if n.name != svc.host]
        if not self.c.nova_leaves_provider:
            self.c.providers = [p for p in self.c.providers if p.name != svc.host]


class Neutron:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud
        self.deletes = True

    def agents(self, **query: str) -> list[Thing]:
        return [a for a in self.c.agents if a.host == query.get("host", a.host)]

    def delete_agent(self, agent: Thing, ignore_missing: bool = False) -> None:
        self.c.calls.append(f"delete agent {agent.id}")
        if self.deletes:
            self.c.agents.remove(agent)


class Placement:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def resource_providers(self, **query: str) -> list[Thing]:
        return [p for p in self.c.providers if p.name == query.get("name", p.name)]

    def delete_resource_provider(self, provider: Thing, ignore_missing: bool = False) -> None:
        self.c.calls.append(f"delete provider {provider.id}")
        self.c.providers.remove(provider)


class Conn:
    def __init__(self, cloud: FakeCloud, nova: type[Nova] = Nova) -> None:
        self.compute, self.network, self.placement = nova(cloud), Neutron(cloud), Placement(cloud)

    def close(self) -> None:
        pass


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> Conn:
    made = Conn(FakeCloud())
    monkeypatch.setattr(connection, "_connect", lambda ref: made)
    monkeypatch.setattr(session, "POLL", 0.01)
    return made


@pytest.fixture
def fake(conn: Conn) -> FakeCloud:
    return conn.compute.c


def run(op: str, host: str) -> dict[str, Any]:
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    try:
        return asyncio.run(service.run(op, {"host": host}))
    finally:
        service.close()


def test_a_removal_takes_everything_the_cloud_holds_for_the_host(fake: FakeCloud) -> None:
    result = run("remove", "node-2")
    assert fake.left("node-2") == []
    assert fake.left("node-1") == ["s1", "n1", "p1", "a1"]  # the other host untouched
    assert fake.calls == ["disable s2", "delete s2", "delete agent a2"]
    assert result["message"] == (
        "Nova compute service on node-2 deleted; 1 Neutron agent(s) deleted"
    )


def test_a_provider_nova_left_is_deleted_too(fake: FakeCloud) -> None:
    fake.nova_leaves_provider = True
    result = run("remove", "node-2")
    assert fake.left("node-2") == []
    assert "delete provider p2" in fake.calls
    assert "1 resource provider(s) Nova left deleted" in result["message"]


def test_a_host_with_servers_keeps_its_service_disabled_and_forced_down(fake: FakeCloud) -> None:
    fake.servers = [
        Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2"),
        Thing("v2", name="vm2", status="SHUTOFF", compute_host="node-2"),
    ]
    result = run("remove", "node-2")
    assert fake.calls == ["disable s2", "force-down s2", "delete agent a2"]
    assert fake.left("node-2") == ["s2", "n2", "p2"]
    assert [v["name"] for v in result["instances"]] == ["vm1", "vm2"]
    assert "disabled and forced down but kept" in result["message"]
    assert "vm1 (ACTIVE), vm2 (SHUTOFF)" in result["message"]


def test_instances_lists_the_servers_on_the_host_only(fake: FakeCloud) -> None:
    fake.servers = [
        Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2"),
        Thing("v3", name="vm3", status="ACTIVE", compute_host="node-1"),
    ]
    assert run("instances", "node-2")["instances"] == [
        {"id": "v1", "name": "vm1", "status": "ACTIVE"}
    ]


def test_what_is_still_there_after_a_removal_fails_it_by_name(conn: Conn) -> None:
    conn.network.deletes = False
    with pytest.raises(errors.CloudError, match=r"node-2: the cloud still holds Neutron "):
        run("remove", "node-2")


def test_describe_names_a_few_and_counts_the_rest() -> None:
    servers = [{"name": f"vm{i}", "status": "ACTIVE"} for i in range(7)]
    assert hosts.describe(servers) == (
        "vm0 (ACTIVE), vm1 (ACTIVE), vm2 (ACTIVE), vm3 (ACTIVE), vm4 (ACTIVE) and 2 more"
    )


# ---------------------------------------------------------------- drain --


class Moving(Nova):
    """Nova moving servers: a live migration, a start, a stop or an
    evacuation takes effect at the next look; ``stuck`` never moves."""

    def __init__(self, cloud: FakeCloud) -> None:
        super().__init__(cloud)
        self.pending: dict[str, tuple[str, str]] = {}
        self.stuck = False
        self.aborted: list[str] = []

    def _find(self, server_id: str) -> Thing:
        return next(s for s in self.c.servers if s.id == server_id)

    def get_server(self, server_id: str) -> Thing:
        server = self._find(server_id)
        if server_id in self.pending and not self.stuck:
            server.compute_host, server.status = self.pending.pop(server_id)
        return server

    def live_migrate_server(self, server_id: str, block_migration: str = "") -> None:
        self.c.calls.append(f"live {server_id} {block_migration}")
        server = self._find(server_id)
        server.status = "MIGRATING"
        self.pending[server_id] = ("node-1", "ACTIVE")

    def start_server(self, server_id: str) -> None:
        self.c.calls.append(f"start {server_id}")
        self.pending[server_id] = (self._find(server_id).compute_host, "ACTIVE")

    def stop_server(self, server_id: str) -> None:
        self.c.calls.append(f"stop {server_id}")
        self.pending[server_id] = (self._find(server_id).compute_host, "SHUTOFF")

    def post(self, url: str, json: dict[str, Any], microversion: str) -> Any:
        server_id = url.split("/")[2]
        assert url == f"/servers/{server_id}/action" and "evacuate" in json, (url, json)
        self.c.calls.append(f"evacuate {server_id} at {microversion}")
        self.pending[server_id] = ("node-1", "ACTIVE")

        class Response:
            status_code = 202
            headers: dict[str, str] = {}

        return Response()

    def migrations(self, **query: str) -> list[Thing]:
        return []

    def server_migrations(self, server_id: str) -> list[str]:
        return [f"migration-of-{server_id}"]

    def abort_server_migration(self, migration: str, server_id: str, **kw: object) -> None:
        self.aborted.append(migration)

    def enable_service(self, svc: Thing, **kw: str) -> None:
        self.c.calls.append(f"enable {svc.id}")
        svc.status = "enabled"


@pytest.fixture
def moving(monkeypatch: pytest.MonkeyPatch) -> Moving:
    made = Conn(FakeCloud(), Moving)
    monkeypatch.setattr(connection, "_connect", lambda ref: made)
    monkeypatch.setattr(session, "POLL", 0.01)
    monkeypatch.setattr(hosts, "POLL", 0.01)
    assert isinstance(made.compute, Moving)
    return made.compute


def drain(request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    service = Cloud(lambda: CloudRef("c", "/x/clouds.yaml"))
    seen: list[str] = []

    async def progress(note: Note) -> None:
        seen.append(note.message)

    try:
        return asyncio.run(service.run("drain", request, progress)), seen
    finally:
        service.close()


def test_drain_moves_running_servers_live_and_stopped_ones_started_and_stopped(
    moving: Moving,
) -> None:
    c = moving.c
    c.servers = [
        Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2"),
        Thing("v2", name="vm2", status="SHUTOFF", compute_host="node-2"),
    ]
    result, seen = drain({"host": "node-2"})
    assert c.calls == ["disable s2", "live v1 auto", "start v2", "live v2 auto", "stop v2"]
    assert [(m["name"], m["how"], m["host"], m["status"]) for m in result["moved"]] == [
        ("vm1", "live", "node-1", "ACTIVE"),
        ("vm2", "cold", "node-1", "SHUTOFF"),
    ]
    assert seen[0] == "nova-compute on node-2 disabled: no new instance lands there"
    assert any(m.startswith("vm1 (1 of 2): live to node-1 in") for m in seen), seen
    assert c.services[1].status == "disabled"


def test_drain_of_a_host_that_is_down_forces_it_down_and_evacuates(moving: Moving) -> None:
    c = moving.c
    c.servers = [Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2")]
    result, seen = drain({"host": "node-2", "host_down": True})
    assert c.calls == ["disable s2", "force-down s2", "evacuate v1 at 2.29"]
    assert result["moved"][0]["how"] == "evacuated"


def test_a_move_past_its_deadline_is_aborted_and_fails_naming_the_server(moving: Moving) -> None:
    c = moving.c
    c.servers = [Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2")]
    moving.stuck = True
    with pytest.raises(errors.CloudError, match=r"vm1: live migration did not finish within 0 s"):
        drain({"host": "node-2", "instance_timeout": 0.05})
    assert moving.aborted == ["migration-of-v1"]


def test_a_server_in_error_on_a_host_that_is_up_is_not_moved(moving: Moving) -> None:
    c = moving.c
    c.servers = [Thing("v1", name="vm1", status="ERROR", compute_host="node-2")]
    with pytest.raises(errors.CloudError, match="vm1 is ERROR on node-2, which is up"):
        drain({"host": "node-2"})


def test_a_drain_with_nowhere_to_go_moves_nothing_and_says_so(moving: Moving) -> None:
    c = moving.c
    c.servers = [Thing("v1", name="vm1", status="ACTIVE", compute_host="node-2")]
    c.services[0].status = "disabled"  # node-1, the only other compute
    with pytest.raises(errors.CloudError, match="no other compute can take them"):
        drain({"host": "node-2"})
    assert c.calls == ["disable s2"]


def test_undrain_enables_the_service_again(moving: Moving) -> None:
    c = moving.c
    c.services[1].status, c.services[1].is_forced_down = "disabled", True
    result = run("undrain", "node-2")
    assert c.calls == ["force-down s2", "enable s2"]
    assert result["message"] == (
        "nova-compute on node-2 no longer forced down and enabled: instances may land there again"
    )
