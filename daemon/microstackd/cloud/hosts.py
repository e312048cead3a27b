"""What the cloud holds for one compute host, and taking it all away:

    instances  the servers Nova places on HOST (every project)
    drain      disable HOST's compute service, move every server away (live
               migration over TLS; a stopped one started, moved and stopped
               again; evacuated when HOST is down) and end when it is empty
    undrain    enable it again
    remove     HOST's nova-compute service (and with it, in Nova, its compute
               node and its Placement resource provider), every Neutron agent
               of HOST, and whatever of those Nova left behind; then checks
               that none of them is left

A host that still hosts servers keeps its compute service (Nova refuses to
delete it): it is disabled and forced down instead, so that its servers can
be evacuated, and the result says so. Each operation takes a ``Session`` and
a request mapping and returns a result mapping (``cloud/ops.py``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from typing import Any

from microstackd.cloud.ops import _compute_services, _hypervisor
from microstackd.cloud.session import POLL, Failure, Session

#: Why microstackd disabled a host's compute service.
REMOVED_REASON = "removed by microstackd"


def _servers_on(conn: Any, host: str) -> list[dict[str, str]]:
    return [
        {"id": s.id, "name": s.name, "status": s.status}
        for s in conn.compute.servers(details=True, all_projects=True, compute_host=host)
        if s.compute_host == host
    ]


async def instances(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host = req["host"]
    return {"host": host, "instances": await s(lambda conn: _servers_on(conn, host))}


def describe(servers: list[dict[str, str]], most: int = 5) -> str:
    """``vm1 (ACTIVE), vm2 (SHUTOFF) and 3 more``."""
    shown = ", ".join(f"{v['name']} ({v['status']})" for v in servers[:most])
    more = len(servers) - most
    return shown + (f" and {more} more" if more > 0 else "")


def _agents(conn: Any, host: str) -> list[Any]:
    return [a for a in conn.network.agents(host=host) if a.host == host]


def _providers(conn: Any, host: str) -> list[Any]:
    return [p for p in conn.placement.resource_providers(name=host) if p.name == host]


def _disable(conn: Any, svc: Any, reason: str = REMOVED_REASON) -> None:
    conn.compute.disable_service(svc, host=svc.host, binary=svc.binary, disabled_reason=reason)


def _force_down(conn: Any, svc: Any, forced: bool = True) -> None:
    conn.compute.update_service_forced_down(svc, host=svc.host, binary=svc.binary, forced=forced)


def _enable(conn: Any, svc: Any) -> None:
    conn.compute.enable_service(svc, host=svc.host, binary=svc.binary)


def _delete_service(conn: Any, svc: Any) -> None:
    conn.compute.delete_service(svc, ignore_missing=True)


def _delete_agent(conn: Any, agent: Any) -> None:
    conn.network.delete_agent(agent, ignore_missing=True)


def _delete_provider(conn: Any, provider: Any) -> None:
    conn.placement.delete_resource_provider(provider, ignore_missing=True)


def _left(conn: Any, host: str, keep_service: bool) -> list[str]:
    """What the cloud still holds for ``host`` that a removal should have taken."""
    left = []
    if not keep_service:
        left += [f"compute service {s.id}" for s in _compute_services(conn, host)]
        hypervisor = _hypervisor(conn, host)
        if hypervisor is not None:
            left.append(f"compute node {hypervisor.id}")
        left += [f"resource provider {p.id}" for p in _providers(conn, host)]
    left += [f"Neutron {a.binary} {a.id}" for a in _agents(conn, host)]
    return left


async def remove(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host = req["host"]
    done: list[str] = []
    servers = await s(lambda conn: _servers_on(conn, host))
    services = await s(lambda conn: _compute_services(conn, host))
    for svc in services:
        if svc.status != "disabled":
            await s(functools.partial(_disable, svc=svc))
            await s.progress(f"nova-compute on {host} disabled")
    if servers:
        # Nova refuses to delete a compute service that hosts instances: force
        # it down (its servers can then be evacuated) and keep it.
        for svc in services:
            if not svc.is_forced_down:
                await s(functools.partial(_force_down, svc=svc))
        if services:
            done.append(
                f"its Nova compute service was disabled and forced down but kept: Nova still "
                f"places {len(servers)} instance(s) on {host}: {describe(servers)}"
            )
    else:
        for svc in services:
            await s(functools.partial(_delete_service, svc=svc))
            await s.progress(f"nova-compute on {host} deleted")
        done.append(
            f"Nova compute service on {host} deleted" if services else "Nova had no compute service"
        )
        # Nova deletes the compute node and its resource provider with the
        # service; one it left (an older Nova, a failed call) would make the
        # host's next nova-compute clash with it ("duplicate provider").
        providers = await s(lambda conn: _providers(conn, host))
        for provider in providers:
            await s(functools.partial(_delete_provider, provider=provider))
            await s.progress(f"resource provider {provider.id} of {host} deleted")
        if providers:
            done.append(f"{len(providers)} resource provider(s) Nova left deleted")
    agents = await s(lambda conn: _agents(conn, host))
    for agent in agents:
        await s(functools.partial(_delete_agent, agent=agent))
        await s.progress(f"Neutron {agent.binary} on {host} deleted")
    done.append(f"{len(agents)} Neutron agent(s) deleted")
    left = await s(lambda conn: _left(conn, host, keep_service=bool(servers)))
    if left:
        raise Failure(f"{host}: the cloud still holds {', '.join(left)} after its removal")
    return {
        "host": host,
        "instances": servers,
        "deleted": len(services) if not servers else 0,
        "agents": len(agents),
        "message": "; ".join(done),
    }


# ---------------------------------------------------------------- drain --

#: Why ``drain`` disabled a host's compute service (what ``status`` shows as drained).
DRAINED_REASON = "drained by microstackd"
#: Nova's statuses a server is in while it moves.
_MOVING = {"MIGRATING", "RESIZE", "VERIFY_RESIZE", "REBUILD", "HARD_REBOOT"}


def _open_computes(conn: Any, host: str) -> list[str]:
    """The other hosts whose compute service is up and enabled."""
    return [
        s.host
        for s in conn.compute.services(binary="nova-compute")
        if s.binary == "nova-compute"
        and s.host != host
        and s.state == "up"
        and s.status == "enabled"
        and not s.is_forced_down
    ]


def _server(conn: Any, server_id: str) -> Any:
    return conn.compute.get_server(server_id)


def _migration_error(conn: Any, server_id: str) -> str:
    """The last migration's status of a server, when it failed."""
    found = [m for m in conn.compute.migrations(instance_uuid=server_id)]
    if not found:
        return ""
    last = max(found, key=lambda m: str(m.created_at))
    return f"its {last.migration_type} {last.status}" if last.status in ("error", "failed") else ""


