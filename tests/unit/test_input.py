"""Input checks (issue 14, item 9): every name, address, port and duration is
read whole (no trailing newline slips through a ``$``) and in ASCII digits
only (``int()`` and ``\\d`` take Arabic-Indic and other digits), in the
daemon's flags, its config file, control.yaml, a join token and the CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from microstackctl import cli
from microstackd import errors, main
from microstackd.control import config as control_config
from microstackd.trust import names, tokens

ARABIC_19002 = "\u0661\u0669\u0660\u0660\u0662"  # ١٩٠٠٢


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1:",  # `join HOST:` silently meant port 10002
        "[fd00::1]:",
        f"10.0.0.1:{ARABIC_19002}",
        f"[fd00::1]:{ARABIC_19002}",
        "10.0.0.1:10002\n",
        "10.0.0.1: 10002",
        "10.0.0.1:1_0002",
        "10.0.0.1:+10002",
        "10.0.0.1\n",
    ],
)
def test_host_port_takes_only_ascii_digits_and_a_whole_port(text: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="control address"):
        names.host_port(text)


@pytest.mark.parametrize(
    ("value", "expected"), [("10002", 10002), (10002, 10002), ("1", 1), ("65535", 65535)]
)
def test_port_reads_ascii_digits_and_ints(value: object, expected: int) -> None:
    assert names.port(value, "port") == expected


@pytest.mark.parametrize(
    "value", [ARABIC_19002, "10002\n", " 10002", "1_000", "+5", "0", "65536", True, 5.0, ""]
)
def test_port_refuses_everything_else(value: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="the port"):
        names.port(value, "the port")


@pytest.mark.parametrize(("value", "expected"), [("1.5", 1.5), ("30", 30.0), (2, 2.0), (0.5, 0.5)])
def test_seconds_reads_ascii_decimals(value: object, expected: float) -> None:
    assert names.seconds(value, "--x", 0, 86400) == expected


@pytest.mark.parametrize(
    "value", ["\u0661", "1\n", "nan", "inf", "1e3", "-1", "0", "86401", True, float("nan"), ""]
)
def test_seconds_refuses_everything_else(value: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="--x"):
        names.seconds(value, "--x", 0, 86400)


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", f"0.0.0.0:{ARABIC_19002}"],
        ["--listen", "0.0.0.0:"],
        ["--listen", "127.0.0.1:"],
        ["--listen", f"127.0.0.1:{ARABIC_19002}"],
        ["--cluster-port", ARABIC_19002],
        ["--cluster-port", "10003\n"],
        ["--unreachable-after", "\u0663\u0660"],
        ["--bootstrap-backoff", "nan"],
        ["--step-delay", "admit=\u0661"],
        ["--step-delay", "admit=inf"],
    ],
)
def test_daemon_flags_take_ascii_numbers_only(argv: list[str]) -> None:
    args = main.parse_args(["--node-name", "n1", *argv])
    with pytest.raises(errors.InvalidArgument):
        main.build_config(args)


def test_daemon_config_file_numbers_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "microstackd.yaml"
    path.write_text(f"cluster_port: '{ARABIC_19002}'\n")
    args = main.merge(main.parse_args(["--node-name", "n1"]), main.load_config_file(path))
    with pytest.raises(errors.InvalidArgument, match="cluster_port|--cluster-port"):
        main.build_config(args)


def test_control_config_ports_are_ascii(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    control_config.ensure(path, "10.0.0.1")
    text = path.read_text().replace("port: 5672", f"port: '{ARABIC_19002}'")
    assert ARABIC_19002 in text
    path.write_text(text)
    with pytest.raises(errors.InvalidArgument, match="rabbitmq"):
        control_config.ensure(path, "10.0.0.1")


def _token_text(**changes: object) -> str:
    token = tokens.new("n9", ("10.0.0.1:10002",), "a" * 64, "b" * 64, 2_000_000_000)
    body = json.loads(base64.urlsafe_b64decode(tokens.encode(token)[5:] + "=="))
    body.update(changes)
    raw = json.dumps(body).encode()
    return "mst1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "0123456789abcdef\n"},
        {"bootstrap_fp": "a" * 64 + "\n"},
        {"ca_fp": "b" * 64 + "\n"},
        {"name": "n9\n"},
        {"exp": "2000000000"},
        {"exp": "\u0662" * 10},
    ],
)
def test_a_token_is_read_whole(changes: dict[str, object]) -> None:
    assert tokens.decode(_token_text()).name == "n9"
    with pytest.raises(errors.InvalidArgument, match="not a microstackd join token"):
        tokens.decode(_token_text(**changes))


@pytest.mark.parametrize(
    "argv",
    [
        ["add-node", "n9", "--ttl", "\u0661\u0660"],
        ["add-node", "n9", "--ttl", "\u0661\u0660m"],
        ["watch", "--after", "\u0661"],
        ["join", "10.0.0.1", "--password-stdin", "--timeout", "\u0661\u0660"],
    ],
)
def test_cli_numbers_are_ascii(argv: list[str], tmp_path: Path) -> None:
    """A usage error (2) before any daemon is asked: no socket exists here (3)."""
    socket = str(tmp_path / "none.sock")
    result = CliRunner().invoke(cli.main, ["--socket", socket, *argv], input="pw\n")
    assert result.exit_code == 2, result.output
