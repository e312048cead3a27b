"""`microstackctl restore FILE`: bring a lost control back from its backup,
on a fresh machine with the control's address. The archive is sent to the
local daemon, which checks it whole before it writes anything, then
streams the restore's steps like init."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import streams
from microstackctl.api import connect
from microstackctl.errors import CommandError

CHUNK = 1 << 20


def _pieces(path: Path) -> Iterator[pb.RestoreRequest]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.RestoreRequest(chunk=chunk)
    yield pb.RestoreRequest(done=True)


def restore(socket: str | None, file: str, fmt: str) -> None:
    path = Path(file)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    events = connect(socket).restore(_pieces(path))
    streams.follow(lambda: connect(socket), fmt, events, "", "restore", 600)
