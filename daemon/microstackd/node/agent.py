"""The node agent: applies a role the control issued — render its
configuration, (re)start its services through the ServiceManager, report
each step and the services' state. Called only by the control (api/access.py).

Applying a role is a plan run on the one step engine
(``enrolment.runner.Runner.stream``): ``render-config``, then each service
(and, with an OpenStack environment, each setup step) in the role's order,
then ``done``. Nothing of it is recorded on the node: every step is
idempotent and the control re-applies the whole role whenever its
``configure-node`` step runs again.

Once a role runs, the agent watches its services (``node/watch.py``): a
change is announced at once (``changed``, which the wiring answers with a
heartbeat), and a service found stopped or failed is started again at the
next look, with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Mapping

from microstackd import commands, errors
from microstackd.config import DaemonConfig
from microstackd.enrolment.events import Signal
from microstackd.enrolment.machine import DONE
from microstackd.enrolment.runner import Runner, StepAction, StepContext
from microstackd.model import AgentStep, Role, ServiceRecord, StepState
from microstackd.node import render, restarts, steps, virt
from microstackd.node.roles import APPLIED_BY_AGENT, DEFINITIONS, RoleDefinition
from microstackd.node.roles.compute import MIGRATION_CRL
from microstackd.node.roles.parts import RENDER_CONFIG, SERVICE_PREFIX, RoleService
from microstackd.node.services import ServiceManager, ServiceSpec
from microstackd.node.watch import ServiceWatch
from microstackd.store import Store
from microstackd.store.files import write_private_file

log = logging.getLogger(__name__)

#: meta key: the role this node's agent last applied.
APPLIED_ROLE = "applied_role"
#: meta key: the applied role's ``resume_settings`` and node values (JSON, no secret).
APPLIED_VALUES = "applied_values"
#: meta key: what each service runs with (JSON, for ``status``).
SERVICE_DETAILS = "service_details"
#: meta key: a digest of each service's command and environment as last started (JSON).
SERVICE_DIGESTS = "service_digests"
STANDIN_READY = "configuration complete"
#: The step name of the agent's last message (its result), on the wire.
RESULT_STEP = "role"


class Agent:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        manager: ServiceManager,
        runner: Runner,
        changed: Signal | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self.manager = manager
        self._runner = runner
        self._lock = asyncio.Lock()
        #: Raised when a service's state changed (the wiring sends a heartbeat now).
        self.changed = changed or Signal("services changed")
        # The process manager restarts its own children: then the watch only reports.
        restore = None if manager.kind == "process" else self._start_again
        self.watch = ServiceWatch(self._states, restore, self.changed.emit)
        self._watcher: asyncio.Task[None] | None = None
        #: This node's own values (``_local_values``), once a role was applied.
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
            choice = await virt.choose(settings["virt_type"], self._detected)
            if settings["virt_type"] in ("", "auto"):
                self._detected = choice
            values.update(virt_type=choice.virt_type, virt_detail=choice.describe())
        return values

    def _keep(self, role: RoleDefinition, values: Mapping[str, str]) -> None:
        """Keep what the role's commands need at start-up, and the services'
        details for ``status`` (never a secret: resume_settings are not). A
        stand-in runs no driver: it has no detail to show."""
        keys = (*role.resume_settings, *self._node_values)
        kept = {key: values[key] for key in keys if key in values}
        services = role.services if self._real else ()
        details = {s.name: render.expand((s.detail,), values)[0] for s in services if s.detail}
        self._store.set_meta(
            {APPLIED_VALUES: json.dumps(kept), SERVICE_DETAILS: json.dumps(details)}
        )

    @property
    def _real(self) -> bool:
        return self._config.openstack_prefix is not None

    def _services_of(self, role: RoleDefinition) -> tuple[RoleService, ...]:
        """The services this node runs for ``role``: without an OpenStack
        environment, only those that have a configuration-checking stand-in."""
        if not self._real:
            return tuple(s for s in role.services if not s.real_only)
        return role.services

    def spec(self, service: RoleService) -> ServiceSpec:
        """How the ServiceManager runs ``service`` on this node."""
        values = self._values()
        if not self._real:
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
        known = sorted(r.value for r in APPLIED_BY_AGENT)
        if name not in known:
            raise errors.InvalidArgument(f"role {name!r} is unknown (known: {', '.join(known)})")
        return DEFINITIONS[Role(name)]

    async def apply_role(
        self, role_name: str, settings: Mapping[str, str]
    ) -> AsyncIterator[AgentStep]:
        role = self._role(role_name)
        if self._lock.locked():
            raise errors.AlreadyInitialised("this node's agent is already applying a role")
        async with self._lock:
            names = (
                role.step_names()
                if self._real
                else (RENDER_CONFIG, *(SERVICE_PREFIX + s.name for s in self._services_of(role)))
            )
            plan = (*names, DONE)
            result: list[ServiceRecord] = []
            actions, titles = self._actions(role, self._values(settings), result)
            total = len(names)
            async for record in self._runner.stream(self._config.node_name, plan, actions, titles):
                if record.step == DONE:
                    if record.final:
                        yield AgentStep(
                            RESULT_STEP,
                            StepState.DONE,
                            record.message,
                            100,
                            services=tuple(result),
                            final=True,
                        )
                    continue
                if record.state is StepState.FAILED:
                    continue  # its error is raised after it, as the call's status
                index = plan.index(record.step)
                percent = 100 * (index + (record.state is StepState.DONE)) // total
                yield AgentStep(record.step, record.state, record.message, percent)

    def _actions(
        self, role: RoleDefinition, values: dict[str, str], result: list[ServiceRecord]
    ) -> tuple[dict[str, StepAction], dict[str, str]]:
        """The steps of applying ``role`` here, and what each says as it starts."""
        root = self._config.config_root
        standin = "" if self._real else " (stand-in: no --openstack-prefix)"
        titles = {RENDER_CONFIG: f"rendering {len(role.files)} files into {root}"}

        #: The role's files this apply changes (restarts.py): what to restart.
        changed: set[str] = set()

        async def render_config(ctx: StepContext) -> str:
            self._node_values = await self._local_values(values)
            values.update(self._node_values)
            changed.update(await asyncio.to_thread(restarts.changed_files, role, values, root))
            paths = await asyncio.to_thread(render.render_role, role, values, root)
            self._store.set_meta({APPLIED_ROLE: role.name})
            self._keep(role, values)
            wrote = ", ".join(str(p.relative_to(root)) for p in paths)
            if not changed:
                return f"wrote {wrote} (none changed)"
            return f"wrote {wrote} (changed: {', '.join(sorted(changed))})"

        standins = _StandIns(
            self.manager, [] if self._real else [self.spec(s) for s in self._services_of(role)]
        )

        def start(service: RoleService) -> StepAction:
            async def action(ctx: StepContext) -> str:
                if not self._real:
                    status = await standins.wait_ready(service.name)
                    return f"{service.name} is {status.state}{standin}"
                kept = await self._unchanged(service, role, values, changed)
                if kept is not None:
                    return kept
                status = await steps.start_service(self.manager, service, values)
                self._remember_digest(service, values)
                return f"{service.name} is {status.state}{standin}"

            return action

        def setup(name: str) -> StepAction:
            async def action(ctx: StepContext) -> str:
                step = role.setup_step(name)
                return await steps.run_setup(
                    step, values, self._config.state_dir / "logs", _no_progress
                )

            return action

        async def done(ctx: StepContext) -> str:
            result[:] = await self.services()
            self.start_watch()
            up = sum(1 for s in result if s.state == "running")
            return f"role {role.name} applied: {up}/{len(result)} services running"

        actions: dict[str, StepAction] = {RENDER_CONFIG: render_config, DONE: done}
        for service in self._services_of(role):
            name = SERVICE_PREFIX + service.name
            actions[name] = start(service)
            titles[name] = f"starting {service.name} through {self.manager.kind}{standin}"
        for step in role.setup:
            actions[step.name] = setup(step.name)
            titles[step.name] = step.title
        return actions, titles

    async def _unchanged(
        self,
        service: RoleService,
        role: RoleDefinition,
        values: Mapping[str, str],
        changed: set[str],
    ) -> str | None:
        """Why ``service`` is left running as it is (None: (re)start it): it
        runs, none of the files it reads changed, nor its command line."""
        reads = restarts.files_read(service, role, values, self._config.config_root)
        if reads & changed:
            return None
        spec = steps.service_spec(service, values)
        digests = json.loads(self._store.get_meta(SERVICE_DIGESTS) or "{}")
        if digests.get(service.name) != restarts.spec_digest(spec):
            return None
        if (await self.manager.status(spec)).state != "running":
            return None
        message = f"{service.name} is running, unchanged: not restarted"
        if MIGRATION_CRL in changed and service.name == "libvirtd":
            crl = self._config.config_root / MIGRATION_CRL
            message += f"; its new CRL written{await self._reload_libvirt_tls(str(crl))}"
        return message

    def _remember_digest(self, service: RoleService, values: Mapping[str, str]) -> None:
        digests = json.loads(self._store.get_meta(SERVICE_DIGESTS) or "{}")
        digests[service.name] = restarts.spec_digest(steps.service_spec(service, values))
        self._store.set_meta({SERVICE_DIGESTS: json.dumps(digests)})

    def applied(self) -> RoleDefinition | None:
        name = self._store.get_meta(APPLIED_ROLE)
        return DEFINITIONS.get(Role(name)) if name else None

    async def services(self) -> list[ServiceRecord]:
        """The applied role's services, with what the watch does about them."""
        return self.watch.describe(await self._states())

    async def _states(self) -> list[ServiceRecord]:
        role = self.applied()
        if role is None:
            return []
        details = json.loads(self._store.get_meta(SERVICE_DETAILS) or "{}")
        return [
            dataclasses.replace(status, detail=details.get(status.name, ""))
            for status in [await self.manager.status(self.spec(s)) for s in self._services_of(role)]
        ]

    async def update_revocations(self, crl_pem: bytes) -> str:
        """The control revoked a node's certificate: rewrite the CRL that this
        node's libvirtd and QEMU check (QEMU re-reads its TLS directory at each migration) and
        have the node's own libvirtd reload its TLS files without a restart."""
        if not self._has_migration_transport():
            return "no migration transport on this node: nothing to update"
        if not crl_pem.startswith(b"-----BEGIN X509 CRL-----"):
            raise errors.InvalidArgument("the revocation list is not a PEM CRL")
        path = self._config.config_root / MIGRATION_CRL
        try:
            write_private_file(path, crl_pem, mode=0o640, dir_mode=0o750)
        except OSError as exc:
            raise errors.ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return f"{path} written{await self._reload_libvirt_tls(str(path))}"

    async def certificates_changed(self) -> None:
        """This node's certificate was renewed, or the CAs it trusts changed
        (a CA rotation): its libvirtd, the migration transport, holds the
        previous ones in memory (it reads its TLS files only at start and at
        ``server-update-tls``), and would present a revoked or expired
        certificate, or refuse peers under the new CA, at the next live
        migration. Reloaded here; QEMU re-reads its own at each migration. A
        failure is logged, not raised: the renewal itself stands."""
        if not self._has_migration_transport():
            return
        try:
            reloaded = await self._reload_libvirt_tls("this node's new certificate and CAs")
        except errors.MicrostackError as exc:
            log.warning("migration TLS not reloaded: %s", exc)
            return
        log.info("migration TLS credentials changed%s", reloaded)

    def _has_migration_transport(self) -> bool:
        """Whether the role applied here runs libvirtd's TLS listener (a compute)."""
        role = self.applied()
        return role is not None and MIGRATION_CRL in {f.path for f in role.files}

    async def _reload_libvirt_tls(self, what: str) -> str:
        """Have the node's own libvirtd reload its TLS files (CA, CRL, key and
        certificate) after ``what`` was written."""
        kind = self.manager.kind
        if not self._real or kind != "process":
            return " (libvirtd is not this node's own: not reloaded)"
        admin = steps.run_dir(self._config) / "libvirt" / "libvirt-admin-sock"
        argv = ["virt-admin", "-c", f"libvirtd:///system?socket={admin}", "server-update-tls"]
        try:
            result = await commands.run([*argv, "libvirtd"], timeout=30)
        except (OSError, TimeoutError) as exc:
            raise errors.ServiceFailed(f"{what} written, but libvirtd not reloaded: {exc}") from exc
        if result.returncode != 0:
            raise errors.ServiceFailed(
                f"{what} written, but libvirtd did not reload it: "
                f"{(result.stderr or result.stdout).strip()[-300:]}"
            )
        log.info("libvirtd reloaded its TLS files after %s", what)
        return " and reloaded by libvirtd"

    async def stop_role(self) -> list[ServiceRecord]:
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

    async def _start_again(self, name: str) -> ServiceRecord:
        """The watch found ``name`` down: start it and wait until it is ready."""
        role = self.applied()
        if role is None:
            raise errors.NotInitialised("this node runs no role any more")
        service = role.service(name)
        steps.make_dirs(service.dirs, self._values())
        spec = self.spec(service)
        await self.manager.restart(spec)
        return await self.manager.wait_ready(spec)

    async def resume(self) -> None:
        """At start-up: start the applied role's services that do not run
        (``steps.restart_after_daemon``) and watch them."""
        role = self.applied()
        if role is None:
            return
        await steps.restart_after_daemon(
            self.manager, self._services_of(role), self.spec, self._values()
        )
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


