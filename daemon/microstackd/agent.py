"""The node agent: applies a role the control issued — render its
configuration, (re)start its services through the ServiceManager, report
each step and the services' state. Called only by the control (rpc/auth.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.model import StepState
from microstackd.node import render, steps
from microstackd.node.roles import ROLES, SERVICE_PREFIX, RoleDefinition, RoleService
from microstackd.node.services import ServiceManager, ServiceSpec, ServiceStatus
from microstackd.store import Store

log = logging.getLogger(__name__)

#: meta key: the role this node's agent last applied.
APPLIED_ROLE = "applied_role"
STANDIN_READY = "configuration complete"


@dataclass(frozen=True)
class AgentStep:
    step: str
    state: StepState
    message: str
    percent: int = 0
    services: tuple[ServiceStatus, ...] = field(default_factory=tuple)
    final: bool = False


class Agent:
    def __init__(self, config: DaemonConfig, store: Store, manager: ServiceManager) -> None:
        self._config = config
        self._store = store
        self.manager = manager
        self._lock = asyncio.Lock()

    def _values(self, settings: Mapping[str, str] = {}) -> dict[str, str]:
        return {**settings, **steps.base_values(self._config)}

    def _services_of(self, role: RoleDefinition) -> tuple[RoleService, ...]:
        """The services this node runs for ``role``: without an OpenStack
        environment, only those that have a configuration-checking stand-in."""
        if self._config.openstack_prefix is None:
            return tuple(s for s in role.services if not s.real_only)
        return role.services

    def spec(self, service: RoleService) -> ServiceSpec:
        """How the ServiceManager runs ``service`` on this node."""
        values = self._values()
        if self._config.openstack_prefix is None:
            argv: tuple[str, ...] = (
                sys.executable,
                "-m",
                "microstackd.node.standin",
                "--service",
                service.name,
                "--config-root",
                values["config_root"],
                *(arg for r in service.requires for arg in ("--require", r)),
            )
            return ServiceSpec(
                name=service.name,
                argv=argv,
                unit=service.unit,
                snap_service=service.snap_service,
                ready_after=0.0,  # its ready line is the proof; no need to linger
                ready_pattern=STANDIN_READY,
                start_timeout=30.0,
            )
        return steps.service_spec(service, values)

    def _role(self, name: str) -> RoleDefinition:
        role = ROLES.get(name)
        if role is None:
            raise errors.InvalidArgument(f"role {name!r} is unknown (known: {', '.join(ROLES)})")
        return role

    async def apply_role(
        self, role_name: str, settings: Mapping[str, str]
    ) -> AsyncIterator[AgentStep]:
        role = self._role(role_name)
        if self._lock.locked():
            raise errors.AlreadyInitialised("this node's agent is already applying a role")
        async with self._lock:
            root = self._config.config_root
            real = self._config.openstack_prefix is not None
            names = (
                role.step_names()[1:]
                if real
                else tuple(SERVICE_PREFIX + s.name for s in self._services_of(role))
            )
            total = 1 + len(names)
            yield AgentStep(
                "render-config", StepState.RUNNING, f"rendering {len(role.files)} files into {root}"
            )
            paths = await asyncio.to_thread(render.render_role, role, self._values(settings), root)
            self._store.set_meta({APPLIED_ROLE: role.name})
            yield AgentStep(
                "render-config",
                StepState.DONE,
                "wrote " + ", ".join(str(p.relative_to(root)) for p in paths),
                100 // total,
            )
            standin = (
                " (stand-in: no --openstack-prefix)"
                if self._config.openstack_prefix is None
                else ""
            )
            values = self._values(settings)
            ahead = [] if real else await self._start_standins(role)
            for index, step in enumerate(names, start=2):
                before, after = 100 * (index - 1) // total, 100 * index // total
                if not step.startswith(SERVICE_PREFIX):
                    bootstrap = role.bootstrap_step(step)
                    yield AgentStep(step, StepState.RUNNING, bootstrap.title, before)
                    message = await steps.run_bootstrap(
                        bootstrap, values, self._config.state_dir / "logs", _no_progress
                    )
                    yield AgentStep(step, StepState.DONE, message, after)
                    continue
                service = role.service(step.removeprefix(SERVICE_PREFIX))
                yield AgentStep(
                    step,
                    StepState.RUNNING,
                    f"starting {service.name} through {self.manager.kind}{standin}",
                    before,
                )
                if real:
                    status = await steps.start_service(self.manager, service, values)
                else:
                    spec, not_started = ahead.pop(0)
                    if not_started is not None:
                        raise not_started
                    try:
                        status = await self.manager.wait_ready(spec)
                    except errors.MicrostackError:
                        # As if started one by one: none after the failed one runs.
                        for later, _ in ahead:
                            await self.manager.stop(later)
                        raise
                yield AgentStep(
                    step, StepState.DONE, f"{service.name} is {status.state}{standin}", after
                )
            services = tuple(await self.services())
            up = sum(1 for s in services if s.state == "running")
            yield AgentStep(
                "role",
                StepState.DONE,
                f"role {role.name} applied: {up}/{len(services)} services running",
                100,
                services=services,
                final=True,
            )

    async def _start_standins(
        self, role: RoleDefinition
    ) -> list[tuple[ServiceSpec, errors.MicrostackError | None]]:
        """Start every stand-in of ``role`` at once; return each spec, in the
        role's order, with the error that kept it from starting, if any (no
        later one is started then). They are waited for and reported one by
        one, as before.

        A stand-in depends on nothing but the files just rendered, and most
        of its start is the interpreter's (~50 ms): started together, their
        start-ups overlap instead of adding up on every join. Real services
        have an order (ovsdb-server before ovs-vswitchd before the agent)
        and keep starting one after the other."""
        started: list[tuple[ServiceSpec, errors.MicrostackError | None]] = []
        for service in self._services_of(role):
            spec = self.spec(service)
            try:
                await self.manager.restart(spec)
            except errors.MicrostackError as exc:
                started.append((spec, exc))
                break
            started.append((spec, None))
        return started

    def applied(self) -> RoleDefinition | None:
        name = self._store.get_meta(APPLIED_ROLE)
        return ROLES.get(name) if name else None

    async def services(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        return [await self.manager.status(self.spec(s)) for s in self._services_of(role)]

    async def stop_role(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        for service in reversed(self._services_of(role)):
            await self.manager.stop(self.spec(service))
        return await self.services()

    async def resume(self) -> None:
        """At start-up: bring back the applied role's services the process
        manager runs (systemd and snapd keep theirs running themselves)."""
        role = self.applied()
        if role is None or self.manager.kind != "process":
            return
        for service in self._services_of(role):
            try:
                steps.make_dirs(service.dirs, self._values())
                await self.manager.restart(self.spec(service))
            except errors.MicrostackError as exc:
                log.warning("service restart failed service=%s error=%r", service.name, exc.message)


async def _no_progress(message: str) -> None:
    """Bootstrap steps on a node report only their start and end."""
