"""Run a role's steps on this node: start its services through the
ServiceManager and run its one-time setup commands. Shared by the node
agent (the compute role) and the control plane (the control role).

Nothing here logs a setting's value: commands carry no secret on their
command line (roles.py), and messages name steps, files and exit statuses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import string
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from microstackd import commands, errors
from microstackd.config import DaemonConfig
from microstackd.model import ServiceRecord
from microstackd.node import render, virt
from microstackd.node.roles.parts import SERVICE_PATH, RoleService, SetupStep
from microstackd.node.services import TAIL_LINES, ServiceManager, ServiceSpec, detect_kind
from microstackd.node.services.spec import RUNNING, STARTING, open_log, read_tail

log = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]


def _die_with_daemon(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A setup command dies with the daemon that runs it (util-linux's
    setpriv sets its parent-death signal), so a step redone after a crash
    never races the interrupted run of itself. (Not a preexec_fn: forking
    with one makes gRPC's fork handlers log in the daemon.)"""
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL", "--", *argv) if setpriv else argv


def helpers_dir() -> Path:
    """The scripts run with the OpenStack environment's own Python
    (``wsgi_app.py``, ``setup_cloud.py``): package data, never imported here."""
    return Path(str(resources.files("microstackd.node") / "openstack_env"))


def run_dir(config: DaemonConfig) -> Path:
    """Where a node's services keep their Unix sockets and pid files (mysqld,
    ovsdb, libvirt: a short path) — beside the daemon's socket and named
    after it: two daemons whose sockets share a directory (the README's
    by-hand cluster) must not share their services' sockets."""
    return config.socket.with_suffix(".services")


def base_values(config: DaemonConfig) -> dict[str, str]:
    """The placeholders every role's commands, paths and templates may use."""
    services_dir = str(run_dir(config))
    kind = detect_kind() if config.service_manager == "auto" else config.service_manager
    return {
        "config_root": str(config.config_root),
        "state_dir": str(config.state_dir),
        "state_path": str(config.state_dir / "services"),
        "run_dir": services_dir,
        "log_dir": str(config.state_dir / "logs"),
        "helpers_dir": str(helpers_dir()),
        "openstack_prefix": str(config.openstack_prefix or ""),
        # microstackd's own Python: its helpers (the uplink, stop hooks, the test image).
        "python": sys.executable,
        "node_name": config.node_name,
        "libvirt_uri": virt.libvirt_uri(kind, services_dir),
        # nova-compute binds the node's instances over the common path only
        # where its libvirtd is the node's own (the process manager).
        "instances_bind": "yes" if kind == "process" else "",
    }


def _expand(text: str, values: Mapping[str, str]) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as exc:
        raise errors.ConfigError(f"{text!r} needs {exc.args[0]!r}") from exc


def _env(pairs: tuple[tuple[str, str], ...], values: Mapping[str, str]) -> dict[str, str]:
    return {key: _expand(value, values) for key, value in pairs}


def make_dirs(dirs: tuple[str, ...], values: Mapping[str, str]) -> None:
    for d in dirs:
        path = Path(_expand(d, values))
        try:
            path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.ConfigError(f"cannot create {path}: {exc.strerror or exc}") from exc


def service_spec(service: RoleService, values: Mapping[str, str]) -> ServiceSpec:
    """How the ServiceManager runs the real ``service``."""
    return ServiceSpec(
        name=service.name,
        argv=render.expand(service.command, values),
        unit=service.unit,
        snap_service=service.snap_service,
        env=_env(service.env, values),
        ready_after=service.ready_after,
        ready_pattern=service.ready_pattern,
        ready_check=_expand(service.ready_check, values),
        start_timeout=service.start_timeout,
        pre_stop=tuple(render.expand(c, values) for c in service.pre_stop),
        post_stop=tuple(render.expand(c, values) for c in service.post_stop),
        teardown=tuple(render.expand(c, values) for c in service.teardown),
    )


async def start_service(
    manager: ServiceManager, service: RoleService, values: Mapping[str, str]
) -> ServiceRecord:
    """(Re)start the real ``service`` and wait until it is ready; a service that
    fails fails with its last log lines (``errors.ServiceFailed``)."""
    make_dirs(service.dirs, values)
    spec = service_spec(service, values)
    await manager.restart(spec)
    return await manager.wait_ready(spec)


