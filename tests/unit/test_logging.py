"""The daemon's log lines: key=value, and what journald gets (docs/cli.md)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microstackd.main import KeyValueFormatter


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("microstackd.node.agent", level, __file__, 1, message, (), None)


def test_a_line_is_key_value_with_a_timestamp_on_a_terminal_or_file() -> None:
    line = KeyValueFormatter(timestamps=True).format(record(logging.INFO, "ready node=n1 x=1"))
    assert line.startswith("time=")
    assert line.split(" ", 1)[1] == "level=info logger=microstackd.node.agent msg=ready node=n1 x=1"


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
    ],
)
def test_under_journald_no_timestamp_and_the_priority_prefix(level: int, prefix: str) -> None:
    line = KeyValueFormatter(timestamps=False, journal=True).format(record(level, "service down"))
    name = logging.getLevelName(level).lower()
    assert line == f"{prefix}level={name} logger=microstackd.node.agent msg='service down'"


def test_journal_stream_must_be_this_very_stderr(tmp_path: Path) -> None:
    """$JOURNAL_STREAM names the stream's device and inode: inherited by a
    process whose stderr goes elsewhere, it must not count."""
    log = tmp_path / "err"
    with open(log, "w") as err:
        stat = os.fstat(err.fileno())
        code = "from microstackd.main import stderr_is_journal as f; print(f())"
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        same = subprocess.run(
            [sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE, env=env,
            text=True, check=True,
        )  # fmt: skip
        other = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    assert (same.stdout, other.stdout) == ("True\n", "False\n")
