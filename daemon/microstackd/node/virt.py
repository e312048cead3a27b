"""Which hypervisor a compute node's Nova uses, and how it reaches libvirt.

``virt_type`` is detected, not assumed: ``kvm`` only where ``/dev/kvm``
opens, the CPU advertises vmx or svm, *and* a guest actually makes progress
under KVM (``probe_kvm``: nested KVM without the CPU's help opens fine and
then stalls the guest at its first switch to protected mode); ``qemu``
(TCG) otherwise. control.yaml's ``compute.virt_type`` overrides it (``auto``
or absent: detect).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from microstackd import commands, errors

KVM_DEVICE = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
QEMU = "/usr/bin/qemu-system-x86_64"
#: A working KVM runs the probe in well under a second (TCG: ~0.2 s).
PROBE_TIMEOUT = 5.0
#: What the probe writes to isa-debug-exit: QEMU exits with (0x2a << 1) | 1.
PROBE_EXIT = 85
VIRT_TYPES = ("kvm", "qemu")

#: The probe: a 64 KiB BIOS image. At the reset vector it jumps to code that
#: loads a flat GDT, enters 32-bit protected mode, increments one word in
#: every 4 KiB page of 16 MiB eight times, writes "K" to the serial port and
#: exits through isa-debug-exit. Assembled from (GNU as, --32):
#:
#:   .code16: cli; mov %cs,%ax; mov %ax,%ds; lgdtl gdtr; mov %cr0,%eax;
#:            or $1,%eax; mov %eax,%cr0; ljmpl $8,$pm32
#:   .code32: pm32: mov $0x10,%ax; mov %ax,%ds/%es/%ss; mov $8,%ebx
#:            pass: mov $0x100000,%edi
#:            loop: incl (%edi); add $4096,%edi; cmp $0x1100000,%edi; jb loop
#:            dec %ebx; jnz pass
#:            mov $0x3f8,%dx; mov $'K',%al; out; mov $0xf4,%dx; mov $0x2a,%al; out; hlt
#:   gdt: null, code 0x00cf9a000000ffff, data 0x00cf92000000ffff; gdtr
PROBE_CODE = bytes.fromhex(
    "fa8cc88ed8660f011670000f20c06683c8010f22c066ea1d000f00080066b810"
    "008ed88ec08ed0bb08000000bf00001000ff0781c70010000081ff0000100172"
    "f04b75e866baf803b04bee66baf400b02aeef48d742600900000000000000000"
    "ffff0000009acf00ffff00000092cf00170058000f00"
)


@dataclass(frozen=True)
class VirtChoice:
    virt_type: str
    #: Why, for a person: shown in ``status``.
    reason: str

    def describe(self) -> str:
        return f"virt_type {self.virt_type} ({self.reason})"


def probe_image() -> bytes:
    image = bytearray(b"\xf4" * 65536)  # hlt everywhere else
    image[: len(PROBE_CODE)] = PROBE_CODE
    image[0xFFF0:0xFFF5] = bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])  # ljmp f000:0000
    return bytes(image)


async def probe(accel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Run the probe guest under ``accel``; whether it finished, and how."""
    with tempfile.TemporaryDirectory(prefix="virt-probe-") as tmp:
        bios, serial = Path(tmp) / "probe.bin", Path(tmp) / "serial"
        bios.write_bytes(probe_image())
        argv = [
            QEMU, "-machine", f"pc,accel={accel}", "-m", "32", "-nodefaults",
            "-no-user-config", "-display", "none", "-nic", "none", "-no-reboot",
            "-bios", str(bios), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial", f"file:{serial}",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            result = await commands.run(argv, timeout=timeout)
        except FileNotFoundError:
            return False, f"{QEMU} is not installed"
        except OSError as exc:
            return False, f"cannot run {QEMU}: {exc.strerror or exc}"
        except TimeoutError:
            return False, f"a {accel} guest made no progress in {timeout:g} s"
        elapsed = time.monotonic() - started
        wrote = serial.read_bytes() if serial.exists() else b""
        if result.returncode == PROBE_EXIT and wrote == b"K":
            return True, f"a {accel} guest ran its probe in {elapsed:.2f} s"
        why = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return False, f"the {accel} probe failed: {why}"


def _cpu_flags() -> set[str]:
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


async def kvm_usable() -> tuple[bool, str]:
    """Whether KVM can run guests here, and why (not)."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"cannot open {KVM_DEVICE}: {exc.strerror or exc}"
    os.close(fd)
    if not _cpu_flags() & {"vmx", "svm"}:
        return False, f"{KVM_DEVICE} opens but the CPU has no vmx/svm flag (nested, without help)"
    return await probe("kvm")


async def detect() -> VirtChoice:
    ok, why = await kvm_usable()
    return VirtChoice("kvm" if ok else "qemu", f"detected: {why}")


async def choose(setting: str, detected: VirtChoice | None = None) -> VirtChoice:
    """The virt type for control.yaml's ``compute.virt_type``: ``auto`` (or
    empty) detects; ``kvm`` or ``qemu`` is taken as configured."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return detected or await detect()
    if value in VIRT_TYPES:
        return VirtChoice(value, "set in control.yaml (compute.virt_type)")
    raise errors.InvalidArgument(
        f"compute.virt_type {setting!r} in control.yaml: expected auto, kvm or qemu"
    )


def libvirt_uri(service_manager: str, run_dir: str) -> str:
    """Where nova-compute reaches libvirt: the node's own libvirtd (its socket
    in the node's run dir) under the process manager; the host's otherwise."""
    if service_manager == "process":
        return f"qemu+unix:///system?socket={run_dir}/libvirt/libvirt-sock"
    return "qemu:///system"
