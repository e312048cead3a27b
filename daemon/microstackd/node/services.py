"""Service managers: how a node starts, watches and stops the services of its role.

Three backends, chosen by the daemon configuration (``make_manager``):

* ``systemd``: units driven with ``systemctl``, logs read from the journal;
* ``snap``: services of the MicroStack snap driven with ``snapctl``;
* ``process``: supervised child processes, for a sandbox on one machine. Each
  service runs in its own process group with its output appended to
  ``LOG_DIR/NAME.log``; it is restarted with capped exponential back-off when
  it exits on its own, and every child is stopped when the daemon shuts down
  (or, after a daemon was killed, when the next daemon starts the service).

Every failure an operator must act on is an ``errors.ServiceFailed`` whose
message names the service, its exit status when known, and its last log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from microstackd import errors

log = logging.getLogger(__name__)

RUNNING = "running"
STARTING = "starting"
FAILED = "failed"
STOPPED = "stopped"

#: Log lines quoted in a failure message, and the longest line quoted.
TAIL_LINES = 20
TAIL_LINE_CHARS = 300

#: How long a ``systemctl``/``snapctl``/``journalctl`` call may take before we
#: give up on it (systemd's own start and stop timeouts are shorter).
COMMAND_TIMEOUT = 300.0

#: Exists when systemd is the init system (sd_booted(3)).
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")

#: Environment variable marking every child of the process manager, so that a
#: later daemon can recognise the children of one that was killed.
SERVICE_MARKER = "MICROSTACKD_SERVICE"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}")


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a node's role, as every backend needs it."""

    name: str
    #: Command line for the process manager (already rendered, absolute paths).
    argv: tuple[str, ...]
    #: systemd unit; defaults to ``NAME.service``.
    unit: str = ""
    #: snap service; defaults to ``microstack.NAME``.
    snap_service: str = ""
    #: Extra environment for the process manager.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Process manager: running once alive this long (and, if
    #: ``ready_pattern``, the pattern seen in its log).
    ready_after: float = 2.0
    #: Optional regex that must appear in a line of the service's log (this
    #: run's output) before it counts as running.
    ready_pattern: str = ""
    #: How long ``wait_ready`` waits.
    start_timeout: float = 60.0
    #: Process manager: also ready only once this answers: ``tcp://HOST:PORT``
    #: (accepts a connection), ``unix:///PATH`` (a Unix socket accepts) or
    #: ``http://HOST:PORT/PATH`` (any HTTP status below 500).
    ready_check: str = ""
    #: Commands run before the service is stopped (e.g. destroy libvirt's
    #: domains while libvirtd still answers) and once it is gone (e.g. end
    #: what it started outside its process group: dnsmasq, QEMU). Each may
    #: fail; its output goes to the service's log. Absolute paths.
    pre_stop: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise errors.InvalidArgument(f"invalid service name {self.name!r}")
        if self.ready_pattern:
            try:
                re.compile(self.ready_pattern)
            except re.error as exc:
                raise errors.InvalidArgument(
                    f"{self.name}: ready_pattern {self.ready_pattern!r} is not a valid "
                    f"regular expression: {exc}"
                ) from exc
        if self.ready_check and not self.ready_check.startswith(("tcp://", "unix://", "http://")):
            raise errors.InvalidArgument(
                f"{self.name}: ready_check {self.ready_check!r} must start with tcp://, "
                "unix:// or http://"
            )
        if self.ready_after < 0 or self.start_timeout <= 0:
            raise errors.InvalidArgument(
                f"{self.name}: ready_after must be >= 0 and start_timeout > 0"
            )
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "pre_stop", tuple(tuple(c) for c in self.pre_stop))
        object.__setattr__(self, "post_stop", tuple(tuple(c) for c in self.post_stop))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not self.unit:
            object.__setattr__(self, "unit", f"{self.name}.service")
        if not self.snap_service:
            object.__setattr__(self, "snap_service", f"microstack.{self.name}")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    #: Exactly one of "running", "starting", "failed", "stopped".
    state: str
    #: On failed: why (exit status and the last log lines).
    message: str = ""
    #: What it runs with, for a person (the role's ``detail``; e.g. nova-compute's
    #: driver and virt_type). Set by the agent, not by the managers.
    detail: str = ""


