"""Output: live progress of event streams, status tables, JSON for scripts.

A terminal gets rich: colour, the spinner, tables fitted to its width.
Anywhere else (a pipe, a file, a script's ``subprocess``) rich would write
plain text, and this module writes that plain text itself, byte for byte:
the same columns, the same padding, the same lines. It saves importing
rich (~20 ms on every command) and laying the table out cell by cell
(~0.4 s for 1,001 nodes). Whatever rich would change on the way — a
control character, a tab, a cell that is not plain ASCII, a line wider
than ``$COLUMNS`` — still goes through rich, so the output never depends
on which path drew it (tests/unit/test_render.py compares the two).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from microstack_api.v1 import cluster_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

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

# --- where the output goes -----------------------------------------------------------------


def is_terminal(file: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether rich would treat ``file`` as a terminal (rich.console's
    ``Console.is_terminal``, for a console that is not told): TTY_COMPATIBLE
    1/0 decides, else a non-empty FORCE_COLOR says yes, else ``isatty()``."""
    file = sys.stdout if file is None else file
    environ = os.environ if environ is None else environ
    compatible = environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    force_color = environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color != ""
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


#: Width for output that is not a terminal: nothing to fit, so no row is
#: ever folded or cut (rich would otherwise assume 80 columns).
_UNBOUNDED = 10_000


def _plain_width(environ: Mapping[str, str] | None = None) -> int | None:
    """The width rich would give a non-terminal status console, or None
    when only rich can tell (a COLUMNS that is not a number)."""
    environ = os.environ if environ is None else environ
    columns = environ.get("COLUMNS")
    if columns is None:
        return _UNBOUNDED
    return int(columns) if columns.isdigit() else None


def _plain(text: str) -> bool:
    """Text that rich writes unchanged: no control characters, no tabs."""
    return text.isprintable()


def _plain_cell(text: str) -> bool:
    """A table cell as wide as it is long: printable ASCII."""
    return text.isascii() and text.isprintable()


def _status_console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=_UNBOUNDED)
    return console


# --- conversions ---------------------------------------------------------------------------


def _utc(seconds: int) -> str:
    # %-formatting of the struct's fields at once: 1.2 us, where an f-string
    # of the six fields takes 2 us and ToDatetime().isoformat() 3.4 us.
    return "%04d-%02d-%02dT%02d:%02d:%02d+00:00" % time.gmtime(seconds)[:6]  # noqa: UP031


def iso(ts: Timestamp) -> str | None:
    """ISO 8601 in UTC to the second (what ``ToDatetime(tzinfo=UTC)
    .isoformat(timespec="seconds")`` gives, at a third of its cost: a
    1,001-node status has 3,000 of them); None when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return _utc(ts.seconds)


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
        "version": n.microstackd_version,
        "api_version": n.api_version,
        "version_refused": n.version_refused,
    }


def nova_dict(v: pb.NovaHost) -> dict[str, Any]:
    return {
        "compute_service": v.compute_service,
        "hypervisor": v.hypervisor,
        "running_instances": v.running_instances,
        "drained": v.drained,
    }


def nova_text(n: pb.Node) -> str:
    """The NOVA column: compute service, hypervisor, running instances."""
    if not n.HasField("nova"):
        return "-"
    v = n.nova
    return (
        f"{v.compute_service or 'no service'}{' drained' if v.drained else ''}, "
        f"hv {v.hypervisor or 'none'}, {v.running_instances} running"
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
        "ssh_ready": r.ssh_ready,
        "ssh_banner": r.ssh_banner,
        "active_after_seconds": r.active_after_seconds,
        "ssh_after_seconds": r.ssh_after_seconds,
    }


def moved_dict(m: pb.MovedInstance) -> dict[str, Any]:
    return {"name": m.name, "id": m.id, "how": m.how, "host": m.host, "status": m.status}


def token_dict(t: pb.TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "state": t.state,
        "created": iso(t.created),
        "expires": iso(t.expires),
    }


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
            "cas": [
                {"fingerprint": a.fingerprint, "expires": iso(a.expires), "state": a.state}
                for a in c.cas
            ],
        }
    return {
        "cluster": cluster,
        "local": {
            "name": status.local_node,
            "role": ROLE_NAMES.get(status.local_role, ""),
            "bootstrap_fingerprint": status.bootstrap_fingerprint,
            "bootstrap_expires": iso(status.bootstrap_expires),
        },
        "nodes": [node_dict(n) for n in status.nodes],
        "unfinished": [
            {"operation": u.operation, "message": u.message, "command": u.command}
            for u in status.unfinished
        ],
    }


def print_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")


def to_json(data: Any) -> str:
    """``json.dumps(data, indent=2)``, the same text at twice its speed.

    With an indent, the json module encodes in Python, one generator per
    level (14 ms for a 1,001-node status here); this writes the same
    separators into one list, with the json module's own C string encoder
    (7 ms). Dicts with string keys, lists, strings, ints, booleans and None
    only: anything else, and the whole text is ``json.dumps``'s own."""
    import json.encoder  # json only for --format json

    out: list[str] = []
    try:
        _encode(data, "\n", out.append, json.encoder.encode_basestring_ascii)
    except _NotPlain:
        return json.dumps(data, indent=2)
    return "".join(out)


