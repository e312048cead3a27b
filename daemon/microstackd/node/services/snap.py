"""The ``snap`` backend: services of the MicroStack snap, driven with ``snapctl``."""

from __future__ import annotations

from microstackd import errors
from microstackd.node.services.spec import (
    RUNNING,
    STOPPED,
    TAIL_LINES,
    ServiceSpec,
    check,
    run_hooks,
    run_short,
    with_tail,
)
from microstackd.node.services.systemd import PollingManager, journal, log_note


class SnapManager(PollingManager):
    """Services of the MicroStack snap, driven with ``snapctl``."""

    kind = "snap"
    _active = frozenset({"active"})
    # snapd reports no "failed": a service that died after restart is inactive.
    _dead = frozenset({"inactive"})

    async def restart(self, spec: ServiceSpec) -> None:
        check(await run_short("snapctl", "restart", spec.snap_service))

    async def stop(self, spec: ServiceSpec) -> None:
        await run_hooks(spec.name, spec.pre_stop, log_note)
        check(await run_short("snapctl", "stop", spec.snap_service))
        await run_hooks(spec.name, spec.post_stop, log_note)
        await run_hooks(spec.name, spec.teardown, log_note)

    async def _raw_state(self, spec: ServiceSpec) -> str:
        result = check(await run_short("snapctl", "services", spec.snap_service))
        return _parse_snap_services(result.stdout, spec.snap_service)

    def _state(self, raw: str) -> str:
        return RUNNING if raw == "active" else STOPPED

    async def _failure(self, spec: ServiceSpec, raw: str) -> str:
        lines, note = await self._tail(spec, TAIL_LINES)
        return with_tail(f"{spec.name} is not running (snapctl reports it {raw})", lines, note)

    async def _tail(self, spec: ServiceSpec, lines: int) -> tuple[list[str], str]:
        return await journal(f"snap.{spec.snap_service}.service", lines)


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