def _evacuate(conn: Any, server_id: str) -> None:
    """Nova's evacuate at API 2.29: the scheduler picks the host, the server
    keeps its state (from 2.95 on it would end SHUTOFF), no onSharedStorage
    (which 2.1, openstacksdk's default for actions, requires)."""
    from openstack import exceptions

    response = conn.compute.post(
        f"/servers/{server_id}/action", json={"evacuate": {}}, microversion="2.29"
    )
    exceptions.raise_from_response(response)


def _abort(conn: Any, server_id: str) -> None:
    for migration in conn.compute.server_migrations(server_id):
        conn.compute.abort_server_migration(migration, server_id, ignore_missing=True)


class _Mover:
    """Moves one server off ``host`` and waits until Nova says it is elsewhere."""

    def __init__(self, s: Session, host: str, timeout: float) -> None:
        self._s, self._host, self._timeout = s, host, timeout

    async def _wait(self, server: dict[str, str], what: str, landed: set[str]) -> Any:
        """Poll until the server is off the host in one of ``landed``'s
        statuses; abort and fail past the deadline or when it falls back."""
        started = time.monotonic()
        seen = ""
        while True:
            got = await self._s(lambda conn: _server(conn, server["id"]))
            state = f"{got.status}, task {got.task_state or '-'}, on {got.compute_host}"
            if got.compute_host != self._host and got.status in landed and not got.task_state:
                return got
            if got.status == "ERROR":
                raise Failure(f"{server['name']}: {what} failed: Nova put it in ERROR ({state})")
            if (
                got.compute_host == self._host
                and got.status not in _MOVING
                and not got.task_state
                and time.monotonic() - started > POLL * 3
            ):
                error = await self._s(lambda conn: _migration_error(conn, server["id"]))
                raise Failure(
                    f"{server['name']}: {what} did not move it: still {state}"
                    + (f" ({error}; see nova-compute's log on {self._host})" if error else "")
                )
            if time.monotonic() - started > self._timeout:
                await self._s(lambda conn: _abort(conn, server["id"]))
                raise Failure(
                    f"{server['name']}: {what} did not finish within {self._timeout:.0f} s "
                    f"(aborted; last state {state})",
                    "timeout",
                )
            if state != seen:
                await self._s.progress(f"{server['name']}: {what}: {state}", waiting=True)
                seen = state
            await asyncio.sleep(POLL)

    async def live(self, server: dict[str, str]) -> Any:
        await self._s(
            lambda conn: conn.compute.live_migrate_server(server["id"], block_migration="auto")
        )
        return await self._wait(server, "live migration", {"ACTIVE", "PAUSED"})

    async def cold(self, server: dict[str, str]) -> Any:
        """A stopped server: started, live-migrated, stopped again (Nova's
        cold migration would need root ssh between computes)."""
        await self._s(lambda conn: conn.compute.start_server(server["id"]))
        await self._until(server, "ACTIVE", "start")
        await self.live(server)
        await self._s(lambda conn: conn.compute.stop_server(server["id"]))
        return await self._until(server, "SHUTOFF", "stop")

    async def evacuate(self, server: dict[str, str]) -> Any:
        await self._s(lambda conn: _evacuate(conn, server["id"]))
        return await self._wait(server, "evacuation", {"ACTIVE", "SHUTOFF"})

    async def _until(self, server: dict[str, str], status: str, what: str) -> Any:
        started = time.monotonic()
        while True:
            got = await self._s(lambda conn: _server(conn, server["id"]))
            if got.status == status and not got.task_state:
                return got
            if got.status == "ERROR" or time.monotonic() - started > self._timeout:
                raise Failure(
                    f"{server['name']}: {what} did not bring it to {status} ({got.status})"
                )
            await asyncio.sleep(POLL)


