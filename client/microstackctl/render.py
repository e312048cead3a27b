"""Output: live progress of event streams, status tables, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table
from rich.text import Text

from microstack_api.v1 import cluster_pb2 as pb

STATE_NAMES = {
    pb.STEP_STATE_PENDING: "pending",
    pb.STEP_STATE_RUNNING: "running",
    pb.STEP_STATE_DONE: "done",
    pb.STEP_STATE_FAILED: "failed",
    pb.STEP_STATE_SKIPPED: "skipped",
    pb.STEP_STATE_WAITING: "waiting",
}
ROLE_NAMES = {pb.ROLE_UNSPECIFIED: "", pb.ROLE_CONTROL: "control", pb.ROLE_COMPUTE: "compute"}
_MARKS = {
    "running": ("…", "cyan"),
    "waiting": ("⏳", "yellow"),
    "done": ("✓", "green"),
    "skipped": ("–", "dim"),
    "failed": ("✗", "bold red"),
    "pending": (" ", ""),
}


def iso(ts: Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def event_dict(event: pb.Event) -> dict[str, Any]:
    return {
        "node": event.node,
        "seq": event.seq,
        "step": event.step,
        "state": STATE_NAMES.get(event.state, "unknown"),
        "message": event.message,
        "percent": event.percent,
        "time": iso(event.time),
        "final": event.final,
    }


class Progress:
    """Shows a stream of events as it arrives; remembers the last one."""

    def __init__(self, fmt: str, console: Console | None = None) -> None:
        self.fmt = fmt
        self.console = console or Console(highlight=False)
        self.last: pb.Event | None = None
        self._status: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_spinner()

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def show(self, event: pb.Event) -> None:
        self.last = event
        if self.fmt == "json":
            print(json.dumps(event_dict(event)), flush=True)
            return
        state = STATE_NAMES.get(event.state, "unknown")
        mark, style = _MARKS.get(state, ("?", ""))
        line = (
            f"[{style}]{mark}[/] {event.step:<18} {event.message}"
            if style
            else (f"{mark} {event.step:<18} {event.message}")
        )
        if state in ("running", "waiting") and self.console.is_terminal:
            text = f"{event.step}: {event.message}"
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
            return
        self._stop_spinner()
        self.console.print(line, markup=True, soft_wrap=True)

    def run(self, events: Iterable[pb.Event]) -> pb.Event | None:
        for event in events:
            self.show(event)
        self._stop_spinner()
        return self.last


def node_dict(n: pb.Node) -> dict[str, Any]:
    return {
        "name": n.name,
        "role": ROLE_NAMES.get(n.role, ""),
        "address": n.address,
        "state": n.state,
        "message": n.message,
        "cert_serial": n.cert_serial,
        "cert_expires": iso(n.cert_expires),
        "joined": iso(n.joined),
        "last_seen": iso(n.last_seen),
        "services": [
            {"name": s.name, "state": s.state, "message": s.message, "detail": s.detail}
            for s in n.services
        ],
        "nova": nova_dict(n.nova) if n.HasField("nova") else None,
    }


def nova_dict(v: pb.NovaHost) -> dict[str, Any]:
    return {
        "compute_service": v.compute_service,
        "hypervisor": v.hypervisor,
        "running_instances": v.running_instances,
    }


def nova_text(n: pb.Node) -> str:
    """The NOVA column: compute service, hypervisor, running instances."""
    if not n.HasField("nova"):
        return "-"
    v = n.nova
    return (
        f"{v.compute_service or 'no service'}, hv {v.hypervisor or 'none'}, "
        f"{v.running_instances} running"
    )


def launch_dict(r: pb.LaunchResult, ssh: str) -> dict[str, Any]:
    return {
        "name": r.name,
        "id": r.id,
        "host": r.host,
        "status": r.status,
        "addresses": {a.network: list(a.addresses) for a in r.addresses},
        "floating_ip": r.floating_ip,
        "ssh": ssh,
    }


def token_dict(t: pb.TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "state": t.state,
        "created": iso(t.created),
        "expires": iso(t.expires),
    }


def print_tokens(tokens: Iterable[pb.TokenInfo], console: Console | None = None) -> None:
    console = console or _status_console()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NODE", "STATE", "CREATED", "EXPIRES"):
        table.add_column(column)
    rows = 0
    for t in tokens:
        table.add_row(t.id, t.name, t.state, iso(t.created) or "-", iso(t.expires) or "-")
        rows += 1
    if rows:
        console.print(table)
    else:
        console.print("no join tokens; make one with `microstackctl add-node NAME`")


def status_dict(status: pb.StatusResponse) -> dict[str, Any]:
    cluster: dict[str, Any] = {}
    if status.HasField("cluster"):
        c = status.cluster
        cluster = {
            "id": c.id,
            "control_name": c.control_name,
            "control_address": c.control_address,
            "bootstrap_port": c.bootstrap_port,
            "cluster_port": c.cluster_port,
            "ca_fingerprint": c.ca_fingerprint,
            "ca_expires": iso(c.ca_expires),
        }
    return {
        "cluster": cluster,
        "local": {"name": status.local_node, "role": ROLE_NAMES.get(status.local_role, "")},
        "nodes": [node_dict(n) for n in status.nodes],
    }


_STATE_STYLE = {
    "active": "green",
    "failed": "bold red",
    "enrolling": "cyan",
    "pending": "yellow",
    "removed": "dim",
    "unreachable": "bold yellow",
}


def _ago(ts: Timestamp) -> str:
    if not ts.seconds:
        return "-"
    delta = datetime.now(UTC) - ts.ToDatetime(tzinfo=UTC)
    secs = int(delta.total_seconds())
    if secs < 60:
        return f"{max(secs, 0)}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return ""
    return lines[0] + (" …" if len(lines) > 1 else "")


#: Width for output that is not a terminal: nothing to fit, so no row is
#: ever folded or cut (rich would otherwise assume 80 columns).
_UNBOUNDED = 10_000


def _status_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=_UNBOUNDED)
    return console


def print_status(status: pb.StatusResponse, console: Console | None = None) -> None:
    """The cluster, then one row per node; why a node or service failed below.

    Every value goes in a ``Text``, never through markup: node messages carry
    service log lines, which may hold brackets. rich drops the styles where
    the output is not a terminal (and where NO_COLOR is set).
    """
    console = console or _status_console()
    if not status.HasField("cluster"):
        console.print(
            Text(
                f"{status.local_node}: not part of a cluster. Run `microstackctl init` to create "
                "one or `microstackctl join CONTROL` to join one."
            )
        )
        return
    c = status.cluster
    expires = (iso(c.ca_expires) or "-")[:10]
    for label, value in (
        ("cluster", c.id),
        (
            "control",
            f"{c.control_name} at {c.control_address} "
            f"(bootstrap port {c.bootstrap_port}, cluster port {c.cluster_port})",
        ),
        ("CA", f"expires {expires}, fingerprint {c.ca_fingerprint[:16]}…"),
    ):
        console.print(Text.assemble((f"{label:<9}", "bold"), value))
    console.print()

    table = Table(box=None, pad_edge=False, header_style="bold")
    # On a narrow terminal only NAME folds; every other column stays whole.
    table.add_column("NAME", overflow="fold")
    nova = any(n.HasField("nova") for n in status.nodes)
    columns = ["ROLE", "ADDRESS", "STATE", "SERVICES", "LAST SEEN", "CERT EXPIRES"]
    for column in [*columns, "NOVA"] if nova else columns:
        table.add_column(column, no_wrap=True)
    notes: list[Text] = []
    details: list[Text] = []
    for n in status.nodes:
        up = sum(1 for s in n.services if s.state == "running")
        services = Text(f"{up}/{len(n.services)}" if n.services else "-")
        if up < len(n.services):
            services.stylize("yellow")
        cells = [
            Text(n.name, style="bold" if n.name == status.local_node else ""),
            Text(ROLE_NAMES.get(n.role, "")),
            Text(n.address),
            Text(n.state, style=_STATE_STYLE.get(n.state, "")),
            services,
            Text(_ago(n.last_seen)),
            Text((iso(n.cert_expires) or "-")[:10]),
        ]
        if nova:
            cells.append(Text(nova_text(n) if n.role == pb.ROLE_COMPUTE else ""))
        table.add_row(*cells)
        if n.state == "failed" and n.message:
            notes.append(Text.assemble((n.name, "bold"), ": ", _first_line(n.message)))
        for s in n.services:
            if s.detail:
                details.append(Text.assemble((f"{n.name} {s.name}", "bold"), ": ", s.detail))
            if s.state == "failed" and s.message:
                notes.append(
                    Text.assemble((f"{n.name} {s.name}", "bold"), ": ", _first_line(s.message))
                )
    console.print(table)
    if details:
        console.print()
        for detail in details:
            console.print(detail)
    if notes:
        console.print()
        for note in notes:
            console.print(note)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
