"""Run a role's steps on this node: start its services through the
ServiceManager and run its one-time bootstrap commands. Shared by the node
agent (the compute role) and the control plane (the control role).

Nothing here logs a setting's value: commands carry no secret on their
command line (roles.py), and messages name steps, files and exit statuses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import string
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.node import render, virt
from microstackd.node.roles import SERVICE_PATH, BootstrapStep, RoleService
from microstackd.node.services import (
    TAIL_LINES,
    ServiceManager,
    ServiceSpec,
    ServiceStatus,
    _read_tail,
    detect_kind,
)

Progress = Callable[[str], Awaitable[None]]


def _die_with_daemon(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A bootstrap command dies with the daemon that runs it (util-linux's
    setpriv sets its parent-death signal), so a step redone after a crash
    never races the interrupted run of itself. (Not a preexec_fn: forking
    with one makes gRPC's fork handlers log in the daemon.)"""
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL", "--", *argv) if setpriv else argv


def helpers_dir() -> Path:
    """The scripts run with the OpenStack environment's own Python
    (``wsgi_app.py``, ``bootstrap_cloud.py``): package data, never imported here."""
    return Path(str(resources.files("microstackd.node") / "openstack_env"))


def base_values(config: DaemonConfig) -> dict[str, str]:
    """The placeholders every role's commands, paths and templates may use."""
    # Beside the daemon's socket, named after it: two daemons whose sockets
    # share a directory (the README's by-hand cluster) must not share their
    # services' sockets and pid files.
    run_dir = str(config.socket.with_suffix(".services"))
    kind = detect_kind() if config.service_manager == "auto" else config.service_manager
    return {
        "config_root": str(config.config_root),
        "state_dir": str(config.state_dir),
        "state_path": str(config.state_dir / "services"),
        # Unix sockets (mysqld, ovsdb, libvirt) need a short path: by the daemon's socket.
        "run_dir": run_dir,
        "log_dir": str(config.state_dir / "logs"),
        "helpers_dir": str(helpers_dir()),
        "openstack_prefix": str(config.openstack_prefix or ""),
        # microstackd's own Python: its helpers (the uplink, stop hooks, the test image).
        "python": sys.executable,
        "node_name": config.node_name,
        "libvirt_uri": virt.libvirt_uri(kind, run_dir),
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
    )


async def start_service(
    manager: ServiceManager, service: RoleService, values: Mapping[str, str]
) -> ServiceStatus:
    """(Re)start the real ``service`` and wait until it is ready; a service that
    fails fails with its last log lines (``errors.ServiceFailed``)."""
    make_dirs(service.dirs, values)
    spec = service_spec(service, values)
    await manager.restart(spec)
    return await manager.wait_ready(spec)


async def run_bootstrap(
    step: BootstrapStep, values: Mapping[str, str], log_dir: Path, progress: Progress
) -> str:
    """Run ``step``'s commands in order; return what was done. A failure is an
    ``errors.ServiceFailed`` naming the command, its status and its last log lines."""
    if step.creates and Path(_expand(step.creates, values)).exists():
        return f"{step.title}: already done ({_expand(step.creates, values)} exists)"
    make_dirs(step.dirs, values)
    env = {**os.environ, "PATH": _expand(SERVICE_PATH, values), **_env(step.env, values)}
    stdin = render.render_text(step.stdin_template, values).encode() if step.stdin_template else b""
    log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    log_path = log_dir / f"bootstrap-{step.name}.log"
    started = time.monotonic()
    for index, command in enumerate(step.commands, start=1):
        argv = render.expand(command, values)
        what = " ".join([Path(argv[0]).name, *_verbs(argv)])
        if len(step.commands) > 1:
            await progress(f"{what} ({index}/{len(step.commands)})")
        await _run_logged(step, argv, env, stdin, log_path, what)
    return f"{step.title}: done in {time.monotonic() - started:.1f} s"


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
    step: BootstrapStep,
    argv: tuple[str, ...],
    env: Mapping[str, str],
    stdin: bytes,
    log_path: Path,
    what: str,
) -> None:
    with open(log_path, "ab") as log:
        start = log.tell()
        log.write(f"[microstackd] {step.name}: running {what}\n".encode())
        log.flush()
        try:
            proc = await asyncio.create_subprocess_exec(
                *_die_with_daemon(argv),
                stdin=asyncio.subprocess.PIPE,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as exc:
            raise errors.ServiceFailed(
                f"{step.name}: cannot run {argv[0]}: {exc.strerror or exc}"
            ) from exc
        try:
            async with asyncio.timeout(step.timeout):
                await proc.communicate(stdin)
        except BaseException as exc:
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise errors.ServiceFailed(
                    f"{step.name}: {what} did not finish within {step.timeout:g} s; see {log_path}"
                ) from None
            raise
    code = proc.returncode
    assert code is not None
    if code not in step.ok_codes:
        lines = _read_tail(log_path, start, None, TAIL_LINES)
        raise errors.ServiceFailed(
            f"{step.name}: {what} exited with status {code}; last log lines ({log_path}):\n"
            + "\n".join(lines)
        )
