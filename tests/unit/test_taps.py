"""A guest's tap left down by Open vSwitch's flags write, brought up by the
compute's libvirt hook (microstackd/node/taps.py): which taps, when, what
it says; and for real, the rendered hook in a network namespace the test
makes (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from microstackd.control import config as control_config
from microstackd.node import render, taps
from microstackd.node.roles import COMPUTE
from microstackd.node.roles.compute import LIBVIRT_QEMU_HOOK

DOMAIN = """<domain type='qemu'><name>instance-00000001</name><devices>
  <interface type='ethernet'><mac address='fa:16:3e:00:00:01'/>
    <target dev='tap0001' managed='yes'/><model type='virtio'/></interface>
  <interface type='ethernet'><target dev='tap0002'/><link state='down'/></interface>
  <interface type='ethernet'><target dev='tap0003'/><link state='up'/></interface>
  <interface type='user'><model type='virtio'/></interface>
  <disk type='file'><target dev='vda'/></disk>
</devices></domain>"""


class Kernel:
    """Interfaces' flags as a fake kernel holds them; ``drop_up_after``: how
    many of the hook's writes OVS takes back (the race, again)."""

    def __init__(self, state: dict[str, int], drop_up_after: int = 0) -> None:
        self.state = state
        self.writes: list[str] = []
        self.takebacks = drop_up_after

    def read(self, name: str) -> int | None:
        return self.state.get(name)

    def write(self, name: str) -> None:
        self.writes.append(name)
        if self.takebacks:
            self.takebacks -= 1
            return
        self.state[name] |= taps.IFF_UP


def test_the_taps_are_the_interfaces_targets_whose_link_the_domain_wants_up() -> None:
    assert taps.guest_taps(DOMAIN) == ["tap0001", "tap0003"]


def test_only_taps_that_exist_and_are_down_are_brought_up() -> None:
    kernel = Kernel({"tap0001": 0x1002, "tap0003": 0x1103})  # down+promisc, up
    assert taps.repair(["tap0001", "tap0003", "gone"], kernel.read, kernel.write) == ["tap0001"]
    assert kernel.writes == ["tap0001"]
    assert kernel.state["tap0001"] & taps.IFF_UP


def test_the_hook_repairs_a_started_guest_looks_again_and_logs_each_repair(tmp_path: Path) -> None:
    kernel = Kernel({"tap0001": 0x1102, "tap0003": 0x1102}, drop_up_after=1)
    slept: list[float] = []
    log = tmp_path / "tap-repairs.log"
    done = taps.hook(
        ["instance-00000001", "started", "begin", "-"],
        DOMAIN,
        log,
        kernel.read,
        kernel.write,
        slept.append,
    )
    # tap0001's first repair was taken back: the second look did it again.
    assert done == ["tap0001", "tap0003", "tap0001"]
    assert slept == [taps.SECOND_LOOK]
    assert kernel.state["tap0001"] & taps.IFF_UP and kernel.state["tap0003"] & taps.IFF_UP
    (line,) = log.read_text().splitlines()
    assert "instance-00000001 started: brought up tap0001, tap0003, tap0001" in line


def test_a_reconnected_guest_is_looked_at_once() -> None:
    kernel = Kernel({"tap0001": 0x1102, "tap0003": 0x1103})
    slept: list[float] = []
    done = taps.hook(
        ["vm", "reconnect", "begin", "-"], DOMAIN, None, kernel.read, kernel.write, slept.append
    )
    assert done == ["tap0001"] and slept == []


@pytest.mark.parametrize(
    ("phase", "flags"),
    [(p, 0) for p in ("prepare", "start", "stopped", "release", "migrate", "restore")]
    + [("started", 0x1103), ("reconnect", 0x1103)],  # a healthy guest's taps
)
def test_nothing_is_touched_nor_logged(tmp_path: Path, phase: str, flags: int) -> None:
    """libvirt's other phases, and a guest whose taps are up."""
    kernel = Kernel({"tap0001": flags, "tap0003": flags})
    log = tmp_path / "log"
    done = taps.hook(
        ["vm", phase, "begin", "-"], DOMAIN, log, kernel.read, kernel.write, lambda _: None
    )
    assert done == [] and kernel.writes == [] and not log.exists()


def test_unreadable_xml_never_fails_the_guests_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("<domain"))
    assert taps.main(["--", "vm", "started", "begin", "-"]) == 0
    assert "microstackd tap hook:" in capsys.readouterr().err


def _rendered_hook(tmp_path: Path) -> tuple[Path, Path]:
    """The compute role's hook as a compute renders it; its log path."""
    from tests.unit.test_control_role import _values

    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    values = _values(tmp_path, config, COMPUTE)
    paths = render.render_role(COMPUTE, values, tmp_path / "etc")
    hook = tmp_path / "etc" / LIBVIRT_QEMU_HOOK
    assert hook in paths
    assert hook.stat().st_mode & 0o777 == 0o750
    return hook, Path(values["log_dir"]) / "tap-repairs.log"


def test_the_rendered_hook_ignores_the_phases_it_does_not_handle(tmp_path: Path) -> None:
    hook, log = _rendered_hook(tmp_path)
    # libvirt gives no XML on stdin for some phases: the hook must not wait.
    done = subprocess.run(
        [str(hook), "vm", "prepare", "begin", "-"], stdin=subprocess.DEVNULL, timeout=30
    )
    assert done.returncode == 0 and not log.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and ip (a network namespace)"
)
def test_the_rendered_hook_brings_a_down_tap_up_in_the_nodes_namespace(tmp_path: Path) -> None:
    hook, log = _rendered_hook(tmp_path)
    ns = f"taptest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for tap in ("tap0001", "tap0002"):
            subprocess.run(["ip", "-n", ns, "tuntap", "add", tap, "mode", "tap"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, str(hook), "instance-00000001", "started", "begin", "-"],
            input=DOMAIN,
            text=True,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

        def is_up(tap: str) -> bool:
            shown = subprocess.run(
                ["ip", "-n", ns, "-o", "link", "show", tap],
                capture_output=True,
                text=True,
                check=True,
            )
            return ",UP" in shown.stdout or "<UP" in shown.stdout

        assert is_up("tap0001")
        assert not is_up("tap0002")  # the domain wants its link down
        assert "brought up tap0001 (down while the domain wants its link up)" in log.read_text()
        assert "brought up tap0001" in done.stderr
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
