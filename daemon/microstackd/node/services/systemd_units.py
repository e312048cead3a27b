"""The systemd backend's own units: microstackd's role services as real units.

A role service whose unit is named ``microstackd-NAME.service`` (the default,
``spec.OWNED_UNIT_PREFIX``) is microstackd's own: nothing else installs it,
so before every (re)start the ``systemd`` ServiceManager writes its unit file
from the ``ServiceSpec`` — ExecStart the spec's argv, Environment its env,
``Restart=on-failure``, in ``microstackd.slice`` — into ``/run/systemd/system``
and runs ``systemctl daemon-reload`` when the file changed. Any other unit
name (a distribution's ``nova-compute.service``) is driven as it is.

Why runtime unit files (``/run``), not ``systemd-run`` and not ``/etc``:

* a file is what ``systemctl cat`` shows and what a drop-in in
  ``/etc/systemd/system/UNIT.d/`` can amend; a transient unit is neither, and
  is gone the moment it stops;
* ``/run`` is emptied at boot, so a node never runs units of a role it no
  longer has (a removed node, an older microstackd): at start-up the daemon
  writes and starts the units of the role it applied (``Agent.resume``).
  Units are never enabled and never ordered after ``microstackd.service``: a
  daemon restart leaves them running.

Readiness is the spec's, checked by the daemon: ``Type=exec`` (the start job
fails at once when the command cannot be run), then ``ready_after`` seconds
up, a line of this run's journal matching ``ready_pattern`` (journald tags
each line with the unit's invocation id), and ``ready_check`` answering.

Unit files are 0644, like every unit file, and ``systemctl show`` tells any
local user a unit's environment: a role service's command line and
environment carry no secret (node/roles/; tests/unit/test_systemd_units.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.node.services.procfs import probe
from microstackd.node.services.spec import (
    OWNED_UNIT_PREFIX,
    RUNNING,
    TAIL_LINES,
    ServiceSpec,
    check,
    run_short,
    timeout_head,
    with_tail,
)
from microstackd.store.files import write_private_file

if TYPE_CHECKING:
    from microstackd.node.services.systemd import SystemdManager

#: Where the units are written: runtime units, gone at boot.
UNIT_DIR = Path("/run/systemd/system")
#: Every role service unit runs in this slice: `systemctl status microstackd.slice`.
SLICE = "microstackd.slice"
#: systemd restarts a crashed service after this long ...
RESTART_SEC = 2
#: ... unless it started this often within this interval: then it stays
#: failed and the node's agent takes over (node/watch.py), with back-off.
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_SEC = 60
TIMEOUT_STOP_SEC = 30

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOW_PROPERTIES = (
    "ActiveState",
    "SubState",
    "InvocationID",
    "ExecMainStartTimestampMonotonic",
    "NRestarts",
)


def owned(spec: ServiceSpec) -> bool:
    """Whether microstackd writes this service's unit (else it drives an existing one)."""
    return spec.unit.startswith(OWNED_UNIT_PREFIX) and spec.unit.endswith(".service")


# -- rendering ----------------------------------------------------------------


