"""The backends that ask an init system for a service's state
(``PollingManager``), and systemd's: units driven with ``systemctl``, logs
read from the journal; the units of microstackd's own role services it
writes first (``systemd_units.py``). The MicroStack snap's is in ``snap.py``."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.node.services import systemd_units
from microstackd.node.services.spec import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    TAIL_LINES,
    ServiceSpec,
    check,
    clip,
    exit_head,
    last_lines,
    run_hooks,
    run_short,
    timeout_head,
    with_tail,
)

log = logging.getLogger(__name__)


async def journal(unit: str, lines: int) -> tuple[list[str], str]:
    """The last lines of a unit's journal, or none and why."""
    if shutil.which("journalctl") is None:
        return [], "no log is available (journalctl is not installed)"
    result = await run_short("journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat")
    if result.returncode != 0:
        why = result.stderr.strip() or f"status {result.returncode}"
        return [], f"no log is available (journalctl failed: {clip(why)})"
    return last_lines(result.stdout, lines), "its log is empty"


def log_note(text: str) -> None:
    """What a stop hook did: systemd and snapd keep the service's log; this
    goes to the daemon's."""
    log.info("%s", text)


class PollingManager:
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

    async def status(self, spec: ServiceSpec) -> ServiceRecord:
        raw = await self._raw_state(spec)
        state = self._state(raw)
        if state == FAILED:
            return ServiceRecord(spec.name, FAILED, await self._failure(spec, raw))
        return ServiceRecord(spec.name, state)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
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
            raise errors.ServiceFailed(with_tail(timeout_head(spec, reason), lines, note)) from None
        if raw in self._active:
            return ServiceRecord(spec.name, RUNNING)
        raise errors.ServiceFailed(await self._failure(spec, raw))

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str:
        tail, note = await self._tail(spec, lines)
        return "\n".join(tail) if tail else note

    async def close(self) -> None:
        """Nothing to do: the init system keeps running the services."""


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


class SystemdManager(PollingManager):
    """Services are systemd units, driven with ``systemctl``; microstackd's
    own (``microstackd-*``) are written first (``systemd_units.py``)."""

    kind = "systemd"
    _active = frozenset({"active"})
    # After `systemctl restart` returns, "inactive" means the service already
    # exited (cleanly) — waiting longer cannot make it active.
    _dead = frozenset({"failed", "inactive"})

    def __init__(self, *, poll_interval: float = 0.5, unit_dir: Path | None = None) -> None:
        super().__init__(poll_interval=poll_interval)
        self.owned = systemd_units.OwnedUnits(self, unit_dir or systemd_units.UNIT_DIR)

    async def restart(self, spec: ServiceSpec) -> None:
        if systemd_units.owned(spec):
            await self.owned.restart(spec)
            return
        check(await run_short("systemctl", "restart", spec.unit))

    async def stop(self, spec: ServiceSpec) -> None:
        await run_hooks(spec.name, spec.pre_stop, log_note)
        if systemd_units.owned(spec):
            await self.owned.stop(spec)
        else:
            check(await run_short("systemctl", "stop", spec.unit))
        await run_hooks(spec.name, spec.post_stop, log_note)
        await run_hooks(spec.name, spec.teardown, log_note)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
        if systemd_units.owned(spec):
            return await self.owned.wait_ready(spec, self._poll_interval)
        return await super().wait_ready(spec)

    async def _raw_state(self, spec: ServiceSpec) -> str:
        # is-active exits non-zero for every state but active: read stdout.
        result = await run_short("systemctl", "is-active", spec.unit)
        raw = result.stdout.strip().splitlines()
        if not raw:
            check(result)
            raise errors.ServiceFailed(f"systemctl is-active {spec.unit} printed no state")
        return raw[0]

    def _state(self, raw: str) -> str:
        return _SYSTEMD_STATES.get(raw, STOPPED)

    async def _failure(self, spec: ServiceSpec, raw: str) -> str:
        head = f"{spec.name} is {raw}"
        show = await run_short(
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
                head = exit_head(spec.name, int(status))
            elif code in ("2", "3") and status.isdigit():  # CLD_KILLED, CLD_DUMPED
                head = exit_head(spec.name, -int(status))
            if result not in ("", "success", "exit-code", "signal", "core-dump"):
                head += f" ({result})"
        lines, note = await self._tail(spec, TAIL_LINES)
        return with_tail(head, lines, note)

    async def _tail(self, spec: ServiceSpec, lines: int) -> tuple[list[str], str]:
        return await journal(spec.unit, lines)
