"""What the cloud holds for one compute host, and taking it all away:

    instances  the servers Nova places on HOST (every project)
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

import functools
from collections.abc import Mapping
from typing import Any

from microstackd.cloud.ops import _compute_services, _hypervisor
from microstackd.cloud.session import Failure, Session

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


def _disable(conn: Any, svc: Any) -> None:
    conn.compute.disable_service(
        svc, host=svc.host, binary=svc.binary, disabled_reason=REMOVED_REASON
    )


def _force_down(conn: Any, svc: Any) -> None:
    conn.compute.update_service_forced_down(svc, host=svc.host, binary=svc.binary, forced=True)


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
