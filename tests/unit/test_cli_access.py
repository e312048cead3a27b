"""Who may use the admin socket: its group's members, nobody else — with the
documented message and exit code 4 (docs/cli.md), never a traceback.

Under its unit the daemon's socket is root:microstack 0660 in /run/microstackd
(0755); here a socket is made the same way with a spare group id, and the CLI
runs as nobody (setpriv), in the group or not.
tests/e2e/machines/test_machines.py does it with the real unit and users.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the CLI as another user",
)

NOBODY = 65534
GROUP = 46_421  # a group id of no one's: only the ownership matters
DENIED = (
    "Error: permission denied on {path}: run as root or as a member of the 'microstack' group "
    "(sudo usermod -aG microstack $USER, then log in again)\n"
)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A /run/microstackd look-alike (0755), in a directory anyone may enter."""
    top = Path(tempfile.mkdtemp(prefix="mst-access-"))
    try:
        top.chmod(0o755)
        path = top / "microstackd"
        path.mkdir(mode=0o755)
        yield path
    finally:
        shutil.rmtree(top)


@pytest.fixture
def sock(run_dir: Path) -> Iterator[Path]:
    """A socket like the daemon's: root:GROUP 0660 (bound, not answering)."""
    path = run_dir / "microstackd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    os.chown(path, 0, GROUP)
    path.chmod(0o660)
    try:
        yield path
    finally:
        listener.close()


def ctl_as_nobody(sock: Path, *, in_group: bool) -> subprocess.CompletedProcess[str]:
    groups = [f"--groups={GROUP}"] if in_group else ["--clear-groups"]
    return subprocess.run(
        [
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *groups, "--",
            sys.executable, "-m", "microstackctl.cli", "--socket", str(sock), "status",
        ],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
    )  # fmt: skip


def test_outside_the_group_the_socket_is_refused(sock: Path) -> None:
    result = ctl_as_nobody(sock, in_group=False)
    assert (result.returncode, result.stdout, result.stderr) == (4, "", DENIED.format(path=sock))


def test_a_member_of_the_group_gets_through_to_the_socket(sock: Path) -> None:
    """Nothing answers on this socket: a member is told that, not that it may not ask."""
    result = ctl_as_nobody(sock, in_group=True)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"Error: lost microstackd at {sock}: is it running?")


def test_a_socket_in_a_directory_one_may_not_enter_is_refused(run_dir: Path) -> None:
    """(--socket somewhere private): a permission error, not a traceback."""
    run_dir.chmod(0o700)
    path = run_dir / "microstackd.sock"
    result = ctl_as_nobody(path, in_group=True)
    assert (result.returncode, result.stdout, result.stderr) == (4, "", DENIED.format(path=path))
