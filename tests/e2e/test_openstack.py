"""The real OpenStack roles, end to end: ``init --role control`` with an
OpenStack environment brings up the control plane in the control's
namespace, a compute joins with a real nova-compute and Open vSwitch agent,
and the admin cloud answers ``openstack --os-cloud microstack``.

Slow (a few minutes): marked ``openstack`` and run after the fast suites.
The OpenStack environment is created with ``openstack/install-env.sh`` into
``MICROSTACK_OPENSTACK_PREFIX`` (default /opt/microstack-openstack/venv) when
it is missing; the suite is skipped only if that install fails for lack of
network.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, join, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.openstack, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("MICROSTACK_OPENSTACK_PREFIX", "/opt/microstack-openstack/venv"))
#: Lines of a failed install that mean "no network", not a broken install.
NO_NETWORK = re.compile(
    r"Temporary failure in name resolution|Could not resolve|Network is unreachable|"
    r"Failed to establish a new connection|Failed to fetch|No route to host",
    re.IGNORECASE,
)
FAKE_DRIVER = "fake.FakeDriverWithoutFakeNodes"
#: Where the measured figures are written for docs/performance.md.
MEASUREMENTS = Path(
    os.environ.get("MICROSTACK_OPENSTACK_MEASUREMENTS", "/tmp/microstack-openstack-e2e.json")
)


@pytest.fixture(scope="session")
def openstack_prefix() -> Path:
    """The OpenStack environment, created once per machine (install-env.sh is idempotent)."""
    if not (PREFIX / "bin" / "nova-compute").exists():
        started = time.monotonic()
        result = subprocess.run(
            [str(REPO / "openstack" / "install-env.sh"), str(PREFIX)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            if NO_NETWORK.search(output):
                pytest.skip(
                    f"cannot create the OpenStack environment (no network): {output[-800:]}"
                )
            pytest.fail(f"openstack/install-env.sh {PREFIX} failed:\n{output[-3000:]}")
        _measure(env_install_s=round(time.monotonic() - started, 1))
    return PREFIX


def _measure(**values: Any) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(values)
    MEASUREMENTS.write_text(json.dumps(data, indent=1) + "\n")


def _osc(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``openstack --os-cloud microstack ARGS`` inside the control's namespace."""
    assert host.state_dir is not None
    env = {"OS_CLIENT_CONFIG_FILE": str(host.state_dir / "clouds.yaml")}
    result = host.run(
        [str(PREFIX / "bin" / "openstack"), "--os-cloud", "microstack", *args],
        env=clean_env(env),
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openstack {' '.join(args)}: {result.stdout}{result.stderr}")
    return result


def _osc_json(host: Host, *args: str) -> Any:
    return json.loads(_osc(host, *args, "-f", "json").stdout)


def _start(host: Host, name: str, prefix: Path) -> None:
    host.start_daemon(name, extra_args=["--openstack-prefix", str(prefix)])


def _control_rss_mib(host: Host) -> float:
    """RSS of every process in the control's namespace but microstackd itself."""
    total = 0
    daemon = host.daemon.pid if host.daemon else -1
    result = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True)
    for pid in result.stdout.split():
        if int(pid) == daemon:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return round(total / 1024, 1)


def test_control_plane_compute_and_cloud(
    network: Network, password_file: Path, openstack_prefix: Path
) -> None:
    control = network.add_host("control")
    _start(control, "control", openstack_prefix)
    assert control.state_dir is not None
    (control.state_dir / "control.yaml").write_text(f"compute:\n  compute_driver: {FAKE_DRIVER}\n")

    # -- init, SIGKILLed in the middle of a bootstrap step ------------------
    started = time.monotonic()
    argv = ["init", "--role", "control", "--address", control.address]
    argv += ["--password-file", str(password_file)]
    first = control.popen(
        [MICROSTACKCTL, "--socket", str(control.socket), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    assert first.stdout is not None
    for line in first.stdout:
        seen.append(line)
        if re.search(r"identity\s+creating the service project", line):
            break
    else:
        raise AssertionError("init ended before the identity step:\n" + "".join(seen))
    time.sleep(1.5)  # into the step: some users may already exist
    control.stop_daemon(signal.SIGKILL)
    first.wait(30)
    first.stdout.close()
    _start(control, "control", openstack_prefix)
    out = control.ctl(*argv, timeout=900).stdout
    init_s = round(time.monotonic() - started, 1)
    for text in ("service mariadb", "service rabbitmq", "keystone-bootstrap", "service keystone"):
        assert text in "".join(seen), "".join(seen)
    for text in ("identity", "neutron-db-migrations", "service neutron-api", "cloud-defaults"):
        assert text in out, out
    assert "skipped" not in out, out
    assert "service keystone" not in out  # done before the kill: not redone

    # -- the admin cloud ----------------------------------------------------
    clouds = control.state_dir / "clouds.yaml"
    assert oct(clouds.stat().st_mode & 0o777) == "0o600"
    _osc(control, "token", "issue")
    catalog = {entry["Type"] for entry in _osc_json(control, "catalog", "list")}
    assert {"identity", "image", "placement", "compute", "network"} <= catalog
    networks = {n["Name"] for n in _osc_json(control, "network", "list")}
    assert networks == {"public", "private"}
    # No duplicates from the interrupted identity step and the redone one.
    users = [u["Name"] for u in _osc_json(control, "user", "list")]
    assert sorted(users) == sorted(["admin", "glance", "placement", "nova", "neutron"]), users
    endpoints = _osc_json(control, "endpoint", "list")
    assert len(endpoints) == 15, endpoints  # 5 services x public, internal, admin
    assert [f["Name"] for f in _osc_json(control, "flavor", "list")] == ["m1.tiny"]

    services = {
        s["name"]: s["state"]
        for n in control.status()["nodes"]
        if n["name"] == "control"
        for s in n["services"]
    }
    assert len(services) == 11 and set(services.values()) == {"running"}, services
    rss = _control_rss_mib(control)

    # -- a second init changes nothing --------------------------------------
    again = control.ctl(*argv, check=False)
    assert again.returncode != 0 and "already the control node" in again.stdout + again.stderr

    # -- a compute joins with a real nova-compute and Open vSwitch agent ----
    compute = network.add_host("compute1")
    _start(compute, "compute1", openstack_prefix)
    started = time.monotonic()
    joined = join(compute, control, password_file, timeout=600).stdout
    join_s = round(time.monotonic() - started, 1)
    for text in ("service ovs-vswitchd", "service neutron-openvswitch-agent", "4/4 services"):
        assert text in joined, joined

    def agent_alive() -> bool:
        agents = _osc_json(control, "network", "agent", "list", "--host", "compute1")
        return any(a["Alive"] in (True, ":-)") for a in agents)

    wait_for(agent_alive, 120, "the Open vSwitch agent of compute1 alive", interval=2)

    def compute_up() -> bool:
        found = _osc_json(control, "compute", "service", "list", "--service", "nova-compute")
        return any(s["Host"] == "compute1" and s["State"] == "up" for s in found)

    wait_for(compute_up, 120, "nova-compute on compute1 up", interval=2)
    _measure(control_init_s=init_s, control_rss_mib=rss, compute_join_s=join_s)
    print(f"control init {init_s} s (with a SIGKILL and a restart), RSS {rss} MiB; join {join_s} s")
