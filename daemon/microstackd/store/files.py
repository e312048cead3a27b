"""Files under the state dir: where this node's keys and certificates live,
and the atomic, private writes every key file, control.yaml and rendered
configuration goes through (store rule 2)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from microstackd import errors

CA_KEY = "tls/ca.key"  # the control only
CA_CERT = "tls/ca.crt"
NODE_KEY = "tls/node.key"
NODE_CERT = "tls/node.crt"
BOOTSTRAP_KEY = "tls/bootstrap.key"
BOOTSTRAP_CERT = "tls/bootstrap.crt"
#: The control's password verifier (``trust.kdf.encode_verifier``).
VERIFIER = "verifier.json"


def write_private_file(path: Path, data: bytes, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Atomically replace ``path`` with ``data`` (temp file, fsync, rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise storage_error(path, exc) from exc


def storage_error(path: Path, exc: BaseException) -> errors.StorageError:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return errors.StorageError(f"cannot write {path}: the disk is full; nothing was changed")
    return errors.StorageError(f"cannot write {path}: {exc}")