async def restart_after_daemon(
    manager: ServiceManager,
    services: Sequence[RoleService],
    spec: Callable[[RoleService], ServiceSpec],
    values: Mapping[str, str],
    *,
    before: Callable[[], Awaitable[None]] | None = None,
) -> list[RoleService]:
    """At start-up: start the services a role had running that do not run —
    all of them with the process manager (they died with the daemon); with
    systemd or snapd those they no longer run (after a reboot: the units
    microstackd writes are in /run). Services that run are left alone: a
    daemon restart must not restart the cloud. ``before`` runs once, first,
    when any is to be started. A service that cannot be restarted (or whose
    state cannot be read) is logged and left for its step, or the service
    watch, to report; the ones restarted are returned."""
    down = []
    for service in services:
        if manager.kind != "process":
            try:
                state = (await manager.status(spec(service))).state
            except errors.MicrostackError as exc:
                log.warning("service state unknown service=%s error=%r", service.name, exc.message)
                continue
            if state in (RUNNING, STARTING):
                continue
        down.append(service)
    if down and before is not None:
        await before()
    restarted = []
    for service in down:
        try:
            make_dirs(service.dirs, values)
            await manager.restart(spec(service))
            restarted.append(service)
        except errors.MicrostackError as exc:
            log.warning("service restart failed service=%s error=%r", service.name, exc.message)
    return restarted


async def run_setup(
    step: SetupStep,
    values: Mapping[str, str],
    log_dir: Path,
    progress: Progress,
    *,
    fresh_schema: bool = False,
) -> str:
    """Run ``step``'s commands in order; return what was done. A failure is an
    ``errors.ServiceFailed`` naming the command, its status and its last log lines.

    ``fresh_schema``: first drop ``step.schema``'s databases and create them
    empty (an earlier attempt left them half-migrated). Only init may ask
    it, and only for a step not done yet: no one else has written them."""
    if step.creates and Path(_expand(step.creates, values)).exists():
        return f"{step.title}: already done ({_expand(step.creates, values)} exists)"
    make_dirs(step.dirs, values)
    env = {**os.environ, "PATH": _expand(SERVICE_PATH, values), **_env(step.env, values)}
    stdin = render.render_text(step.stdin_template, values).encode() if step.stdin_template else b""
    log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    log_path = log_dir / f"setup-{step.name}.log"
    started = time.monotonic()
    if fresh_schema and step.schema:
        names = ", ".join(step.schema)
        await progress(
            f"an earlier attempt did not finish: dropping {names} and creating them empty "
            "(a half-done migration cannot be redone; nothing else has used them yet)"
        )
        client = dataclasses.replace(step, ok_codes=(0,), timeout=RESET_TIMEOUT)
        argv = render.expand(step.schema_client, values)
        what = f"{Path(argv[0]).name} (dropping and creating {names})"
        await _run_logged(client, argv, env, reset_sql(step.schema), log_path, what)
    for index, command in enumerate(step.commands, start=1):
        argv = render.expand(command, values)
        what = " ".join([Path(argv[0]).name, *_verbs(argv)])
        if len(step.commands) > 1:
            await progress(f"{what} ({index}/{len(step.commands)})")
        await _run_logged(step, argv, env, stdin, log_path, what)
    return f"{step.title}: done in {time.monotonic() - started:.1f} s"


#: Seconds dropping and creating a step's databases may take.
RESET_TIMEOUT = 120.0
_DATABASE_NAME = re.compile(r"[a-z][a-z0-9_]*")


def reset_sql(databases: tuple[str, ...]) -> bytes:
    """The statements that drop ``databases`` and create them empty, as the
    databases step made them (the user's grants are by name: they stay)."""
    lines = []
    for name in databases:
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a database name: {name!r}")
        lines += [
            f"DROP DATABASE IF EXISTS `{name}`;",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4;",
        ]
    return ("\n".join(lines) + "\n").encode()


def _verbs(argv: tuple[str, ...]) -> list[str]:
    """The sub-command words of a command line (no paths, no option values)."""
    words, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = "=" not in arg and arg in ("--config-file", "--name")
        elif arg.endswith(".py"):
            words.append(Path(arg).name)
        elif "/" not in arg:
            words.append(arg)
    return words[:3]


async def _run_logged(
    step: SetupStep,
    argv: tuple[str, ...],
    env: Mapping[str, str],
    stdin: bytes,
    log_path: Path,
    what: str,
) -> None:
    try:
        log = os.fdopen(open_log(log_path), "ab")
    except OSError as exc:
        raise errors.ServiceFailed(
            f"{step.name}: cannot open its log {log_path}: {exc.strerror or exc}"
        ) from exc
    with log:
        start = log.tell()
        log.write(f"[microstackd] {step.name}: running {what}\n".encode())
        log.flush()
        try:
            done = await commands.run(
                _die_with_daemon(argv),
                timeout=step.timeout,
                input=stdin,
                stdout=log,
                stderr=commands.STDOUT,
                env=env,
            )
        except OSError as exc:
            raise errors.ServiceFailed(
                f"{step.name}: cannot run {argv[0]}: {exc.strerror or exc}"
            ) from exc
        except TimeoutError:
            raise errors.ServiceFailed(
                f"{step.name}: {what} did not finish within {step.timeout:g} s; see {log_path}"
            ) from None
    if done.returncode not in step.ok_codes:
        lines = read_tail(log_path, start, None, TAIL_LINES)
        raise errors.ServiceFailed(
            f"{step.name}: {what} exited with status {done.returncode}; "
            f"last log lines ({log_path}):\n" + "\n".join(lines)
        )
