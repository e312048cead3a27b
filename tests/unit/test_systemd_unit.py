"""systemd/microstackd.service: what systemd makes of it, and its promises.

``systemd-analyze verify`` needs the ExecStart binary to exist, so the unit
is checked as a copy whose ExecStart points at this environment's
microstackd (same arguments).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microstackd.node.services import systemd_units

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "microstackd.service"
SYSUSERS = ROOT / "systemd" / "microstackd.sysusers"
INSTALLED_BINARY = "/usr/bin/microstackd"
VENV_BINARY = Path(sys.executable).parent / "microstackd"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd, see scripts/setup.sh)",
)


def settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, by key (comments and sections dropped)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return settings(UNIT.read_text())


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the venv's microstackd."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = tmp_path / "microstackd.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={VENV_BINARY} "))
    return copy


@needs_analyze
def test_systemd_analyze_verify_is_silent(testable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if "microstackd" in line]
    assert result.returncode == 0, output
    assert about_unit == [], output


@needs_analyze
def test_the_recorded_exposure_score_is_current(testable_unit: Path) -> None:
    """The score written in the unit's header is what this systemd says."""
    header = UNIT.read_text()
    recorded = re.search(r"\(systemd (\d+)\) rates this unit\s+#?\s*(\d+\.\d) ", header)
    assert recorded, "the unit's header must record its exposure score"
    version = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    if version != recorded.group(1):
        pytest.skip(f"score recorded for systemd {recorded.group(1)}, this is systemd {version}")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert score, result.stdout + result.stderr
    assert score.group(1) == recorded.group(2)


def test_exec_start_uses_only_flags_the_daemon_has(unit: dict[str, list[str]]) -> None:
    [exec_start] = unit["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == INSTALLED_BINARY
    help_text = subprocess.run(
        [str(VENV_BINARY), "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = [arg for arg in argv[1:] if arg.startswith("--")]
    assert flags == ["--state-dir", "--socket", "--control-config"]
    for flag in flags:
        assert re.search(rf"\s{re.escape(flag)}\s", help_text), f"microstackd has no {flag}"


def test_paths_agree_with_the_directories_systemd_makes(unit: dict[str, list[str]]) -> None:
    argv = unit["ExecStart"][0].split()
    value = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert value["--state-dir"] == "/var/lib/" + unit["StateDirectory"][0]
    assert Path(value["--socket"]).parent == Path("/run") / unit["RuntimeDirectory"][0]
    assert (
        Path(value["--control-config"]).parent == Path("/etc") / unit["ConfigurationDirectory"][0]
    )
    # /etc/microstackd is written at control init (control.yaml); the systemd
    # backend writes its role units into /run/systemd/system.
    writable = unit["ReadWritePaths"][0].split()
    assert "/etc/microstackd" in writable
    assert str(systemd_units.UNIT_DIR) in writable
    # The role services' sockets under /run/microstackd/services outlive a daemon restart.
    assert unit["RuntimeDirectoryPreserve"] == ["yes"]


def test_lifecycle_contract(unit: dict[str, list[str]]) -> None:
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "mixed",
        "Restart": "on-failure",
        "StateDirectoryMode": "0700",
        "ConfigurationDirectoryMode": "0700",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }
    assert {key: unit[key][-1] for key in expected} == expected
    # The socket's directory: anyone may enter it; the socket (root:microstack
    # 0660, the daemon's doing) is the check. No chgrp of the directory: systemd
    # would undo it before ExecStart.
    assert unit["RuntimeDirectoryMode"] == ["0755"]
    assert "ExecStartPre" not in unit


def test_capabilities_are_bounded(unit: dict[str, list[str]]) -> None:
    caps = set(unit["CapabilityBoundingSet"][0].split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_KILL"} <= caps
    assert not caps & {"CAP_SYS_MODULE", "CAP_SYS_TIME", "CAP_SYS_BOOT", "CAP_SYS_RAWIO"}


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_socket_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    groups = (tmp_path / "etc" / "group").read_text().splitlines()
    assert any(line.startswith("microstack:") for line in groups)
