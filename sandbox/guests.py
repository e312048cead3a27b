"""Real guests on the real cloud: ``microstackctl launch`` on the control,
then the ssh line it printed, logged in once and timed.

One implementation for the real-cloud suites (tests/e2e/test_openstack*.py)
and the benchmark's ``cloud`` part (bench/cloud.py). Every function takes the
hosts of the netns harness (``sandbox/netns.py``) and the CLI user's HOME
(launch makes ``~/.ssh/id_microstack`` there). A launch or a login that fails
raises ``AssertionError`` carrying what to look at: the daemon's log, the
tunnels and agents (``network_diagnostics``), the guests' consoles
(``diagnose``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox.netns import MICROSTACKCTL, Host, clean_env
from sandbox.openstack_env import PREFIX

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
)  # fmt: skip
#: What the first login runs: the kernel, the user, the guest's own name.
LOGIN_COMMAND = "uname -a; id -un; hostname"


def osc(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``openstack --os-cloud microstack ARGS`` inside the control's namespace."""
    assert host.state_dir is not None
    env = {"OS_CLIENT_CONFIG_FILE": str(host.state_dir / "clouds.yaml")}
    result = host.run(
        [str(PREFIX / "bin" / "openstack"), "--os-cloud", "microstack", *args],
        env=clean_env(env),
        timeout=180,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openstack {' '.join(args)}: {result.stdout}{result.stderr}")
    return result


def osc_json(host: Host, *args: str) -> Any:
    return json.loads(osc(host, *args, "-f", "json").stdout)


def ctl(
    control: Host, home: Path, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """microstackctl on the control, as the CLI user (its HOME), unchecked."""
    return control.run(
        [MICROSTACKCTL, "--socket", str(control.socket), *args],
        env=clean_env({"HOME": str(home)}),
        timeout=timeout,
    )


def ssh(
    control: Host, home: Path, address: str, command: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``ssh cirros@ADDRESS COMMAND`` from the control with launch's key, unchecked."""
    key = home / ".ssh" / "id_microstack"
    return control.run(
        ["ssh", *SSH_OPTIONS, "-i", str(key), f"cirros@{address}", command], timeout=timeout
    )


def login(
    control: Host, home: Path, address: str, command: str, computes: Sequence[Host] = ()
) -> tuple[str, float]:
    """``ssh cirros@ADDRESS COMMAND`` from the control, once: launch
    returned, so the line it printed works now. (Its output, seconds.)"""
    started = time.monotonic()
    result = ssh(control, home, address, command, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"{result.stderr}\n{diagnose(control, computes)}"
    return result.stdout, elapsed


def service_log(host: Host, service: str) -> str:
    assert host.state_dir is not None
    return (host.state_dir / "logs" / f"{service}.log").read_text(errors="replace")


def diagnose(control: Host, computes: Sequence[Host]) -> str:
    """What a guest that cannot be reached needs looked at: its console,
    the agents' errors, the bridges."""
    parts = []
    for host in computes:
        assert host.state_dir is not None
        for console in (host.state_dir / "services" / "nova" / "instances").glob("*/console.log"):
            lines = console.read_text(errors="replace").splitlines()
            parts.append(
                f"--- {host.name} {console.parent.name} console\n" + "\n".join(lines[-25:])
            )
    for host in (control, *computes):
        assert host.state_dir is not None and host.socket is not None
        for log in sorted((host.state_dir / "logs").glob("neutron-*.log")):
            errors = [ln for ln in log.read_text(errors="replace").splitlines()
                      if " ERROR " in ln or " WARNING " in ln][-8:]  # fmt: skip
            if errors:
                parts.append(f"--- {host.name} {log.name}\n" + "\n".join(errors))
        db = f"--db=unix:{host.socket.with_suffix('.services') / 'ovs' / 'db.sock'}"
        parts.append(
            f"--- {host.name} ovs-vsctl show\n" + host.run(["ovs-vsctl", db, "show"]).stdout
        )
    dnsmasq = subprocess.run(["pgrep", "-a", "dnsmasq"], capture_output=True, text=True)
    parts.append("--- dnsmasq\n" + dnsmasq.stdout)
    return "\n".join(parts)


def ovs_env(node: Host) -> tuple[dict[str, str], str]:
    """The environment and ``--db`` option that reach ``node``'s own Open vSwitch."""
    assert node.socket is not None
    run_dir = node.socket.with_suffix(".services") / "ovs"
    return clean_env({"OVS_RUNDIR": str(run_dir)}), f"--db=unix:{run_dir / 'db.sock'}"


def discover_flow(ofport: str, mac: str) -> str:
    """An ``ofproto/trace`` flow: a DHCPDISCOVER from the guest port ``ofport`` with ``mac``."""
    return (f"udp,in_port={ofport},dl_src={mac},dl_dst=ff:ff:ff:ff:ff:ff,"
            "nw_src=0.0.0.0,nw_dst=255.255.255.255,udp_src=68,udp_dst=67")  # fmt: skip


def tried(node: Host, argv: list[str], env: dict[str, str], label: str = "") -> str:
    """``argv`` in ``node``'s namespace, its output under a heading (a diagnostic: never raises)."""
    heading = f"--- {node.name}: {label or ' '.join(argv[:3])}"
    try:
        done = node.run(argv, env=env, timeout=30)
        return f"{heading}\n{done.stdout}{done.stderr}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{heading} failed: {exc}"


def _guest_ports(node: Host) -> list[tuple[str, str, str]]:
    """(tap, ofport, MAC) of each guest port on ``node``'s br-int."""
    env, db = ovs_env(node)
    argv = ["ovs-vsctl", db, "--timeout=10", "--format=json", "--columns=name,ofport,external_ids",
            "find", "Interface", "external_ids:attached-mac!=\"\""]  # fmt: skip
    try:
        table = json.loads(node.run(argv, env=env, timeout=30).stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    ports = []
    for name, ofport, ids in table.get("data", []):
        mac = dict(ids[1]).get("attached-mac", "") if ids[0] == "map" else ""
        if mac:
            ports.append((str(name), str(ofport), str(mac)))
    return ports


def _dnsmasq_files(control: Host) -> list[str]:
    """The DHCP agent's hosts and leases files of each network, and the tail
    of dnsmasq's own log of its DHCP exchanges (``dnsmasq_base_log_dir``)."""
    assert control.state_dir is not None
    parts = []
    dhcp = control.state_dir / "services" / "neutron" / "dhcp"

    def read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError as exc:  # gone meanwhile: a diagnostic only
            return f"({exc})"

    for path in sorted([*dhcp.glob("*/host"), *dhcp.glob("*/leases")]):
        parts.append(f"--- control {path.relative_to(dhcp)}\n{read(path)}")
    for log in sorted((control.state_dir / "logs" / "dnsmasq").glob("*/dhcp_dns_log")):
        # The exchanges and dnsmasq's complaints, not each option it sent.
        lines = [
            ln
            for ln in read(log).splitlines()
            if "DHCP" in ln or "no address" in ln or "ignor" in ln or "fail" in ln
        ]
        parts.append(
            f"--- control dnsmasq log {log.parent.name} (last 40)\n" + "\n".join(lines[-40:])
        )
    return parts


def network_diagnostics(control: Host, compute: Host) -> str:
    """What a guest without network needs read: the tunnel ports, br-int's
    and br-tun's flows and the tunnel neighbours of the control and of
    ``compute``; on ``compute`` each guest port's ofport, VLAN tag and the trace
    of a DHCPDISCOVER from it through br-int and br-tun (which flow drops
    it, if one does), and the guests' consoles; on the control dnsmasq's
    hosts, leases and log, the Neutron ports; and the last lines (no DEBUG)
    of the control's OVS and DHCP agents' logs and of ``compute``'s OVS agent's."""
    parts = []
    for node in (control, compute):
        env, db = ovs_env(node)
        for argv in (
            ["ovs-vsctl", db, "--timeout=10", "show"],
            ["ovs-ofctl", "dump-flows", "br-int", "--no-stats"],
            ["ovs-ofctl", "dump-flows", "br-tun", "--no-stats"],
            ["ovs-appctl", "-t", "ovs-vswitchd", "tnl/neigh/show"],
        ):
            parts.append(
                tried(node, argv, env, " ".join(argv[:4] if argv[1] == "dump-flows" else argv[:3]))
            )
    env, db = ovs_env(compute)
    for table, columns in (
        ("Interface", "name,ofport,ifindex,error,link_state,statistics,external_ids"),
        ("Port", "name,tag"),
    ):
        argv = ["ovs-vsctl", db, "--timeout=10", f"--columns={columns}", "list", table]
        parts.append(tried(compute, argv, env, f"{table} {columns}"))
    # The kernel's view of the taps (an ifindex unlike the Interface's is a
    # tap made again under its name, which Open vSwitch still reads the old
    # of), and each node's MACs, to hold against the tunnel neighbours above.
    for node in (control, compute):
        parts.append(tried(node, ["ip", "-o", "link", "show"], ovs_env(node)[0], "ip link"))
    for tap, ofport, mac in _guest_ports(compute):
        discover = discover_flow(ofport, mac)
        parts.append(tried(compute, ["ovs-appctl", "ofproto/trace", "br-int", discover], env,
                            f"DHCPDISCOVER from {tap} ({mac}) traced"))  # fmt: skip
    assert compute.state_dir is not None
    # The taps the libvirt hook brought up (microstackd/node/taps.py).
    repairs = compute.state_dir / "logs" / "tap-repairs.log"
    parts.append(f"--- {compute.name} tap-repairs.log\n"
                 + (repairs.read_text() if repairs.exists() else "(none)"))  # fmt: skip
    for console in (compute.state_dir / "services" / "nova" / "instances").glob("*/console.log"):
        lines = console.read_text(errors="replace").splitlines()
        parts.append(f"--- {compute.name} {console.parent.name} console\n" + "\n".join(lines[-25:]))
    parts += _dnsmasq_files(control)
    shown = ("ID", "MAC Address", "Fixed IP Addresses", "Status", "device_owner")
    try:
        ports = osc(control, "port", "list", "--long",
                    *(f"-c{c}" for c in shown), check=False)  # fmt: skip
        parts.append(f"--- control: openstack port list\n{ports.stdout}{ports.stderr}")
    except (OSError, subprocess.SubprocessError) as exc:  # a diagnostic only
        parts.append(f"--- control: openstack port list failed: {exc}")
    for node, agent in (
        (control, "neutron-openvswitch-agent"),
        (control, "neutron-dhcp-agent"),
        (compute, "neutron-openvswitch-agent"),
    ):
        try:
            text = service_log(node, agent)
        except OSError as exc:
            parts.append(f"--- {node.name} {agent}: {exc}")
            continue
        lines = [
            line
            for line in text.splitlines()
            if " DEBUG " not in line and "privsep log" not in line and "rpc_loop" not in line
        ]
        parts.append(
            f"--- {node.name} {agent} (last 25 lines, no DEBUG)\n" + "\n".join(lines[-25:])
        )
    return "\n".join(parts)


def check_launched(data: dict[str, Any], host: str) -> None:
    """What launch's JSON must say: ACTIVE on ``host``, a floating IP, the
    ssh line for it, sshd answering after the guest went ACTIVE."""
    assert data["host"] == host and data["status"] == "ACTIVE", data
    assert data["floating_ip"].startswith("10.20.20."), data
    assert data["ssh"] == f"ssh -i ~/.ssh/id_microstack cirros@{data['floating_ip']}", data
    assert data["ssh_ready"] and data["ssh_banner"].startswith("SSH-2.0-dropbear"), data
    assert 0 < data["active_after_seconds"] < data["ssh_after_seconds"], data


def launch(
    control: Host,
    home: Path,
    name: str,
    host: str,
    compute: Host,
    computes: Sequence[Host] = (),
) -> tuple[dict[str, Any], float]:
    """launch ``name`` on Nova's ``host`` (the node ``compute``), which returns
    once the guest's sshd answers; then its ssh line, once. (launch's JSON
    with the login's output as ``login``, seconds from launch to the login's end.)"""
    started = time.monotonic()
    result = ctl(
        control, home,
        "launch", "cirros", "--name", name, "--availability-zone", f"nova:{host}",
        "--format", "json",
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            result.stdout + result.stderr + control.daemon_log()
            + "\n" + network_diagnostics(control, compute)
        )  # fmt: skip
    data: dict[str, Any] = json.loads(result.stdout)
    check_launched(data, host)
    data["login"], _ = login(
        control, home, data["floating_ip"], LOGIN_COMMAND, computes or [compute]
    )
    return data, time.monotonic() - started
