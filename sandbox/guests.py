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


def network_diagnostics(control: Host, compute: Host) -> str:
    """What a guest without network needs read: the tunnel ports, br-tun's
    flows and the tunnel neighbours of the control and of ``compute``, and the
    last lines (no DEBUG) of the control's OVS and DHCP agents' logs."""
    parts = []
    for node in (control, compute):
        assert node.socket is not None and node.state_dir is not None
        run_dir = node.socket.with_suffix(".services") / "ovs"
        env = clean_env({"OVS_RUNDIR": str(run_dir)})
        for argv in (
            ["ovs-vsctl", f"--db=unix:{run_dir / 'db.sock'}", "--timeout=10", "show"],
            ["ovs-ofctl", "dump-flows", "br-tun", "--no-stats"],
            ["ovs-appctl", "-t", "ovs-vswitchd", "tnl/neigh/show"],
        ):
            try:
                done = node.run(argv, env=env, timeout=30)
                parts.append(f"--- {node.name}: {' '.join(argv[:3])}\n{done.stdout}{done.stderr}")
            except (OSError, subprocess.SubprocessError) as exc:  # a diagnostic only
                parts.append(f"--- {node.name}: {' '.join(argv[:3])} failed: {exc}")
    for agent in ("neutron-openvswitch-agent", "neutron-dhcp-agent"):
        try:
            text = service_log(control, agent)
        except OSError as exc:
            parts.append(f"--- control {agent}: {exc}")
            continue
        lines = [
            line
            for line in text.splitlines()
            if " DEBUG " not in line and "privsep log" not in line and "rpc_loop" not in line
        ]
        parts.append(f"--- control {agent} (last 25 lines, no DEBUG)\n" + "\n".join(lines[-25:]))
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
