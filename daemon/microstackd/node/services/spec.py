"""What every service manager shares: the service spec, the manager
protocol, the states, and the messages an operator reads when a service
fails (its name, its exit status when known, its last log lines)."""

from __future__ import annotations

import os
import re
import shlex
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from microstackd import commands, errors
from microstackd.model import ServiceRecord

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

#: Units named so are microstackd's own: the systemd backend writes them
#: (``systemd_units.py``). Any other unit name is driven as it is.
OWNED_UNIT_PREFIX = "microstackd-"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}")

#: Service and setup logs: the daemon's, readable by the microstack group.
LOG_MODE = 0o640


def open_log(path: Path) -> int:
    """An append-only descriptor on ``path``, which is exactly ``LOG_MODE``
    from its creation on, whatever the umask (created at most 0640, then set
    to 0640: a umask of 077 would otherwise hide it from the group, one of
    000 or 022 would show it to everyone). Raises ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    try:
        os.fchmod(fd, LOG_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a node's role, as every backend needs it."""

    name: str
    #: Command line for the process manager (already rendered, absolute paths).
    argv: tuple[str, ...]
    #: systemd unit; defaults to ``microstackd-NAME.service``, a unit of
    #: microstackd's own; name an existing unit (``nova-compute.service``) to drive that.
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
    #: fail; what it did goes to the service's log. Absolute paths.
    pre_stop: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    #: Commands run after ``post_stop`` when the service is stopped for good
    #: (``stop``; the process manager's shutdown; a killed daemon's leftover
    #: stopped), never when it is restarted: what must outlive a restart
    #: goes only then (the Neutron agents' namespaces, with their routers).
    teardown: tuple[tuple[str, ...], ...] = ()

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
        object.__setattr__(self, "teardown", tuple(tuple(c) for c in self.teardown))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not self.unit:
            object.__setattr__(self, "unit", f"{OWNED_UNIT_PREFIX}{self.name}.service")
        if not self.snap_service:
            object.__setattr__(self, "snap_service", f"microstack.{self.name}")


class ServiceManager(Protocol):
    kind: str  # "systemd" | "snap" | "process"

    async def restart(self, spec: ServiceSpec) -> None:
        """(Re)start the service."""
        ...

    async def status(self, spec: ServiceSpec) -> ServiceRecord: ...

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
        """Return the running status, or raise ``errors.ServiceFailed`` naming
        the service, its exit status when known and its last log lines."""
        ...

    async def stop(self, spec: ServiceSpec) -> None: ...

    async def close(self) -> None:
        """Daemon shutdown: the process manager stops all its children."""
        ...

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str: ...


# -- messages -----------------------------------------------------------------


def clip(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= TAIL_LINE_CHARS else line[: TAIL_LINE_CHARS - 1] + "…"


def last_lines(text: str, lines: int) -> list[str]:
    if lines <= 0:
        return []
    out = [clip(line) for line in text.splitlines()]
    while out and not out[-1]:
        out.pop()
    return out[-lines:]


def with_tail(head: str, lines: Sequence[str], note: str = "its log is empty") -> str:
    if not lines:
        return f"{head}; {note}"
    return f"{head}; last log lines:\n" + "\n".join(lines)


def exit_head(name: str, returncode: int) -> str:
    if returncode >= 0:
        return f"{name} exited with status {returncode}"
    try:
        signame = signal.Signals(-returncode).name
    except ValueError:
        signame = f"signal {-returncode}"
    return f"{name} was killed by {signame}"


def timeout_head(spec: ServiceSpec, reason: str) -> str:
    return f"{spec.name} did not become ready within {spec.start_timeout:g} s ({reason})"


# -- running commands ---------------------------------------------------------


async def run_short(*argv: str) -> commands.Completed:
    """Run a short command to completion and capture its output."""
    try:
        done = await commands.run(argv, timeout=COMMAND_TIMEOUT)
    except OSError as exc:
        raise errors.ServiceFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    except TimeoutError:
        raise errors.ServiceFailed(
            f"{shlex.join(argv)} did not finish within {COMMAND_TIMEOUT:g} s"
        ) from None
    return done


#: How long one stop hook may take.
HOOK_TIMEOUT = 60.0


async def run_hooks(
    name: str, hooks: Sequence[tuple[str, ...]], note: Callable[[str], None]
) -> None:
    """Run a service's stop hooks one by one; ``note`` what each did, on one
    line. A hook that fails is noted, never raised: stopping must go on."""
    for argv in hooks:
        try:
            done = await commands.run(argv, timeout=HOOK_TIMEOUT)
        except OSError as exc:
            note(f"{name}: cannot run {argv[0]}: {exc.strerror or exc}")
            continue
        except TimeoutError:
            note(f"{name}: {shlex.join(argv)} did not finish within {HOOK_TIMEOUT:g} s")
            continue
        output = "; ".join(line for line in (done.stdout + done.stderr).splitlines() if line)
        status = "done" if done.returncode == 0 else f"failed with status {done.returncode}"
        note(f"{name}: {shlex.join(argv)} {status}" + (f": {clip(output)}" if output else ""))


def check(done: commands.Completed) -> commands.Completed:
    """``done``, or ``errors.ServiceFailed`` naming the command when it failed."""
    failure = done.failure()
    if failure is not None:
        raise errors.ServiceFailed(failure)
    return done


def read_tail(path: Path, start: int, end: int | None, lines: int) -> list[str]:
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
    return last_lines(text, lines)
