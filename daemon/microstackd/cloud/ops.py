"""The control's operations on its cloud, through openstacksdk in this process:

    admit    wait for HOST's nova-compute to be up, map it into a cell, wait
             for its hypervisor, its resources and (asked) its network agent
    remove   HOST's compute service, agents and provider (``cloud/hosts.py``)
    launch   boot a server like microstack.launch
    view     Nova's view of every compute host

Each takes a ``Session`` (one cloud's connection, whose calls run in worker
threads, and where progress goes) and a request mapping, and returns a result
mapping; a failure an operator can act on is an ``errors.CloudError`` with
the message to show. Prints no secret. ``launch`` is in ``cloud/launch.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from microstackd import commands
from microstackd.cloud.session import POLL, Failure, Session, wait

# ---------------------------------------------------------------- admit --


def _compute_services(conn: Any, host: str) -> list[Any]:
    return [
        s
        for s in conn.compute.services(binary="nova-compute", host=host)
        if s.host == host and s.binary == "nova-compute"
    ]


def _service_state(conn: Any, host: str) -> tuple[bool, str]:
    found = _compute_services(conn, host)
    if not found:
        return False, "no nova-compute service registered yet"
    s = found[0]
    return s.state == "up", f"nova-compute {s.state}, {s.status}"


def _hypervisor(conn: Any, host: str) -> Any | None:
    for h in conn.compute.hypervisors(details=True):
        owner = (h.service_details or {}).get("host")
        if owner == host or (owner is None and h.name == host):
            return h
    return None


def _hypervisor_state(conn: Any, host: str) -> tuple[bool, str]:
    h = _hypervisor(conn, host)
    if h is None:
        return False, "no hypervisor listed for the host"
    return True, f"hypervisor {h.name} {h.state}, {h.status}"


def _provider_state(conn: Any, host: str) -> tuple[bool, str]:
    """Whether Placement has the host's resource provider with its memory:
    until nova-compute reported it, the scheduler finds no room there
    ("No valid host" for a launch right after the join)."""
    providers = [p for p in conn.placement.resource_providers(name=host) if p.name == host]
    if not providers:
        return False, "no resource provider in Placement yet"
    classes = {i.resource_class for i in conn.placement.resource_provider_inventories(providers[0])}
    if "MEMORY_MB" not in classes:
        return False, f"resource provider {providers[0].id} has no memory inventory yet"
    return True, f"resource provider {providers[0].id} with {', '.join(sorted(classes))}"


#: The network agent a compute runs (the control's tunnels follow its own).
OVS_AGENT = "neutron-openvswitch-agent"


def _network_agent_state(conn: Any, host: str) -> tuple[bool, str, str]:
    """Whether Neutron has HOST's Open vSwitch agent alive with its tunnel
    address, the state seen, and that address ("" until reported)."""
    agents = [a for a in conn.network.agents(host=host, binary=OVS_AGENT) if a.host == host]
    if not agents:
        return False, f"no {OVS_AGENT} registered in Neutron yet", ""
    agent = agents[0]
    if not agent.is_alive:
        return False, f"{OVS_AGENT} {agent.id} registered, not alive yet", ""
    tunnel = str((agent.configuration or {}).get("tunneling_ip") or "")
    if not tunnel:
        return False, f"{OVS_AGENT} {agent.id} alive, no tunnel address reported yet", ""
    return True, f"{OVS_AGENT} {agent.id} alive, tunnel address {tunnel}", tunnel


async def _manage(argv: list[str], *args: str) -> str:
    try:
        result = await commands.run([*argv, *args], timeout=300)
    except OSError as exc:
        raise Failure(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    except TimeoutError:
        raise Failure(f"nova-manage {' '.join(args)} did not finish within 300 s") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise Failure(f"nova-manage {' '.join(args)} exited {result.returncode}: {tail}")
    return result.stdout


async def _mapped(argv: list[str], host: str) -> tuple[bool, str]:
    """Run discover_hosts, then read the host mappings back."""
    await _manage(argv, "cell_v2", "discover_hosts")
    rows = await _manage(argv, "cell_v2", "list_hosts")
    for line in rows.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[-1] == host:
            return True, f"mapped to cell {cells[0]}"
    return False, "not in nova-manage cell_v2 list_hosts yet"


async def admit(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host, timeout = req["host"], float(req.get("timeout", 300))

    async def service_state() -> tuple[bool, str]:
        return await s(lambda conn: _service_state(conn, host))

    async def hypervisor_state() -> tuple[bool, str]:
        return await s(lambda conn: _hypervisor_state(conn, host))

    service = await wait(s, f"nova-compute on {host} to be up", service_state, timeout, host)
    manage = req.get("nova_manage")
    if manage:
        how = "nova-manage cell_v2 discover_hosts"

        async def mapped() -> tuple[bool, str]:
            return await _mapped(manage, host)

        mapping = await wait(s, f"{host} to be mapped into a cell ({how})", mapped, timeout, host)
    else:
        interval = int(req.get("discover_interval") or 0)
        how = f"nova-scheduler's periodic discovery (every {interval} s)"
        mapping = f"left to {how}"
        await s.progress(f"no nova-manage on this control: relying on {how} to map {host}")
    hypervisor = await wait(
        s, f"the hypervisor of {host} to be listed", hypervisor_state, timeout, host
    )

    async def provider_state() -> tuple[bool, str]:
        return await s(lambda conn: _provider_state(conn, host))

    provider = await wait(s, f"the resources of {host} in Placement", provider_state, timeout, host)
    network_agent, tunnel = "", ""
    if req.get("network_agent"):

        async def network_agent_state() -> tuple[bool, str]:
            nonlocal tunnel
            done, state, tunnel = await s(lambda conn: _network_agent_state(conn, host))
            return done, state

        network_agent = await wait(
            s, f"the network agent of {host} in Neutron", network_agent_state, timeout, host
        )
    if not manage:
        # The host mapping is not visible through the API: give the scheduler
        # one full discovery period after the compute node exists.
        interval = int(req.get("discover_interval") or 0)
        deadline = time.monotonic() + interval + POLL
        while time.monotonic() < deadline:
            await s.progress(
                f"waiting for {how} to map {host} "
                f"({deadline - time.monotonic():.0f} s of one period left)",
                waiting=True,
            )
            await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        mapping = f"mapped by {how} (one period waited)"
    return {
        "host": host,
        "service": service,
        "mapping": mapping,
        "hypervisor": hypervisor,
        "provider": provider,
        "network_agent": network_agent,
        "tunnel": tunnel,
    }


# ----------------------------------------------------------------- view --


def _view(conn: Any) -> dict[str, Any]:
    hosts: dict[str, dict[str, Any]] = {}

    def entry(host: str) -> dict[str, Any]:
        return hosts.setdefault(
            host,
            {"compute_service": "", "hypervisor": "", "running_instances": 0, "drained": False},
        )

    for s in conn.compute.services(binary="nova-compute"):
        if s.binary == "nova-compute":
            entry(s.host)["compute_service"] = f"{s.state}" + (
                "" if s.status == "enabled" else f" ({s.status})"
            )
            # cloud/hosts.py's DRAINED_REASON (not imported: hosts imports this module).
            entry(s.host)["drained"] = s.disabled_reason == "drained by microstackd"
    for h in conn.compute.hypervisors(details=True):
        owner = (h.service_details or {}).get("host") or h.name
        entry(owner)["hypervisor"] = f"{h.state}" + (
            "" if h.status == "enabled" else f" ({h.status})"
        )
    for server in conn.compute.servers(details=True, all_projects=True):
        if server.compute_host and server.status == "ACTIVE":
            entry(server.compute_host)["running_instances"] += 1
    return {"hosts": hosts}


async def view(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    return await s(_view)
