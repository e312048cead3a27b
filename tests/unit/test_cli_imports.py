"""What each microstackctl command imports, read from ``python -X importtime``
of the real entry point: the help, the version and usage errors load click
and none of grpc, protobuf or rich; ``status`` written to a pipe needs no
rich either (docs/performance.md, CLI start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("grpc", "google.protobuf", "rich", "microstack_api", "pathlib", "asyncio", "ssl", "shutil")


def imported(argv: list[str], env: dict[str, str] | None = None) -> tuple[set[str], int]:
    """The modules ``microstackctl ARGV`` imports (as -X importtime lists
    them), and its exit code."""
    code = (
        "import sys\n"
        f"sys.argv = ['microstackctl', *{argv!r}]\n"
        "from microstackctl.cli import run\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }
    assert "click" in modules, result.stderr[-2000:]
    return modules, result.returncode


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["-h"],
        ["--version"],
        ["status", "--help"],
        ["join", "--help"],
        ["init", "--help"],
        ["tokens", "revoke", "--help"],
    ],
)
def test_help_and_version_import_none_of_grpc_protobuf_rich(argv: list[str]) -> None:
    modules, code = imported(argv)
    assert code == 0
    assert heavy(modules) == []


def test_a_usage_error_imports_none_of_them_either() -> None:
    modules, code = imported(["status", "--format", "xml"])
    assert code == 2
    assert heavy(modules) == []


def test_only_the_command_that_runs_is_imported(tmp_path: Path) -> None:
    # No daemon at the socket: status stops at its first step, but by then
    # it has loaded what it needs (protobuf, its own HTTP/2 call) and
    # nothing of the others.
    modules, code = imported(["--socket", str(tmp_path / "none.sock"), "status"])
    assert code == 3
    assert {
        "microstack_api.v1.cluster_pb2",
        "microstackctl.cmd_status",
        "microstackctl.unary",
    } <= modules
    others = {m for m in modules if m.startswith("microstackctl.cmd_")} - {
        "microstackctl.cmd_status"
    }
    assert others == set()
    assert not any(m.startswith("rich") for m in modules)


def test_status_imports_neither_grpc_nor_asyncio_nor_ssl(tmp_path: Path) -> None:
    # A socket that answers nothing (bound, not listening): status gets as
    # far as connecting, so its whole transport is loaded.
    import socket

    path = tmp_path / "refused.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    try:
        modules, code = imported(["--socket", str(path), "status", "--format", "json"])
    finally:
        listener.close()
    assert code == 3
    assert "microstackctl.unary" in modules
    # Of the heavy modules, only protobuf and the generated messages.
    assert [m for m in heavy(modules) if not m.startswith(("google.", "microstack_api"))] == []
    for name in ("grpc", "asyncio", "ssl"):
        assert not any(m == name or m.startswith(name + ".") for m in modules), name


def test_the_status_table_for_a_pipe_is_written_without_rich_or_json() -> None:
    code = (
        "import sys\n"
        "from microstack_api.v1 import cluster_pb2 as pb\n"
        "from microstackctl import render\n"
        "s = pb.StatusResponse(local_node='ctl', local_role=pb.ROLE_CONTROL)\n"
        "s.cluster.id = 'c1'\n"
        "s.nodes.add(name='ctl', role=pb.ROLE_CONTROL, state='active')\n"
        "render.print_status(s)\n"
        "render.print_tokens([])\n"
        "render.Progress('table').show(pb.Event(step='admit', state=pb.STEP_STATE_DONE))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('rich', 'json'))), file=sys.stderr)\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no FORCE_COLOR, TTY_COMPATIBLE or COLUMNS
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[]"
    assert "ctl" in result.stdout and "admit" in result.stdout


@pytest.mark.parametrize(
    "columns", [None, "", "abc", "0", "-3", "20", "52", "79", "80", "81", "300"]
)
def test_help_is_wrapped_where_click_would_wrap_it(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    import shutil

    from microstackctl import cli

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    # click.formatting.HelpFormatter's own width when it is not given one.
    expected = max(min(shutil.get_terminal_size().columns, 80) - 2, 50)
    assert cli.help_width() == expected
