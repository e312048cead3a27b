"""One daemon per state directory: an exclusive ``flock`` on
``STATE_DIR/microstackd.lock``, held for the daemon's whole life, with the
holder's PID in the file for the message a second daemon prints.

Taken before anything else touches the state directory, its socket or its
ports: a second daemon started on the same directory must change nothing
(not the first one's socket, its ports or its services). The kernel drops
the lock when the holder exits, however it exits, so there is no stale lock
to clean up; the descriptor is close-on-exec, so the services the daemon
starts never hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from microstackd import errors

LOCK = "microstackd.lock"


class StateLock:
    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock ``state_dir`` for this process, or ``errors.AlreadyRunning``."""
        path = state_dir / LOCK
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise errors.StorageError(f"cannot open the lock file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise errors.AlreadyRunning(
                f"another microstackd (pid {holder}) is using the state directory {state_dir} "
                f"(it holds {path}); stop it first, or give this one its own --state-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise errors.StorageError(f"cannot lock {path}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        """Unlock (the file stays: removing it would race with a daemon
        waiting to lock it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
