"""The control's own end of the network path to a compute: the VXLAN port
its Open vSwitch agent keeps in br-tun toward the compute's tunnel address.

Neutron tells every OVS agent of a new tunnel endpoint with a fanout cast
(``tunnel_update``, sent when the compute's agent first syncs) and of a
deleted agent's endpoint with another (``tunnel_delete``, sent when the
agent is deleted, as ``remove`` does). A fanout is lost by an agent that is
reconnecting to RabbitMQ when it is sent, and the two can reach an agent in
the wrong order (a compute removed and rejoined under its name, at the same
address). Either way the control has no tunnel to the compute, no API says
so, and every instance there boots without DHCP (seen once in CI: a compute
rejoined under its name, its guest's udhcpc never answered).

So the enrolment checks the control's br-tun itself before it calls the
compute done; a tunnel still missing after ``WAIT`` seconds has the control
restart its own OVS agent, whose start syncs every endpoint from the server
(its flows are kept across the restart), then checks again. Still missing
is an error that names the log to read; joining again resumes at this step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from microstackd import commands, errors
from microstackd.cloud.ops import OVS_AGENT
from microstackd.control.plane import ControlPlane
from microstackd.node import render
from microstackd.node.roles.network import OVS_SOCK

log = logging.getLogger(__name__)

#: Seconds the control's tunnel to a compute may take to appear (it follows
#: the compute agent's first sync within a second or two).
WAIT = 30.0
#: Seconds it may take after the control's OVS agent restarted.
AFTER_RESTART = 90.0
POLL = 1.0

Remotes = Callable[[], Awaitable[Mapping[str, str]]]
Progress = Callable[[str], Awaitable[None]]


def parse_remotes(text: str) -> dict[str, str]:
    """remote_ip -> port name of every VXLAN interface with an OpenFlow port,
    from ``ovs-vsctl --format=json --columns=name,options,ofport find
    Interface type=vxlan``."""
    try:
        table = json.loads(text)
        rows: list[list[Any]] = table["data"]
        columns = {name: i for i, name in enumerate(table["headings"])}
        found = {}
        for row in rows:
            name, options, ofport = (row[columns[c]] for c in ("name", "options", "ofport"))
            remote = dict(options[1]).get("remote_ip") if options[0] == "map" else None
            # ofport is ["set", []] before ovs-vswitchd made the port, -1 if it failed.
            if remote and isinstance(ofport, int) and ofport > 0:
                found[str(remote)] = str(name)
        return found
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise errors.CloudError(f"cannot read ovs-vsctl's list of VXLAN ports: {exc}") from exc


async def _appears(remote: str, remotes: Remotes, within: float, poll: float) -> str | None:
    deadline = time.monotonic() + within
    while True:
        port = (await remotes()).get(remote)
        if port is not None or time.monotonic() >= deadline:
            return port
        await asyncio.sleep(poll)


async def ensure(
    node: str,
    remote: str,
    remotes: Remotes,
    restart_agent: Callable[[], Awaitable[None]],
    progress: Progress,
    *,
    wait: float = WAIT,
    after_restart: float = AFTER_RESTART,
    poll: float = POLL,
) -> str:
    """Make sure the control has its tunnel to ``node`` at ``remote``."""
    port = await _appears(remote, remotes, wait, poll)
    if port is not None:
        return f"the control's tunnel to {node} is up ({port} to {remote})"
    log.warning(
        "no tunnel to a compute: restarting the control's OVS agent node=%s remote=%s", node, remote
    )
    await progress(
        f"the control has no VXLAN tunnel to {node} ({remote}) after {wait:.0f} s: its "
        f"{OVS_AGENT} missed the endpoint; restarting it (its flows are kept) to sync every tunnel"
    )
    await restart_agent()
    port = await _appears(remote, remotes, after_restart, poll)
    if port is not None:
        log.info("tunnel to a compute re-made node=%s remote=%s port=%s", node, remote, port)
        return (
            f"the control's tunnel to {node} is up ({port} to {remote}), re-made by "
            f"restarting the control's {OVS_AGENT}"
        )
    raise errors.CloudError(
        f"the control still has no VXLAN tunnel to {node} ({remote}) after restarting its "
        f"{OVS_AGENT}: instances on {node} would get no network. Read {OVS_AGENT}.log in the "
        f"control's log directory; `microstackctl join` again resumes the enrolment here"
    )


class ControlTunnels:
    """The control's br-tun, read and healed through its control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def available(self) -> bool:
        """Whether this control runs the OVS agent whose tunnels to check."""
        return self._plane.enabled and self._plane.started(OVS_AGENT)

    def _values(self) -> Mapping[str, str]:
        values = self._plane.settings()
        if values is None:
            raise errors.CloudError("the control plane is not set up: no tunnels to check")
        return values

    async def remotes(self) -> dict[str, str]:
        (db,) = render.expand((OVS_SOCK,), self._values())
        argv = ["ovs-vsctl", f"--db=unix:{db}", "--timeout=10", "--format=json"]
        argv += ["--columns=name,options,ofport", "find", "Interface", "type=vxlan"]
        try:
            result = await commands.run(argv, timeout=30)
        except (OSError, TimeoutError) as exc:
            raise errors.CloudError(f"cannot list the control's VXLAN ports: {exc}") from exc
        if result.returncode != 0:
            raise errors.CloudError(
                f"ovs-vsctl could not list the control's VXLAN ports: "
                f"{result.stderr.strip() or result.returncode}"
            )
        return parse_remotes(result.stdout)

    async def restart_agent(self) -> None:
        await self._plane.restart(OVS_AGENT, self._values())

    async def ensure(self, node: str, remote: str, progress: Progress) -> str:
        return await ensure(node, remote, self.remotes, self.restart_agent, progress)
