"""The node agent: applies a role the control issued — render its
configuration, (re)start its services through the ServiceManager, report
each step and the services' state. Called only by the control (rpc/auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.model import StepState
from microstackd.node import render, steps
from microstackd.node.roles import ROLES, SERVICE_PREFIX, RoleDefinition, RoleService
from microstackd.node.services import RUNNING, STARTING, ServiceManager, ServiceSpec, ServiceStatus
from microstackd.node.watch import ServiceWatch
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
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        manager: ServiceManager,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_change`` is called when a service's state changed (node/watch.py)."""
        self._config = config
        self._store = store
        self.manager = manager
        self._lock = asyncio.Lock()
        # The process manager restarts its own children: then the watch only reports.
        restore = None if manager.kind == "process" else self._start_again
        self.watch = ServiceWatch(self._states, restore, on_change)
        self._watcher: asyncio.Task[None] | None = None

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
            self.start_watch()
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
        """The applied role's services, with what the watch does about them."""
        return self.watch.describe(await self._states())

    async def _states(self) -> list[ServiceStatus]:
        role = self.applied()
        if role is None:
            return []
        return [await self.manager.status(self.spec(s)) for s in self._services_of(role)]

    async def stop_role(self) -> list[ServiceStatus]:
        """This node leaves its cluster: stop its services, forget its role."""
        await self.close()
        role = self.applied()
        if role is None:
            return []
        for service in reversed(self._services_of(role)):
            await self.manager.stop(self.spec(service))
        stopped = await self.services()
        self._store.set_meta({APPLIED_ROLE: ""})
        return stopped

    async def _start(self, service: RoleService) -> ServiceSpec:
        steps.make_dirs(service.dirs, self._values())
        spec = self.spec(service)
        await self.manager.restart(spec)
        return spec

    async def _start_again(self, name: str) -> ServiceStatus:
        role = self.applied()
        if role is None:
            raise errors.NotInitialised("this node runs no role any more")
        spec = await self._start(role.service(name))
        return await self.manager.wait_ready(spec)

    async def resume(self) -> None:
        """At start-up: start the applied role's services that do not run —
        all of them with the process manager (they died with the daemon),
        after a reboot those of systemd (their units are in /run) — and watch
        them. Services that run are left alone: a daemon restart must not
        restart the cloud."""
        role = self.applied()
        if role is None:
            return
        for service in self._services_of(role):
            try:
                if self.manager.kind != "process":
                    state = (await self.manager.status(self.spec(service))).state
                    if state in (RUNNING, STARTING):
                        continue
                await self._start(service)
            except errors.MicrostackError as exc:
                log.warning("service restart failed service=%s error=%r", service.name, exc.message)
        self.start_watch()

    def start_watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_forever())

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.watch.interval)
            if self._lock.locked():  # a role is being applied: it starts the services itself
                continue
            try:
                await self.watch.tick()
            except Exception:  # the watch must not stop the daemon
                log.exception("cannot watch this node's services")

    async def close(self) -> None:
        """Stop watching (daemon shutdown, or the node leaves its cluster)."""
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _no_progress(message: str) -> None:
    """Bootstrap steps on a node report only their start and end."""