class _StandIns:
    """The stand-ins of one application of a role: all started at the first
    one's step, then each waited for at its own step, in the role's order.

    A stand-in depends on nothing but the files just rendered, and most of
    its start is the interpreter's (~50 ms): started together, their
    start-ups overlap instead of adding up on every join. The steps, their
    records and their order are those of starting them one by one, and so is
    the outcome of a failure: a stand-in that could not be spawned fails at
    its own step, and a step that fails (or is cancelled) stops every later
    stand-in started ahead of it, so none after it runs. Real services have
    an order (ovsdb-server before ovs-vswitchd before the agent) and keep
    starting one after the other (``steps.start_service``)."""

    def __init__(self, manager: ServiceManager, specs: list[ServiceSpec]) -> None:
        self._manager = manager
        self._specs = specs
        #: By name, in the role's order: each stand-in not yet waited for,
        #: with the error that kept it from starting (none later was started).
        self._ahead: dict[str, tuple[ServiceSpec, errors.MicrostackError | None]] | None = None

    async def _start_all(self) -> dict[str, tuple[ServiceSpec, errors.MicrostackError | None]]:
        started: dict[str, tuple[ServiceSpec, errors.MicrostackError | None]] = {}
        for spec in self._specs:
            try:
                await self._manager.restart(spec)
            except errors.MicrostackError as exc:
                started[spec.name] = (spec, exc)
                break
            started[spec.name] = (spec, None)
        return started

    async def wait_ready(self, name: str) -> ServiceRecord:
        if self._ahead is None:
            self._ahead = await self._start_all()
        spec, not_started = self._ahead.pop(name)
        if not_started is not None:
            raise not_started
        try:
            return await self._manager.wait_ready(spec)
        except BaseException:
            # As if started one by one: none after this one runs.
            for later, error in self._ahead.values():
                if error is None:
                    await self._manager.stop(later)
            self._ahead.clear()
            raise


async def _no_progress(message: str) -> None:
    """Setup steps on a node report only their start and end."""
