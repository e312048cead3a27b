"""The control role: the OpenStack control plane this control node runs.

Its steps (``node/roles/control.py``'s ``CONTROL``: render the configuration,
start each service, run each one-time setup step) are steps of the control's
init plan, after ``create-cluster``: each streams to the CLI, is recorded in
the store's ``steps`` table when done and is skipped when init resumes.
Where no OpenStack environment is configured (``--openstack-prefix``) every
such step is ``skipped``, never ``done``.

Secrets come from control.yaml (0600) and go only into rendered files and
the environment of the commands that need them: never into a log line, an
event or a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.control import config as control_config
from microstackd.enrolment.machine import Group
from microstackd.enrolment.runner import Skipped, StepAction, StepContext
from microstackd.model import ServiceRecord, StepState
from microstackd.node import render, steps
from microstackd.node.roles import CONTROL
from microstackd.node.roles.parts import RENDER_CONFIG, SERVICE_PREFIX, RoleService
from microstackd.node.services import ServiceManager
from microstackd.node.watch import ServiceWatch
from microstackd.store import Store

log = logging.getLogger(__name__)

NO_ENVIRONMENT = "no OpenStack environment configured (--openstack-prefix)"
#: How often the control's service states are written for ``status``, seconds.
REFRESH_INTERVAL = 5.0

ConfigLoader = Callable[[], control_config.ControlConfig]


class ControlPlane:
    def __init__(self, config: DaemonConfig, store: Store, manager: ServiceManager) -> None:
        self._config = config
        self._store = store
        self._manager = manager
        self._refresher: asyncio.Task[None] | None = None
        #: The configuration was rendered by this process (a resumed init renders
        #: it again before its first step: templates or control.yaml may have changed).
        self._rendered = False
        #: Services restarted at start-up that a resumed init waits for first.
        self._resumed: list[RoleService] = []
        #: Set once ``resume`` has restarted them (an init may come in before:
        #: the socket answers while the daemon is still starting).
        self._resume_done = asyncio.Event()
        if not self.enabled:
            self._resume_done.set()
        #: Init's steps run: they start the services themselves.
        self._stepping = 0
        #: Held while a step renders the configuration or waits for the
        #: services restarted with the daemon: the steps of a group start at
        #: once, and each must find both done.
        self._preparing = asyncio.Lock()
        # The process manager restarts its own children: then the watch only reports.
        restore = None if manager.kind == "process" else self._start_again
        self._watch = ServiceWatch(self._states, restore, interval=REFRESH_INTERVAL)

    @property
    def enabled(self) -> bool:
        return self._config.openstack_prefix is not None

    def plan(self) -> tuple[str, ...]:
        """The control role's steps, in order (the init plan's middle)."""
        return CONTROL.step_names()

    def titles(self) -> dict[str, str]:
        return CONTROL.titles()

    def groups(self) -> tuple[Group, ...]:
        """The plan's steps run together (``CONTROL.order``'s groups)."""
        return CONTROL.groups()

    def values(self, config: control_config.ControlConfig) -> dict[str, str]:
        return {
            **steps.base_values(self._config),
            **control_config.control_settings(config),
            # The network node's agents report under the control's node name.
            "host": self._config.node_name,
        }

    def actions(self, load: ConfigLoader, *, init: bool = False) -> dict[str, StepAction]:
        """The steps' actions. ``init``: the control's init, the only caller
        whose redone migration steps start from empty databases (an attempt
        that did not finish left them half-migrated: ``SetupStep.schema``).
        Until a migration step is done no service and no other step has used
        its databases (``CONTROL``'s order honours ``NEEDS``), and init runs
        no step again once it is done; a restore, whose databases hold the
        cloud, never drops them."""

        def action(name: str) -> StepAction:
            return lambda ctx: self._step(ctx, name, load, init)

        return {name: action(name) for name in self.plan()}

    async def _step(
        self, ctx: StepContext, name: str, load: ConfigLoader, init: bool
    ) -> str | Skipped:
        if not self.enabled:
            return Skipped(NO_ENVIRONMENT)
        self._stepping += 1
        try:
            return await self._run_step(ctx, name, load, init)
        finally:
            self._stepping -= 1

    async def _run_step(
        self, ctx: StepContext, name: str, load: ConfigLoader, init: bool
    ) -> str | Skipped:
        await self._resume_done.wait()
        values = self.values(load())
        async with self._preparing:
            if name == RENDER_CONFIG or not self._rendered:
                message = await asyncio.to_thread(self._render, values)
                if name == RENDER_CONFIG:
                    return message
            resumed, self._resumed = self._resumed, []
            for service in resumed:  # restarted at start-up: the steps below need them
                await ctx.progress(f"waiting for {service.name} (restarted with the daemon)")
                await self._manager.wait_ready(steps.service_spec(service, values))
        if name.startswith(SERVICE_PREFIX):
            service = CONTROL.service(name.removeprefix(SERVICE_PREFIX))
            try:
                status = await steps.start_service(self._manager, service, values)
            finally:
                await self.refresh()
            return f"{service.name} is {status.state} (through {self._manager.kind})"
        step = CONTROL.setup_step(name)

        async def progress(message: str) -> None:
            await ctx.progress(message)

        return await steps.run_setup(
            step,
            values,
            self._config.state_dir / "logs",
            progress,
            fresh_schema=init and ctx.redone,
        )

    def _render(self, values: Mapping[str, str]) -> str:
        root = self._config.config_root
        paths = render.render_role(CONTROL, values, root)
        clouds = next(p for p in paths if p.name == "clouds.yaml")
        control_config.record_cloud(self._config.control_config_path, clouds)
        self._rendered = True
        return (
            f"wrote {len(paths)} files under {root} and {self._config.state_dir}; "
            f"admin cloud {control_config.CLOUD_NAME!r} in {clouds}"
        )

    # ------------------------------------------- re-applied (rotate-secrets) --

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """While the role is re-applied: the watch only reports (the caller
        restarts the services itself), as during init's steps."""
        self._stepping += 1
        try:
            yield
        finally:
            self._stepping -= 1

    async def render_with(self, config: control_config.ControlConfig) -> str:
        """Render the control role's files from ``config``."""
        return await asyncio.to_thread(self._render, self.values(config))

    async def restart(self, name: str, values: Mapping[str, str]) -> ServiceRecord:
        """Restart the control role's service ``name`` and wait until it is ready."""
        try:
            return await steps.start_service(self._manager, CONTROL.service(name), values)
        finally:
            await self.refresh()

    async def run_setup(
        self, name: str, values: Mapping[str, str], progress: Callable[[str], Awaitable[None]]
    ) -> str:
        """Run the control role's setup step ``name`` again (each is idempotent)."""
        return await steps.run_setup(
            CONTROL.setup_step(name), values, self._config.state_dir / "logs", progress
        )

    # ------------------------------------------------------- services --

    def _started(self) -> list[RoleService]:
        """The services whose start step is recorded done."""
        states = self._store.step_states(self._config.node_name)
        return [
            s
            for s in CONTROL.services
            if states.get(SERVICE_PREFIX + s.name) in (StepState.DONE, StepState.RUNNING)
        ]

    async def services(self) -> list[ServiceRecord]:
        """The started services, with what the watch does about them (node/watch.py)."""
        return self._watch.describe(await self._states())

    async def _states(self) -> list[ServiceRecord]:
        if not self.enabled:
            return []
        values = self._cached_values()
        if values is None:
            return []
        return [await self._manager.status(steps.service_spec(s, values)) for s in self._started()]

    def settings(self) -> dict[str, str] | None:
        """The placeholders of the control role as it runs here (paths,
        ports, secrets), or None outside a cluster."""
        return self._cached_values() if self.enabled else None

    def started(self, service: str) -> bool:
        """Whether init started the control role's ``service``."""
        return any(s.name == service for s in self._started())

    def _cached_values(self) -> dict[str, str] | None:
        cluster = self._store.cluster()
        if cluster is None:
            return None
        try:
            config = control_config.ensure(
                self._config.control_config_path, cluster.control_address
            )
        except errors.MicrostackError:
            return None
        return self.values(config)

    async def refresh(self) -> None:
        """Write the control's service states where ``status`` reads them."""
        records = await self.services()
        if records:
            self._store.set_services(self._config.node_name, records)

    async def _start_again(self, name: str) -> ServiceRecord:
        values = self._cached_values()
        if values is None:
            raise errors.NotInitialised("this node is in no cluster")
        return await steps.start_service(self._manager, CONTROL.service(name), values)

    async def resume(self) -> None:
        """At start-up: start the services the control's init had started that
        do not run — all with the process manager (they died with the daemon),
        after a reboot those of systemd (their units are in /run) — and watch
        them. Services that run are left alone."""
        if not self.enabled:
            return
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        try:
            await self._resume()
        finally:
            self._resume_done.set()

    async def _resume(self) -> None:
        values = self._cached_values()
        if values is None:
            return

        async def render_again() -> None:
            try:
                await asyncio.to_thread(self._render, values)
            except errors.MicrostackError as exc:
                log.warning("cannot render the control's configuration: %s", exc.message)

        self._resumed = await steps.restart_after_daemon(
            self._manager,
            self._started(),
            lambda s: steps.service_spec(s, values),
            values,
            before=render_again,
        )

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                if self._stepping:  # init starts the services itself
                    await self.refresh()
                    continue
                records = await self._watch.tick()
                if records:
                    self._store.set_services(self._config.node_name, records)
            except Exception:  # status must not stop the daemon
                log.exception("cannot refresh the control's service states")

    async def close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
