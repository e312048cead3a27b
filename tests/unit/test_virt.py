"""virt_type: detected (device, CPU flags, a guest that makes progress), or
as control.yaml sets it; and where nova-compute finds libvirt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.node import virt


def choose(setting: str, detected: virt.VirtChoice | None = None) -> virt.VirtChoice:
    return asyncio.run(virt.choose(setting, detected))


def detect() -> virt.VirtChoice:
    return asyncio.run(virt.detect())


async def _ran(ran: list[str], accel: str) -> tuple[bool, str]:
    ran.append(accel)
    return True, "ran"


def test_auto_detects_and_an_explicit_choice_is_taken_as_configured() -> None:
    detected = virt.VirtChoice("qemu", "detected: no /dev/kvm")
    assert choose("auto", detected) is detected
    assert choose("", detected) is detected
    assert choose("KVM", detected) == virt.VirtChoice(
        "kvm", "set in control.yaml (compute.virt_type)"
    )
    assert choose("qemu", detected).virt_type == "qemu"
    with pytest.raises(errors.InvalidArgument, match="expected auto, kvm or qemu"):
        choose("xen", detected)


def test_no_device_or_no_cpu_flag_means_qemu_without_running_a_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(virt, "probe", lambda accel: _ran(ran, accel))
    monkeypatch.setattr(virt, "KVM_DEVICE", tmp_path / "kvm")
    choice = detect()
    assert choice.virt_type == "qemu" and "cannot open" in choice.reason
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(virt, "KVM_DEVICE", device)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 hypervisor\n")
    monkeypatch.setattr(virt, "CPUINFO", cpuinfo)
    assert "no vmx/svm flag" in detect().reason
    assert ran == []
    cpuinfo.write_text("flags : fpu svm\n")
    assert detect() == virt.VirtChoice("kvm", "detected: ran")
    assert ran == ["kvm"]


def test_a_kvm_probe_that_stalls_means_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags : vmx\n")
    monkeypatch.setattr(virt, "KVM_DEVICE", device)
    monkeypatch.setattr(virt, "CPUINFO", cpuinfo)

    async def stalls(accel: str) -> tuple[bool, str]:
        return False, "a kvm guest made no progress"

    monkeypatch.setattr(virt, "probe", stalls)
    assert detect() == virt.VirtChoice("qemu", "detected: a kvm guest made no progress")


def test_the_probe_image_starts_at_the_reset_vector() -> None:
    image = virt.probe_image()
    assert len(image) == 65536
    assert image[0xFFF0:0xFFF5] == bytes.fromhex("ea000000f0")  # ljmp f000:0000
    assert image.startswith(virt.PROBE_CODE) and virt.PROBE_CODE[0] == 0xFA  # cli


def test_the_process_manager_uses_the_nodes_own_libvirtd() -> None:
    assert virt.libvirt_uri("process", "/run/n1/services") == (
        "qemu+unix:///system?socket=/run/n1/services/libvirt/libvirt-sock"
    )
    assert virt.libvirt_uri("systemd", "/x") == "qemu:///system"
    assert virt.libvirt_uri("snap", "/x") == "qemu:///system"
