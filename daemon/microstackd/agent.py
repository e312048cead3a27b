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
from microstackd.node import render
from microstackd.node.roles import ROLES, RoleDefinition, RoleService
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
        return {
            **settings,
            "config_root": str(self._config.config_root),
            "state_path": str(self._config.state_dir / "services"),
            "openstack_prefix": str(self._config.openstack_prefix or ""),
        }

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
                ready_after=0.2,
                ready_pattern=STANDIN_READY,
                start_timeout=30.0,
            )
        return ServiceSpec(
            name=service.name,
            argv=render.expand(service.command, values),
            unit=service.unit,
            snap_service=service.snap_service,
            ready_after=service.ready_after,
            ready_pattern=service.ready_pattern,
            start_timeout=service.start_timeout,
        )

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
            total = 1 + len(role.services)
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
            for index, service in enumerate(role.services, start=2):
                step = f"service {service.name}"
                spec = self.spec(service)
                yield AgentStep(
                    step,
                    StepState.RUNNING,
                    f"starting {service.name} through {self.manager.kind}{standin}",
                    100 * (index - 1) // total,
                )
                await self.manager.restart(spec)
                status = await self.manager.wait_ready(spec)
                yield AgentStep(
                    step,
                    StepState.DONE,
                    f"{service.name} is {status.state}{standin}",
                    100 * index // total,
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

    def applied(self) -> RoleDefinition | None:
        name = self._store.get_meta(APPLIED_ROLE)
        return ROLES.get(name) if name else None

    async def services(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        return [await self.manager.status(self.spec(s)) for s in role.services]

    async def stop_role(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        for service in role.services:
            await self.manager.stop(self.spec(service))
        return await self.services()

    async def resume(self) -> None:
        """At start-up: bring back the applied role's services the process
        manager runs (systemd and snapd keep theirs running themselves)."""
        role = self.applied()
        if role is None or self.manager.kind != "process":
            return
        for service in role.services:
            try:
                await self.manager.restart(self.spec(service))
            except errors.MicrostackError as exc:
                log.warning("service restart failed service=%s error=%r", service.name, exc.message)