class ServiceManager(Protocol):
    kind: str  # "systemd" | "snap" | "process"

    async def restart(self, spec: ServiceSpec) -> None:
        """(Re)start the service."""
        ...

    async def status(self, spec: ServiceSpec) -> ServiceStatus: ...

    async def wait_ready(self, spec: ServiceSpec) -> ServiceStatus:
        """Return the running status, or raise ``errors.ServiceFailed`` naming
        the service, its exit status when known and its last log lines."""
        ...

    async def stop(self, spec: ServiceSpec) -> None: ...

    async def close(self) -> None:
        """Daemon shutdown: the process manager stops all its children."""
        ...

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str: ...


def detect_kind() -> str:
    """The backend for ``auto``: snap inside the snap, systemd where systemd
    is the init system, otherwise plain child processes."""
    if os.environ.get("SNAP"):
        # Checked first: a snap runs on a systemd host, but its confinement
        # lets it drive its own services only through snapctl.
        return "snap"
    if SYSTEMD_RUNTIME_DIR.is_dir():
        return "systemd"
    return "process"


def make_manager(kind: str, *, log_dir: Path) -> ServiceManager:
    """The service manager named by the daemon configuration."""
    if kind == "auto":
        kind = detect_kind()
    if kind == "systemd":
        return SystemdManager()
    if kind == "snap":
        return SnapManager()
    if kind == "process":
        return ProcessManager(log_dir)
    raise errors.InvalidArgument(
        f"unknown service manager {kind!r}: expected systemd, snap, process or auto"
    )


# -- messages -----------------------------------------------------------------


