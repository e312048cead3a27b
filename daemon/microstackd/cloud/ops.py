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
from microstackd.cloud.session import Failure, Session, wait

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
    """Whether Nova lists the host's hypervisor: it does once the host is
    mapped to a cell, never before (os-hypervisors finds each compute
    node's service through its host mapping and leaves out the unmapped)."""
    h = _hypervisor(conn, host)
    if h is None:
        return False, "no hypervisor listed for the host (Nova lists it once it is in a cell)"
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


#: The discover_hosts under way, per nova-manage command line: one at a time
#: on a control, however many hosts it admits at once (each run maps every
#: host of every cell not mapped yet; two at once race on the same rows).
_discoveries: dict[tuple[str, ...], asyncio.Task[str]] = {}


async def discover_hosts(argv: list[str]) -> None:
    """Have ``nova-manage cell_v2 discover_hosts`` run: a run already under
    way is waited for instead of starting another (the caller checks
    again: that run may have begun before its host had a compute node);
    else one is started."""
    key = tuple(argv)
    running = _discoveries.get(key)
    if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
        running = asyncio.ensure_future(_manage(argv, "cell_v2", "discover_hosts"))
        # Retrieved when every caller waiting on it was cancelled.
        running.add_done_callback(lambda t: t.cancelled() or t.exception())
        _discoveries[key] = running
    await asyncio.shield(running)


#: How often admit looks for the host's hypervisor (a cheap API call).
MAPPED_POLL = 1.0


async def admit(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    host, timeout = req["host"], float(req.get("timeout", 300))

    async def service_state() -> tuple[bool, str]:
        return await s(lambda conn: _service_state(conn, host))

    async def hypervisor_state() -> tuple[bool, str]:
        return await s(lambda conn: _hypervisor_state(conn, host))

    service = await wait(s, f"nova-compute on {host} to be up", service_state, timeout, host)
    # nova-compute is up: its compute node exists (its start made it before
    # it joined the service group). nova-scheduler maps new hosts every
    # interval; where nova-manage is at hand, discover_hosts is run when one
    # period passed and the host is still not listed.
    interval = int(req.get("discover_interval") or 0)
    manage = req.get("nova_manage")
    periodic = f"nova-scheduler's periodic discovery (every {interval} s)"
    how = f"{periodic}, or nova-manage cell_v2 discover_hosts" if manage else periodic
    if not manage:
        await s.progress(f"no nova-manage on this control: relying on {periodic} to map {host}")
    run_after = time.monotonic() + interval + MAPPED_POLL
    discovered = 0

    async def mapped() -> tuple[bool, str]:
        nonlocal discovered
        done, state = await hypervisor_state()
        if done or not manage or time.monotonic() < run_after:
            return done, state
        await discover_hosts(manage)
        discovered += 1
        return await hypervisor_state()

    hypervisor = await wait(
        s, f"{host} to be mapped to a cell ({how})", mapped, timeout, host, poll=MAPPED_POLL
    )
    ran = f", nova-manage cell_v2 discover_hosts run {discovered} time(s)" if discovered else ""
    mapping = f"mapped to a cell (Nova lists its hypervisor{ran})"

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