def _escape(text: str) -> str:
    """``text`` as one double-quoted word of a unit file: C escapes, and
    ``%`` (specifiers) doubled."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def exec_line(argv: tuple[str, ...]) -> str:
    """An ``ExecStart=`` value that systemd splits back into exactly ``argv``
    (``$`` would expand a variable there: doubled)."""
    if not argv:
        raise errors.ServiceFailed("a role service needs a command line")
    if not argv[0].startswith("/"):
        raise errors.ServiceFailed(f"{argv[0]!r}: a role service's command must be absolute")
    return " ".join(_escape(arg).replace("$", "$$") for arg in argv)


def environment_lines(env: Mapping[str, str]) -> list[str]:
    lines = []
    for key in sorted(env):
        if not _ENV_NAME.fullmatch(key):
            raise errors.ServiceFailed(f"environment variable name {key!r} is not valid")
        lines.append(f"Environment={_escape(f'{key}={env[key]}')}")
    return lines


def render(spec: ServiceSpec) -> str:
    """The unit file of a role service."""
    return "\n".join(
        [
            f"# Written by microstackd for its role service {spec.name}",
            "# (microstackd/node/services/systemd_units.py): rewritten whenever microstackd starts",
            "# the service, removed when it stops it. Amend it with a drop-in,",
            f"# /etc/systemd/system/{spec.unit}.d/*.conf, not here.",
            "[Unit]",
            f"Description=MicroStack role service {spec.name} (run by microstackd)",
            f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}",
            f"StartLimitBurst={START_LIMIT_BURST}",
            "",
            "[Service]",
            "Type=exec",
            f"Slice={SLICE}",
            f"ExecStart={exec_line(spec.argv)}",
            *environment_lines(spec.env),
            "Restart=on-failure",
            f"RestartSec={RESTART_SEC}s",
            f"TimeoutStopSec={TIMEOUT_STOP_SEC}s",
            f"SyslogIdentifier={spec.name}",
            "",
        ]
    )


# -- the unit's life ----------------------------------------------------------


class OwnedUnits:
    """Install, start, wait for and remove the units microstackd writes."""

    def __init__(self, manager: SystemdManager, unit_dir: Path = UNIT_DIR) -> None:
        self._manager = manager
        self.unit_dir = unit_dir

    def path(self, spec: ServiceSpec) -> Path:
        return self.unit_dir / spec.unit

    def install(self, spec: ServiceSpec) -> bool:
        """Write the unit file; whether it changed (systemd must reload)."""
        text = render(spec)
        path = self.path(spec)
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass  # absent or unreadable: written below, or the write says why not
        try:
            write_private_file(path, text.encode(), mode=0o644, dir_mode=0o755)
        except errors.StorageError as exc:
            raise errors.ServiceFailed(
                f"{spec.name}: {exc.message} (the microstackd unit must be able to write "
                f"{self.unit_dir}: ReadWritePaths=)"
            ) from exc
        return True

    async def restart(self, spec: ServiceSpec) -> None:
        if self.install(spec):
            check(await run_short("systemctl", "daemon-reload"))
        # A unit that hit its start limit refuses even a deliberate start.
        # (Only then: systemctl reset-failed fails on a unit that is not
        # failed, and sends its service manager a notification on the way.)
        if (await self._show(spec)).get("ActiveState") == "failed":
            check(await run_short("systemctl", "reset-failed", spec.unit))
        check(await run_short("systemctl", "restart", spec.unit))

    async def stop(self, spec: ServiceSpec) -> None:
        """Stop the service and remove its unit: this node no longer runs it."""
        check(await run_short("systemctl", "stop", spec.unit))
        try:
            self.path(spec).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise errors.ServiceFailed(
                f"cannot remove {self.path(spec)}: {exc.strerror or exc}"
            ) from exc
        check(await run_short("systemctl", "daemon-reload"))

    async def _show(self, spec: ServiceSpec) -> dict[str, str]:
        result = check(
            await run_short(
                "systemctl", "show", spec.unit, "--property=" + ",".join(_SHOW_PROPERTIES)
            )
        )
        props = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        return props

    async def _journal_matches(self, invocation: str, pattern: str) -> bool:
        """Whether a line this run of the unit logged matches ``pattern``."""
        result = await run_short(
            "journalctl", "-q", f"_SYSTEMD_INVOCATION_ID={invocation}", "--no-pager", "-o", "cat"
        )
        if result.returncode != 0:
            return False
        regex = re.compile(pattern)
        return any(regex.search(line) for line in result.stdout.splitlines())

    async def _not_ready(self, spec: ServiceSpec, props: Mapping[str, str]) -> str:
        """Why an active unit is not ready yet ("" once it is)."""
        started = int(props.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
        if started and time.monotonic() - started < spec.ready_after:
            return f"it must stay up {spec.ready_after:g} s"
        invocation = props.get("InvocationID", "")
        if spec.ready_pattern and not (
            invocation and await self._journal_matches(invocation, spec.ready_pattern)
        ):
            return f"no line matching {spec.ready_pattern!r} in its log"
        if spec.ready_check and not await probe(spec.ready_check):
            return f"{spec.ready_check} did not answer"
        return ""

    async def wait_ready(self, spec: ServiceSpec, poll_interval: float) -> ServiceRecord:
        """Running once active and ready as the spec says; a run that ends (or
        that systemd restarts) before that fails with its exit status and log."""
        reason = "its state could not be read in time"
        restarts: str | None = None
        deadline = asyncio.timeout(spec.start_timeout)
        try:
            async with deadline:
                while True:
                    props = await self._show(spec)
                    state, sub = props.get("ActiveState", ""), props.get("SubState", "")
                    restarts = props.get("NRestarts", "") if restarts is None else restarts
                    crashed = sub == "auto-restart" or props.get("NRestarts", "") != restarts
                    if state in ("failed", "inactive") or crashed:
                        message = await self._manager._failure(spec, "failed")
                        raise errors.ServiceFailed(message)
                    if state == "active":
                        reason = await self._not_ready(spec, props)
                        if not reason:
                            return ServiceRecord(spec.name, RUNNING)
                    else:
                        reason = f"it is {state}"
                    await asyncio.sleep(poll_interval)
        except TimeoutError:
            if not deadline.expired():
                raise
            lines, note = await self._manager._tail(spec, TAIL_LINES)
            raise errors.ServiceFailed(with_tail(timeout_head(spec, reason), lines, note)) from None
