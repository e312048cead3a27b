"""A control out of file descriptors in the middle of a bootstrap (10,000
joiners at once hold a connection or two each, past the process's limit):
the joiner is told to come back (ControlBusy, its retry time), before
anything of it is committed, rather than the control failing with an
internal error (seen at 10,000 in bench/run.py --parts scale)."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from microstackd import errors
from microstackd.control.bootstrap import FD_RETRY, Bootstrap


class _Store:
    def __init__(self, code: int) -> None:
        self.code = code

    def read_file(self, name: str) -> bytes:
        raise OSError(self.code, "Too many open files" if self.code == errno.EMFILE else "EIO")


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_no_descriptor_left_is_busy_with_a_retry_time(code: int) -> None:
    control = SimpleNamespace(_store=_Store(code))
    with pytest.raises(errors.ControlBusy) as refused:
        Bootstrap._trust_bundle(control, None)  # type: ignore[arg-type]
    assert refused.value.retry_after == FD_RETRY
    assert "no file descriptor free" in refused.value.message


def test_any_other_failure_to_read_is_not_disguised() -> None:
    control = SimpleNamespace(_store=_Store(errno.EIO))
    with pytest.raises(OSError) as failed:
        Bootstrap._trust_bundle(control, None)  # type: ignore[arg-type]
    assert failed.value.errno == errno.EIO