def _clip(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= TAIL_LINE_CHARS else line[: TAIL_LINE_CHARS - 1] + "…"


def _last_lines(text: str, lines: int) -> list[str]:
    if lines <= 0:
        return []
    out = [_clip(line) for line in text.splitlines()]
    while out and not out[-1]:
        out.pop()
    return out[-lines:]


def _with_tail(head: str, lines: Sequence[str], note: str = "its log is empty") -> str:
    if not lines:
        return f"{head}; {note}"
    return f"{head}; last log lines:\n" + "\n".join(lines)


def _exit_head(name: str, returncode: int) -> str:
    if returncode >= 0:
        return f"{name} exited with status {returncode}"
    try:
        signame = signal.Signals(-returncode).name
    except ValueError:
        signame = f"signal {-returncode}"
    return f"{name} was killed by {signame}"


def _timeout_head(spec: ServiceSpec, reason: str) -> str:
    return f"{spec.name} did not become ready within {spec.start_timeout:g} s ({reason})"


# -- running commands ---------------------------------------------------------


@dataclass(frozen=True)
class _Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> _Completed:
        if self.returncode != 0:
            why = self.stderr.strip() or self.stdout.strip() or "no output"
            raise errors.ServiceFailed(
                f"{shlex.join(self.argv)} failed with status {self.returncode}: {why}"
            )
        return self


async def _run(*argv: str) -> _Completed:
    """Run a short command to completion and capture its output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise errors.ServiceFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await proc.communicate()
    except BaseException as exc:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise errors.ServiceFailed(
                f"{shlex.join(argv)} did not finish within {COMMAND_TIMEOUT:g} s"
            ) from None
        raise
    assert proc.returncode is not None
    return _Completed(
        tuple(argv),
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


#: How long one stop hook may take.
HOOK_TIMEOUT = 60.0


async def run_hooks(
    name: str, commands: Sequence[tuple[str, ...]], note: Callable[[str], None]
) -> None:
    """Run a service's stop hooks one by one; say in its log what each did.
    A hook that fails is noted, never raised: stopping must go on."""
    for argv in commands:
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                result = await _run(*argv)
        except TimeoutError:
            note(f"{name}: {shlex.join(argv)} did not finish within {HOOK_TIMEOUT:g} s")
            continue
        except errors.ServiceFailed as exc:
            note(f"{name}: {exc.message}")
            continue
        output = "; ".join(line for line in (result.stdout + result.stderr).splitlines() if line)
        status = "done" if result.returncode == 0 else f"failed with status {result.returncode}"
        note(f"{name}: {shlex.join(argv)} {status}" + (f": {_clip(output)}" if output else ""))


async def _journal(unit: str, lines: int) -> tuple[list[str], str]:
    """The last lines of a unit's journal, or none and why."""
    if shutil.which("journalctl") is None:
        return [], "no log is available (journalctl is not installed)"
    result = await _run("journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat")
    if result.returncode != 0:
        why = result.stderr.strip() or f"status {result.returncode}"
        return [], f"no log is available (journalctl failed: {_clip(why)})"
    return _last_lines(result.stdout, lines), "its log is empty"


# -- systemd and snap ---------------------------------------------------------


class _PollingManager:
    """Shared by the backends that ask an init system for the state."""

    kind: str
    #: Raw states: ready, and dead (nothing more will happen by waiting).
    _active: frozenset[str]
    _dead: frozenset[str]

    def __init__(self, *, poll_interval: float = 0.5) -> None:
        self._poll_interval = poll_interval

    async def _raw_state(self, spec: ServiceSpec) -> str:
        raise NotImplementedError

    def _state(self, raw: str) -> str:
        raise NotImplementedError

    async def _failure(self, spec: ServiceSpec, raw: str) -> str:
        """Why the service is not running: a head and its last log lines."""
        raise NotImplementedError

    async def _tail(self, spec: ServiceSpec, lines: int) -> tuple[list[str], str]:
        raise NotImplementedError

    async def status(self, spec: ServiceSpec) -> ServiceStatus:
        raw = await self._raw_state(spec)
        state = self._state(raw)
        if state == FAILED:
            return ServiceStatus(spec.name, FAILED, await self._failure(spec, raw))
        return ServiceStatus(spec.name, state)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceStatus:
        raw = ""
        deadline = asyncio.timeout(spec.start_timeout)
        try:
            async with deadline:
                while True:
                    raw = await self._raw_state(spec)
                    if raw in self._active or raw in self._dead:
                        break
                    await asyncio.sleep(self._poll_interval)
        except TimeoutError:
            if not deadline.expired():
                raise
            lines, note = await self._tail(spec, TAIL_LINES)
            reason = f"it is {raw}" if raw else "its state could not be read in time"
            raise errors.ServiceFailed(
                _with_tail(_timeout_head(spec, reason), lines, note)
            ) from None
        if raw in self._active:
            return ServiceStatus(spec.name, RUNNING)
        raise errors.ServiceFailed(await self._failure(spec, raw))

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str:
        tail, note = await self._tail(spec, lines)
        return "\n".join(tail) if tail else note

    async def close(self) -> None:
        """Nothing to do: the init system keeps running the services."""


def _log_note(text: str) -> None:
    """Where systemd and snapd keep the service's log, ours goes to the daemon's."""
    log.info("%s", text)


_SYSTEMD_STATES = {
    "active": RUNNING,
    "activating": STARTING,
    "reloading": STARTING,
    "refreshing": STARTING,
    "failed": FAILED,
    "inactive": STOPPED,
    "deactivating": STOPPED,
    "unknown": STOPPED,
}


class SystemdManager(_PollingManager):
    """Services are systemd units, driven with ``systemctl``."""

    kind = "systemd"
    _active = frozenset({"active"})
    # After `systemctl restart` returns, "inactive" means the service already
    # exited (cleanly) — waiting longer cannot make it active.
    _dead = frozenset({"failed", "inactive"})

    async def restart(self, spec: ServiceSpec) -> None:
        (await _run("systemctl", "restart", spec.unit)).check()

    async def stop(self, spec: ServiceSpec) -> None:
        await run_hooks(spec.name, spec.pre_stop, _log_note)
        (await _run("systemctl", "stop", spec.unit)).check()
        await run_hooks(spec.name, spec.post_stop, _log_note)

    async def _raw_state(self, spec: ServiceSpec) -> str:
        # is-active exits non-zero for every state but active: read stdout.
        result = await _run("systemctl", "is-active", spec.unit)
        raw = result.stdout.strip().splitlines()
        if not raw:
            result.check()
            raise errors.ServiceFailed(f"systemctl is-active {spec.unit} printed no state")
        return raw[0]

    def _state(self, raw: str) -> str:
        return _SYSTEMD_STATES.get(raw, STOPPED)

    async def _failure(self, spec: ServiceSpec, raw: str) -> str:
        head = f"{spec.name} is {raw}"
        show = await _run(
            "systemctl", "show", spec.unit, "--property=Result,ExecMainCode,ExecMainStatus"
        )
        if show.returncode == 0:
            props: dict[str, str] = {}
            for line in show.stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    props[key] = value
            code, status = props.get("ExecMainCode", ""), props.get("ExecMainStatus", "")
            result = props.get("Result", "")
            if code == "1" and status.isdigit():  # CLD_EXITED
                head = _exit_head(spec.name, int(status))
            elif code in ("2", "3") and status.isdigit():  # CLD_KILLED, CLD_DUMPED
                head = _exit_head(spec.name, -int(status))
            if result not in ("", "success", "exit-code", "signal", "core-dump"):
                head += f" ({result})"
        lines, note = await self._tail(spec, TAIL_LINES)
        return _with_tail(head, lines, note)

    async def _tail(self, spec: ServiceSpec, lines: int) -> tuple[list[str], str]:
        return await _journal(spec.unit, lines)


class SnapManager(_PollingManager):
    """Services of the MicroStack snap, driven with ``snapctl``."""

    kind = "snap"
    _active = frozenset({"active"})
    # snapd reports no "failed": a service that died after restart is inactive.
    _dead = frozenset({"inactive"})

    async def restart(self, spec: ServiceSpec) -> None:
        (await _run("snapctl", "restart", spec.snap_service)).check()

    async def stop(self, spec: ServiceSpec) -> None:
        await run_hooks(spec.name, spec.pre_stop, _log_note)
        (await _run("snapctl", "stop", spec.snap_service)).check()
        await run_hooks(spec.name, spec.post_stop, _log_note)

    async def _raw_state(self, spec: ServiceSpec) -> str:
        result = (await _run("snapctl", "services", spec.snap_service)).check()
        return _parse_snap_services(result.stdout, spec.snap_service)

    def _state(self, raw: str) -> str:
        return RUNNING if raw == "active" else STOPPED

    async def _failure(self, spec: ServiceSpec, raw: str) -> str:
        lines, note = await self._tail(spec, TAIL_LINES)
        return _with_tail(f"{spec.name} is not running (snapctl reports it {raw})", lines, note)

    async def _tail(self, spec: ServiceSpec, lines: int) -> tuple[list[str], str]:
        return await _journal(f"snap.{spec.snap_service}.service", lines)


def _parse_snap_services(text: str, service: str) -> str:
    """The Current column of ``service`` in ``snapctl services`` output:

    Service                  Startup  Current   Notes
    microstack.nova-compute  enabled  active    -
    """
    rows = [line.split() for line in text.splitlines() if line.strip()]
    column = 2
    if rows and rows[0][0] == "Service":
        header = [cell.lower() for cell in rows[0]]
        column = header.index("current") if "current" in header else column
        rows = rows[1:]
    for row in rows:
        if row[0] == service and len(row) > column:
            return row[column]
    raise errors.ServiceFailed(f"snapctl services does not list {service}")


# -- supervised child processes -----------------------------------------------


@dataclass(eq=False)
class _Child:
    """One run of a service."""

    proc: asyncio.subprocess.Process
    started: float  # loop time
    #: This run's output in the log: from log_start to log_end (None: EOF).
    log_start: int
    log_end: int | None = None
    scan_offset: int = 0
    scan_partial: bytes = b""
    pattern_seen: bool = False
    ready: bool = False
    #: The spec's ready_check has answered (for this run).
    probe_ok: bool = False


@dataclass(eq=False)
class _Service:
    spec: ServiceSpec
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    child: _Child | None = None
    supervisor: asyncio.Task[None] | None = None
    #: Why the service is failed when no child runs (could not be started).
    failure: str = ""
    #: Unexpected exits so far, and the message of the last one.
    crashes: int = 0
    last_crash: str = ""
    #: Exits since the service was last ready: >0 with no ready child is a
    #: crash loop, shown failed (with the last exit's log lines) until it is ready.
    unready_exits: int = 0
    orphans_checked: bool = False


class ProcessManager:
    """Each service a supervised child process in its own process group."""

    kind = "process"

    def __init__(
        self,
        log_dir: Path,
        *,
        stop_grace: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        backoff_reset: float = 60.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._log_dir = Path(log_dir).absolute()
        self._stop_grace = stop_grace
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        #: A child that stayed up this long starts the back-off over.
        self._backoff_reset = backoff_reset
        self._poll_interval = poll_interval
        self._services: dict[str, _Service] = {}
        self._closed = False

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.pid"

    def _marker(self, name: str) -> str:
        return str(self.log_path(name))

    # -- the API --------------------------------------------------------------

    async def restart(self, spec: ServiceSpec) -> None:
        if self._closed:
            raise errors.ServiceFailed(f"cannot start {spec.name}: the daemon is shutting down")
        if not spec.argv:
            raise errors.ServiceFailed(f"{spec.name} has no command line to run")
        svc = self._services.setdefault(spec.name, _Service(spec))
        async with svc.lock:
            if self._closed:
                raise errors.ServiceFailed(f"cannot start {spec.name}: the daemon is shutting down")
            await self._halt(svc)
            svc.spec = spec
            svc.failure = ""
            svc.unready_exits = 0
            try:
                await self._spawn(svc)
            except errors.ServiceFailed as exc:
                svc.failure = exc.message
                raise
            svc.supervisor = asyncio.create_task(
                self._supervise(svc), name=f"supervise {spec.name}"
            )

    async def status(self, spec: ServiceSpec) -> ServiceStatus:
        svc = self._services.get(spec.name)
        if svc is None:
            return ServiceStatus(spec.name, STOPPED)
        await self._probe(svc)
        return self._status(svc)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceStatus:
        svc = self._services.get(spec.name)
        if svc is None:
            raise errors.ServiceFailed(f"{spec.name} is not running: it was never started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.start_timeout
        crashes = svc.crashes
        while True:
            if svc.crashes != crashes:  # it exited and was already restarted
                raise errors.ServiceFailed(svc.last_crash)
            await self._probe(svc)
            status = self._status(svc)
            if status.state == RUNNING:
                return status
            if status.state == FAILED:
                raise errors.ServiceFailed(status.message)
            if status.state == STOPPED:
                raise errors.ServiceFailed(f"{spec.name} is not running: it was stopped")
            if loop.time() >= deadline:
                raise errors.ServiceFailed(self._timeout_message(svc))
            await asyncio.sleep(min(self._poll_interval, max(0.0, deadline - loop.time())))

    async def stop(self, spec: ServiceSpec) -> None:
        svc = self._services.get(spec.name)
        if svc is None:
            return
        async with svc.lock:
            await self._halt(svc)
            svc.failure = ""

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*(self.stop(svc.spec) for svc in list(self._services.values())))

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str:
        path = self.log_path(spec.name)
        if not path.exists():
            return f"no log is available ({spec.name} has not been started)"
        return "\n".join(_read_tail(path, 0, None, lines))

    def pid(self, spec: ServiceSpec) -> int | None:
        """The process id (= process group) of the service's current child."""
        svc = self._services.get(spec.name)
        if svc is None or svc.child is None or svc.child.proc.returncode is not None:
            return None
        return svc.child.proc.pid

    # -- state ----------------------------------------------------------------

    def _status(self, svc: _Service) -> ServiceStatus:
        name = svc.spec.name
        child = svc.child
        if child is None:
            if svc.failure:
                return ServiceStatus(name, FAILED, svc.failure)
            return ServiceStatus(name, STOPPED)
        if child.proc.returncode is not None:
            return ServiceStatus(name, FAILED, self._exit_message(svc, child))
        if self._is_ready(svc, child):
            return ServiceStatus(name, RUNNING)
        if svc.unready_exits:
            return ServiceStatus(name, FAILED, self._crash_loop_message(svc))
        return ServiceStatus(name, STARTING)

    def _crash_loop_message(self, svc: _Service) -> str:
        times = "once" if svc.unready_exits == 1 else f"{svc.unready_exits} times"
        return (
            f"{svc.spec.name} keeps exiting before it is ready ({times} so far; restarted "
            f"each time). The last time: {svc.last_crash}"
        )

    def _is_ready(self, svc: _Service, child: _Child) -> bool:
        if child.ready:
            return True
        spec = svc.spec
        if asyncio.get_running_loop().time() - child.started < spec.ready_after:
            return False
        if spec.ready_pattern and not self._pattern_seen(svc, child):
            return False
        if spec.ready_check and not child.probe_ok:
            return False
        child.ready = True
        svc.unready_exits = 0
        return True

    def _was_ready(self, svc: _Service, child: _Child) -> bool:
        """Whether a child that exited had been ready: seen ready, or alive
        past its readiness rules (its probe cannot be asked any more: a child
        that lived past the back-off reset counts as having answered)."""
        if child.ready:
            return True
        lived = asyncio.get_running_loop().time() - child.started
        if lived >= self._backoff_reset:
            return True
        spec = svc.spec
        if lived < spec.ready_after or spec.ready_check:
            return False
        return not spec.ready_pattern or self._pattern_seen(svc, child)

    async def _probe(self, svc: _Service) -> None:
        """Try the spec's ready_check once (at most 1 s) for a live child."""
        child = svc.child
        check = svc.spec.ready_check
        if not check or child is None or child.probe_ok or child.proc.returncode is not None:
            return
        child.probe_ok = await probe(check)

    def _pattern_seen(self, svc: _Service, child: _Child) -> bool:
        if child.pattern_seen:
            return True
        pattern = re.compile(svc.spec.ready_pattern)
        try:
            with open(self.log_path(svc.spec.name), "rb") as f:
                f.seek(child.scan_offset)
                while chunk := f.read(1 << 20):
                    child.scan_offset += len(chunk)
                    *complete, child.scan_partial = (child.scan_partial + chunk).split(b"\n")
                    if any(pattern.search(line.decode(errors="replace")) for line in complete):
                        child.pattern_seen = True
                        return True
        except OSError:
            return False
        if pattern.search(child.scan_partial.decode(errors="replace")):
            child.pattern_seen = True
        elif len(child.scan_partial) > 1 << 16:
            child.scan_partial = child.scan_partial[-4096:]
        return child.pattern_seen

    def _run_tail(self, svc: _Service, child: _Child) -> list[str]:
        return _read_tail(self.log_path(svc.spec.name), child.log_start, child.log_end, TAIL_LINES)

    def _exit_message(self, svc: _Service, child: _Child) -> str:
        assert child.proc.returncode is not None
        head = _exit_head(svc.spec.name, child.proc.returncode)
        return _with_tail(head, self._run_tail(svc, child))

    def _timeout_message(self, svc: _Service) -> str:
        spec, child = svc.spec, svc.child
        if spec.ready_pattern and (child is None or not child.pattern_seen):
            reason = f"no line matching {spec.ready_pattern!r} in its log"
        elif spec.ready_check and (child is None or not child.probe_ok):
            reason = f"{spec.ready_check} did not answer"
        else:
            reason = f"it must stay up {spec.ready_after:g} s"
        lines = self._run_tail(svc, child) if child is not None else []
        return _with_tail(_timeout_head(spec, reason), lines)

    # -- children -------------------------------------------------------------

    def _note(self, name: str, text: str) -> None:
        """Append a line of our own to a service's log."""
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            with open(self.log_path(name), "a", encoding="utf-8") as f:
                f.write(f"[microstackd {stamp}] {text}\n")
        except OSError as exc:
            log.warning("cannot write to the log of %s: %s", name, exc)

    def _ensure_log_dir(self) -> None:
        if self._log_dir.is_dir():
            return
        try:
            self._log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            os.chmod(self._log_dir, 0o750)
        except OSError as exc:
            raise errors.ServiceFailed(
                f"cannot create the log directory {self._log_dir}: {exc.strerror or exc}"
            ) from exc

    async def _spawn(self, svc: _Service) -> None:
        """Start a child for the service; on success ``svc.child`` is it."""
        spec = svc.spec
        self._ensure_log_dir()
        if not svc.orphans_checked:
            await self._reap_orphans(spec)
            svc.orphans_checked = True
        self._note(spec.name, f"starting {spec.name}: {shlex.join(spec.argv)}")
        path = self.log_path(spec.name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise errors.ServiceFailed(
                f"{spec.name}: cannot open its log {path}: {exc.strerror or exc}"
            ) from exc
        try:
            start = os.fstat(fd).st_size
            env = {**os.environ, **spec.env, SERVICE_MARKER: self._marker(spec.name)}
            try:
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=fd,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"{spec.name}: cannot run {spec.argv[0]}: {exc.strerror or exc}"
                self._note(spec.name, message)
                raise errors.ServiceFailed(message) from exc
        finally:
            os.close(fd)
        loop = asyncio.get_running_loop()
        svc.child = _Child(proc, loop.time(), start, scan_offset=start)
        try:
            # The start time tells this process from a later one with the same pid.
            self._pid_path(spec.name).write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        except OSError as exc:
            log.warning("cannot record the pid of %s: %s", spec.name, exc)

    async def _supervise(self, svc: _Service) -> None:
        try:
            await self._supervise_forever(svc)
        except Exception:  # a bug: say so rather than stop supervising silently
            log.exception("the supervisor of %s failed", svc.spec.name)
            svc.failure = svc.last_crash = (
                f"{svc.spec.name}: its supervisor failed; see the daemon log"
            )
            svc.crashes += 1

    async def _supervise_forever(self, svc: _Service) -> None:
        """Restart the service whenever it exits on its own, with back-off."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_base
        while True:
            child = svc.child
            if child is not None:
                returncode = await child.proc.wait()
                child.log_end = _size(self.log_path(svc.spec.name))
                if loop.time() - child.started >= self._backoff_reset:
                    delay = self._backoff_base
                svc.last_crash = self._exit_message(svc, child)
                svc.crashes += 1
                svc.unready_exits = 0 if self._was_ready(svc, child) else svc.unready_exits + 1
                head = _exit_head(svc.spec.name, returncode)
                log.warning("%s; restarting in %g s", head, delay)
                self._note(svc.spec.name, f"{head}; restarting in {delay:g} s")
                # Whatever it left behind in its group goes too.
                await _end_group(child.proc.pid, loop.time() + self._stop_grace)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_cap)
            try:
                await self._spawn(svc)
            except errors.ServiceFailed as exc:
                svc.child = None
                svc.failure = svc.last_crash = exc.message
                svc.crashes += 1
                svc.unready_exits += 1

    async def _halt(self, svc: _Service) -> None:
        """Stop the supervisor, then the child and its whole process group."""
        task, svc.supervisor = svc.supervisor, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        child, svc.child = svc.child, None
        if child is None:
            return
        try:
            self._pid_path(svc.spec.name).unlink(missing_ok=True)
        except OSError:
            pass
        proc = child.proc
        name = svc.spec.name
        if proc.returncode is None:
            await run_hooks(name, svc.spec.pre_stop, lambda text: self._note(name, text))
        deadline = asyncio.get_running_loop().time() + self._stop_grace
        if proc.returncode is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                async with asyncio.timeout_at(deadline):
                    await proc.wait()
            except TimeoutError:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
            self._note(svc.spec.name, f"stopped {svc.spec.name}")
        await _end_group(proc.pid, deadline)
        await run_hooks(name, svc.spec.post_stop, lambda text: self._note(name, text))

    async def _reap_orphans(self, spec: ServiceSpec) -> None:
        """Stop the children a killed daemon left running for this service,
        with its stop hooks (what they left outside their group goes too)."""
        name = spec.name
        try:
            fields = self._pid_path(name).read_text().split()
            pgid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return
        marker = f"{SERVICE_MARKER}={self._marker(name)}".encode()
        members = _group_members(pgid)
        # Its leader started when recorded (setproctitle, as gunicorn uses it,
        # overwrites a process's environment block), or a member bears our marker.
        recorded = len(fields) > 1 and fields[1] != "0" and _start_time(pgid) == fields[1]
        if pgid <= 1 or not (recorded or any(marker in _environ(pid) for pid in members)):
            return
        log.warning("stopping %s (process group %d) left running by a previous daemon", name, pgid)
        self._note(name, f"stopping {name} (process group {pgid}) left by a previous daemon")
        await run_hooks(name, spec.pre_stop, lambda text: self._note(name, text))
        _killpg(pgid, signal.SIGTERM)
        await _end_group(pgid, asyncio.get_running_loop().time() + self._stop_grace)
        await run_hooks(name, spec.post_stop, lambda text: self._note(name, text))


async def probe(check: str, timeout: float = 1.0) -> bool:
    """Whether ``check`` (see ``ServiceSpec.ready_check``) answers now."""
    scheme, _, rest = check.partition("://")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if scheme == "unix":
                _reader, writer = await asyncio.open_unix_connection(rest)
                return True
            hostport, _, path = rest.partition("/")
            host, _, port = hostport.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            if scheme == "tcp":
                return True
            writer.write(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            await writer.drain()
            parts = (await reader.readline()).split()
            return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _read_tail(path: Path, start: int, end: int | None, lines: int) -> list[str]:
    """The last lines of ``path[start:end]``."""
    if lines <= 0:
        return []
    window = max(1 << 18, lines * 1024)
    try:
        with open(path, "rb") as f:
            stop = f.seek(0, os.SEEK_END) if end is None else end
            begin = max(start, stop - window)
            f.seek(begin)
            data = f.read(max(0, stop - begin))
    except OSError:
        return []
    text = data.decode(errors="replace")
    if begin > start:  # began mid-line
        text = text.partition("\n")[2]
    return _last_lines(text, lines)


def _killpg(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if not _killpg(proc.pid, sig) and proc.returncode is None:
        # It left its process group; signal it at least.
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies are not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pgid]  # cannot tell: assume it lives
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and fields[2] == str(pgid).encode():
            members.append(int(entry))
    return members


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat), or "0"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "0"
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else "0"


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


async def _end_group(pgid: int, deadline: float) -> None:
    """Wait until a process group is gone; SIGTERM it, then SIGKILL at the
    deadline. Returns once no member is alive (or, after SIGKILL, 1 s more)."""
    loop = asyncio.get_running_loop()
    if not _group_members(pgid):
        return
    _killpg(pgid, signal.SIGTERM)
    while _group_members(pgid):
        if loop.time() >= deadline:
            _killpg(pgid, signal.SIGKILL)
            give_up = loop.time() + 1.0
            while _group_members(pgid) and loop.time() < give_up:
                await asyncio.sleep(0.02)
            return
        await asyncio.sleep(0.02)
