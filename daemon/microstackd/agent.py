"""The node agent: applies a role the control issued — render its
configuration, (re)start its services through the ServiceManager, report
each step and the services' state. Called only by the control (rpc/auth.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.model import StepState
from microstackd.node import render, steps, virt
from microstackd.node.roles import ROLES, SERVICE_PREFIX, RoleDefinition, RoleService
from microstackd.node.services import ServiceManager, ServiceSpec, ServiceStatus
from microstackd.store import Store

log = logging.getLogger(__name__)

#: meta key: the role this node's agent last applied.
APPLIED_ROLE = "applied_role"
#: meta key: the applied role's ``resume_settings`` and node values (JSON, no secret).
APPLIED_VALUES = "applied_values"
#: meta key: what each service runs with (JSON, for ``status``).
SERVICE_DETAILS = "service_details"
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
        #: This node's own values (``_node_values``), once a role was applied.
        self._node_values: dict[str, str] = {}
        self._detected: virt.VirtChoice | None = None

    def _values(self, settings: Mapping[str, str] = {}) -> dict[str, str]:
        """Placeholders for the role: the issued settings, this node's own
        values, and, at start-up (no settings), what the last apply kept."""
        kept = json.loads(self._store.get_meta(APPLIED_VALUES) or "{}")
        return {**kept, **settings, **steps.base_values(self._config), **self._node_values}

    async def _local_values(self, settings: Mapping[str, str]) -> dict[str, str]:
        """What only this node knows: its hypervisor (control.yaml's
        ``compute.virt_type``, or detected where that says ``auto``)."""
        values: dict[str, str] = {}
        if "virt_type" in settings:
            choice = await asyncio.to_thread(virt.choose, settings["virt_type"], self._detected)
            if settings["virt_type"] in ("", "auto"):
                self._detected = choice
            values.update(virt_type=choice.virt_type, virt_detail=choice.describe())
        return values

    def _keep(self, role: RoleDefinition, values: Mapping[str, str]) -> None:
        """Keep what the role's commands need at start-up, and the services'
        details for ``status`` (never a secret: resume_settings are not)."""
        keys = (*role.resume_settings, *self._node_values)
        kept = {key: values[key] for key in keys if key in values}
        details = {s.name: render.expand((s.detail,), values)[0] for s in role.services if s.detail}
        self._store.set_meta(
            {APPLIED_VALUES: json.dumps(kept), SERVICE_DETAILS: json.dumps(details)}
        )

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
                ready_after=0.05,  # its ready line is the proof; no need to linger
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
            self._node_values = await self._local_values(settings)
            values = self._values(settings)
            paths = await asyncio.to_thread(render.render_role, role, values, root)
            self._store.set_meta({APPLIED_ROLE: role.name})
            self._keep(role, values)
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
                    spec = self.spec(service)
                    await self.manager.restart(spec)
                    status = await self.manager.wait_ready(spec)
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

    def applied(self) -> RoleDefinition | None:
        name = self._store.get_meta(APPLIED_ROLE)
        return ROLES.get(name) if name else None

    async def services(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        details = json.loads(self._store.get_meta(SERVICE_DETAILS) or "{}")
        return [
            dataclasses.replace(status, detail=details.get(status.name, ""))
            for status in [await self.manager.status(self.spec(s)) for s in self._services_of(role)]
        ]

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