async def drain(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host = req["host"]
    timeout = float(req.get("instance_timeout") or 600)
    host_down = bool(req.get("host_down"))
    services = await s(lambda conn: _compute_services(conn, host))
    if not services:
        raise Failure(f"Nova has no compute service on {host}: nothing to drain")
    svc = services[0]
    if svc.status != "disabled":
        await s(functools.partial(_disable, svc=svc, reason=DRAINED_REASON))
        await s.progress(f"nova-compute on {host} disabled: no new instance lands there")
    down = host_down or svc.state == "down" or bool(svc.is_forced_down)
    if down and not svc.is_forced_down:
        # Nova evacuates only from a host it knows is down.
        await s(functools.partial(_force_down, svc=svc))
        await s.progress(f"{host} is down: its nova-compute forced down, instances evacuated")
    servers = await s(lambda conn: _servers_on(conn, host))
    if not servers:
        await s.progress(f"{host} hosts no instance")
    elif not await s(lambda conn: _open_computes(conn, host)):
        raise Failure(
            f"{host} hosts {describe(servers)}, but no other compute can take them: every other "
            "compute is disabled (drained?) or down; `microstackctl undrain` one, or join one"
        )
    mover = _Mover(s, host, timeout)
    moved: list[dict[str, str]] = []
    for n, server in enumerate(servers, 1):
        name, status = server["name"], server["status"]
        prefix = f"{name} ({n} of {len(servers)})"
        if down:
            how, move = "evacuated", mover.evacuate
            await s.progress(f"{prefix}: evacuating (rebuilt from its image elsewhere)")
        elif status in ("ACTIVE", "PAUSED"):
            how, move = "live", mover.live
            await s.progress(f"{prefix}: live migration over TLS started")
        elif status == "SHUTOFF":
            how, move = "cold", mover.cold
            await s.progress(f"{prefix}: stopped: starting it to live-migrate it, then stopping it")
        else:
            raise Failure(
                f"{name} is {status} on {host}, which is up: it can be moved only once it is "
                "ACTIVE or SHUTOFF (or, with the host down, evacuated)"
            )
        started = time.monotonic()
        got = await move(server)
        moved.append(
            {
                "name": name,
                "id": server["id"],
                "how": how,
                "host": str(got.compute_host),
                "status": str(got.status),
            }
        )
        await s.progress(
            f"{prefix}: {how} to {got.compute_host} in {time.monotonic() - started:.0f} s, "
            f"{got.status}"
        )
    left = await s(lambda conn: _servers_on(conn, host))
    if left:
        raise Failure(f"{host} still hosts {describe(left)} after its drain; run drain again")
    return {"host": host, "moved": moved}


async def undrain(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host = req["host"]
    services = await s(lambda conn: _compute_services(conn, host))
    if not services:
        raise Failure(f"Nova has no compute service on {host}")
    done = []
    for svc in services:
        if svc.is_forced_down:
            await s(functools.partial(_force_down, svc=svc, forced=False))
            done.append("no longer forced down")
        if svc.status == "disabled":
            await s(functools.partial(_enable, svc=svc))
            done.append("enabled")
    if not done:
        return {"host": host, "message": f"nova-compute on {host} was not drained"}
    return {
        "host": host,
        "message": f"nova-compute on {host} {' and '.join(done)}: instances may land there again",
    }
