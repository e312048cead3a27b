"""A disk that fills during an enrolment (issue 14, item 6): the joiner gets
a failed step saying the control's disk is full, and the enrolment carries
on once space is back. The control's state directory is a small tmpfs this
test mounts (and unmounts, however it ends)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import Node, join_in_background, wait_for_text


@pytest.fixture
def small_disk(make_tmpfs: Callable[[str], Path]) -> Path:
    """An 8 MiB filesystem of its own, for the control's state directory."""
    return make_tmpfs("8m")


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file that does it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_a_full_disk_fails_the_joiners_step_with_the_cause_and_the_enrolment_resumes(
    small_disk: Path, make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl", "--step-delay", "configure-node=2")
    control.stop()
    control.daemon.state_dir = small_disk / "ctl"  # type: ignore[union-attr]
    control.start()
    control.init_control(password_file)
    member = make_node("node-1")

    join = join_in_background(member, control, password_file)
    try:
        wait_for_text(control.log, "pausing before' step=configure-node node=node-1", 30)
        filler = _fill(small_disk)
        try:
            out, err = join.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            join.kill()
            out, err = join.communicate()
            raise AssertionError(f"the joiner hangs on a full disk:\n{out}\n{err}") from None
    finally:
        if join.poll() is None:
            join.kill()
            join.communicate()
    assert join.returncode == 1, err
    assert "disk is full" in err and "control" in err, err
    last = json.loads(out.splitlines()[-1])
    assert last["final"] and last["state"] == "failed", last
    assert last["step"] == "configure-node", last

    filler.unlink()  # space is back: the control carries on by itself
    deadline = time.monotonic() + 60
    while (state := control.status()["nodes"][1]["state"]) != "active":
        assert time.monotonic() < deadline, f"node-1 is still {state} after the space came back"
        time.sleep(0.5)
    again = member.ctl("join", control.endpoint, "--password-file", str(password_file),
                       "--address", member.address)  # fmt: skip
    assert "active compute node" in again.stdout, again.stdout
    assert member.status()["nodes"][1]["state"] == "active"
    assert "the disk is full" in control.log.read_text()  # the control's log names the file