class _NotPlain(Exception):
    """A value ``to_json`` leaves to the json module."""


def _encode(
    value: Any, newline: str, put: Callable[[str], None], string: Callable[[str], str]
) -> None:
    kind = type(value)
    if kind is str:
        put(string(value))
    elif value is None:
        put("null")
    elif value is True:
        put("true")
    elif value is False:
        put("false")
    elif kind is int:
        put(int.__repr__(value))
    elif kind is dict:
        if not value:
            put("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            put(separator + string(key) + ": ")
            _encode(item, inner, put, string)
            separator = "," + inner
        put(newline + "}")
    elif kind is list:
        if not value:
            put("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            put(separator)
            _encode(item, inner, put, string)
            separator = "," + inner
        put(newline + "]")
    else:
        raise _NotPlain


# --- event streams -------------------------------------------------------------------------


class Progress:
    """Shows a stream of events as it arrives; remembers the last one."""

    def __init__(self, fmt: str, console: Console | None = None) -> None:
        self.fmt = fmt
        self._console = console
        #: Plain lines written here, not through rich (see the module's docstring).
        self.plain = console is None and fmt != "json" and not is_terminal()
        self.last: pb.Event | None = None
        self._status: Any = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

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
            import json

            print(json.dumps(event_dict(event)), flush=True)
            return
        state = STATE_NAMES.get(event.state, "unknown")
        mark, style = _MARKS.get(state, ("?", ""))
        rest = f" {event.step:<18} {event.message}"
        if self.plain and _plain(rest.replace("\n", " ")):
            sys.stdout.write(f"{mark}{rest}\n")
            sys.stdout.flush()
            return
        if state in ("running", "waiting") and self.console.is_terminal:
            text = f"{event.step}: {event.message}"
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
            return
        self._stop_spinner()
        # A Text, not markup: messages carry the daemon's words and service
        # log lines, which may hold brackets.
        from rich.text import Text

        self.console.print(Text.assemble((mark, style), rest), soft_wrap=True)

    def notice(self, message: str) -> None:
        """A line about the command itself (not an event), in yellow."""
        from rich.text import Text

        self.console.print(Text(message, style="yellow"))

    def run(self, events: Iterable[pb.Event]) -> pb.Event | None:
        for event in events:
            self.show(event)
        self._stop_spinner()
        return self.last


# --- tables --------------------------------------------------------------------------------


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """rich's ``Table(box=None, pad_edge=False)`` as plain text: every cell
    padded to its column's width, two spaces between columns."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells))

    return [line(header), *(line(row) for row in rows)]


def _write_plain(lines: Iterable[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def print_tokens(tokens: Iterable[pb.TokenInfo], console: Console | None = None) -> None:
    header = ("ID", "NODE", "STATE", "CREATED", "EXPIRES")
    rows = [(t.id, t.name, t.state, iso(t.created) or "-", iso(t.expires) or "-") for t in tokens]
    if not rows:
        message = "no join tokens; make one with `microstackctl add-node NAME`"
        if console is None and not is_terminal():
            _write_plain([message])
        else:
            (console or _status_console()).print(message)
        return
    width = _plain_width()
    if console is None and width is not None and not is_terminal():
        if all(_plain_cell(cell) for row in rows for cell in row):
            lines = _plain_table(header, rows)
            if len(lines[0]) <= width:
                _write_plain(lines)
                return
    from rich.table import Table

    console = console or _status_console()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


_STATE_STYLE = {
    "active": "green",
    "failed": "bold red",
    "enrolling": "cyan",
    "pending": "yellow",
    "removed": "dim",
    "unreachable": "bold yellow",
    "warning": "bold yellow",
}


def _ago(ts: Timestamp, now: float) -> str:
    if not ts.seconds:
        return "-"
    secs = int(now - (ts.seconds + ts.nanos / 1e9))
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


class _StatusView:
    """What ``status`` shows, as strings: the cluster's lines, the table's
    header and rows (and which cell gets which style), the notes."""

    def __init__(self, status: pb.StatusResponse, now: float) -> None:
        c = status.cluster
        expires = (iso(c.ca_expires) or "-")[:10]
        self.cluster = [
            ("cluster", c.id),
            (
                "control",
                f"{c.control_name} at {c.control_address} "
                f"(bootstrap port {c.bootstrap_port}, cluster port {c.cluster_port})",
            ),
            *(
                [("CA", f"expires {expires}, fingerprint {c.ca_fingerprint[:16]}…")]
                if len(c.cas) < 2
                else [
                    (
                        "CA",
                        f"{a.state} {a.fingerprint[:16]}…, expires {(iso(a.expires) or '-')[:10]}",
                    )
                    for a in c.cas
                ]
            ),
            # In full: a joiner told it may be intercepted compares it with what it was shown.
            (
                "bootstrap",
                f"certificate {status.bootstrap_fingerprint} ({status.local_node}, expires "
                f"{(iso(status.bootstrap_expires) or '-')[:10]})",
            ),
            *(
                (u.operation, f"UNFINISHED, finish it with `{u.command}`: {u.message}")
                for u in status.unfinished
            ),
        ]
        #: The cluster lines' labels, padded to the longest and two spaces.
        self.label_width = max(len(label) for label, _ in self.cluster) + 2
        self.nova = any(n.HasField("nova") for n in status.nodes)
        columns = [
            "NAME",
            "ROLE",
            "ADDRESS",
            "STATE",
            "SERVICES",
            "VERSION",
            "LAST SEEN",
            "CERT EXPIRES",
        ]
        self.header = [*columns, "NOVA"] if self.nova else columns
        self.rows: list[list[str]] = []
        #: Per row: bold name, services short of running, the state's style.
        self.styles: list[tuple[bool, bool, str]] = []
        self.notes: list[tuple[str, str]] = []
        #: What services run with (nova-compute's driver and virt_type).
        self.details: list[tuple[str, str]] = []
        for n in status.nodes:
            up = sum(1 for s in n.services if s.state == "running")
            row = [
                n.name,
                ROLE_NAMES.get(n.role, ""),
                n.address,
                n.state,
                f"{up}/{len(n.services)}" if n.services else "-",
                n.microstackd_version or "-",
                _ago(n.last_seen, now),
                (iso(n.cert_expires) or "-")[:10],
            ]
            if self.nova:
                row.append(nova_text(n) if n.role == pb.ROLE_COMPUTE else "")
            self.rows.append(row)
            self.styles.append(
                (
                    n.name == status.local_node,
                    up < len(n.services),
                    _STATE_STYLE.get(n.state, ""),
                )
            )
            if n.state in ("failed", "warning") and n.message:
                self.notes.append((n.name, _first_line(n.message)))
            if n.version_refused:
                self.notes.append((n.name, _first_line(n.version_refused)))
            for s in n.services:
                if s.detail:
                    self.details.append((f"{n.name} {s.name}", s.detail))
                if s.state in ("failed", "stopped") and s.message:
                    self.notes.append((f"{n.name} {s.name}", _first_line(s.message)))

    def plain_lines(self, width: int) -> list[str] | None:
        """The whole output as rich writes it to a non-terminal of ``width``
        columns, or None if rich would have to fold, wrap or clean it."""
        if not all(_plain_cell(cell) for row in self.rows for cell in row):
            return None
        w = self.label_width
        head = [f"{label:<{w}}{value}" for label, value in self.cluster]
        details = [f"{who}: {what}" for who, what in self.details]
        notes = [f"{who}: {why}" for who, why in self.notes]
        # Two columns per character is the most any character takes.
        if not all(_plain(line) and 2 * len(line) <= width for line in head + details + notes):
            return None
        table = _plain_table(self.header, self.rows)
        if len(table[0]) > width:
            return None
        return [
            *head,
            "",
            *table,
            *([""] + details if details else []),
            *([""] + notes if notes else []),
        ]


def print_status(status: pb.StatusResponse, console: Console | None = None) -> None:
    """The cluster, then one row per node; why a node or service failed below.

    Every value goes in a ``Text``, never through markup: node messages carry
    service log lines, which may hold brackets. rich drops the styles where
    the output is not a terminal (and where NO_COLOR is set).
    """
    plain = console is None and not is_terminal()
    if not status.HasField("cluster"):
        line = (
            f"{status.local_node}: not part of a cluster. Run `microstackctl init` to create "
            "one or `microstackctl join CONTROL` to join one."
        )
        width = _plain_width()
        if plain and width is not None and _plain(line) and 2 * len(line) <= width:
            _write_plain([line])
            return
        from rich.text import Text

        (console or _status_console()).print(Text(line))
        return
    view = _StatusView(status, time.time())
    width = _plain_width()
    if plain and width is not None:
        lines = view.plain_lines(width)
        if lines is not None:
            _write_plain(lines)
            return
    _print_status_rich(view, status.local_node, console or _status_console())


def _print_status_rich(view: _StatusView, local: str, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    w = view.label_width
    for label, value in view.cluster:
        console.print(Text.assemble((f"{label:<{w}}", "bold"), value))
    console.print()
    table = Table(box=None, pad_edge=False, header_style="bold")
    # On a narrow terminal only NAME folds; every other column stays whole.
    table.add_column(view.header[0], overflow="fold")
    for column in view.header[1:]:
        table.add_column(column, no_wrap=True)
    for row, (bold, short, state_style) in zip(view.rows, view.styles, strict=True):
        services = Text(row[4])
        if short:
            services.stylize("yellow")
        cells = [
            Text(row[0], style="bold" if bold else ""),
            Text(row[1]),
            Text(row[2]),
            Text(row[3], style=state_style),
            services,
            *(Text(cell) for cell in row[5:]),
        ]
        table.add_row(*cells)
    console.print(table)
    if view.details:
        console.print()
        for who, what in view.details:
            console.print(Text.assemble((who, "bold"), ": ", what))
    if view.notes:
        console.print()
        for who, why in view.notes:
            console.print(Text.assemble((who, "bold"), ": ", why))
