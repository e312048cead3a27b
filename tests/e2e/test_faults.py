"""Fault injection across real namespaces: cut links, latency and loss,
daemons killed mid-join, removal, a password-guessing neighbour. Each test
ends by checking the control's status: no node lost, none duplicated."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.netns import MICROSTACKCTL, Host, Network, init_control, join, wait_for

pytestmark = pytest.mark.e2e

PROXY_ADDRESS = "10.251.0.200"


def states(control: Host) -> dict[str, str]:
    nodes = control.status()["nodes"]
    names = [n["name"] for n in nodes]
    assert len(names) == len(set(names)), f"a node is listed twice: {names}"
    return {n["name"]: n["state"] for n in nodes}


def start_control(network: Network, password_file: Path, *extra: str) -> Host:
    host = network.add_host("control")
    host.start_daemon("control", extra_args=list(extra))
    init_control(host, password_file)
    return host


def test_a_cut_link_shows_unreachable_and_heals(network: Network, password_file: Path) -> None:
    control = start_control(network, password_file, "--unreachable-after", "4")
    compute = network.add_host("compute1")
    compute.start_daemon("compute1")
    join(compute, control, password_file)
    assert states(control)["compute1"] == "active"
    compute.link_down(switch_side=True)
    try:
        wait_for(lambda: states(control)["compute1"] == "unreachable", 20, "unreachable")
        time.sleep(12)  # longer than the 10 s keepalive: connections die
        assert states(control)["compute1"] == "unreachable"
    finally:
        compute.link_up(switch_side=True)
    wait_for(lambda: states(control)["compute1"] == "active", 30, "active again", interval=0.5)
    assert compute.status()["local"]["role"] == "compute"


def _loss(host: Host, percent: int) -> None:
    rules = (
        "table inet mstloss {\n"
        "  chain out { type filter hook output priority 0; "
        f"numgen random mod 100 < {percent} drop; }}\n"
        "  chain in { type filter hook input priority 0; "
        f"numgen random mod 100 < {percent} drop; }}\n"
        "}\n"
    )
    host.run(["nft", "-f", "-"], input=rules, check=True)


def test_three_computes_join_through_latency_and_loss(
    network: Network, password_file: Path
) -> None:
    control = start_control(network, password_file)
    # 100 ms each way on every connection to the control, through a proxy in
    # the control's namespace on an extra address of its own.
    control.run(["ip", "addr", "add", f"{PROXY_ADDRESS}/24", "dev", control.iface], check=True)
    proxy = control.popen(
        [sys.executable, "-m", "tests.e2e.delay_proxy", PROXY_ADDRESS, control.address, "100",
         "10002", "10003"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        _joins_through_the_proxy(network, control, password_file)
    finally:
        proxy.kill()
        proxy.wait()
        if proxy.stdout is not None:
            proxy.stdout.close()


def _joins_through_the_proxy(network: Network, control: Host, password_file: Path) -> None:
    computes = []
    for name in ("compute1", "compute2", "compute3"):
        host = network.add_host(name)
        host.start_daemon(name)
        _loss(host, 5)
        computes.append(host)
    started = time.monotonic()
    joins = [
        host.popen(
            [
                MICROSTACKCTL,
                "--socket",
                str(host.socket),
                "join",
                PROXY_ADDRESS,
                "--password-file",
                str(password_file),
                "--address",
                host.address,
                "--format",
                "json",
                "--timeout",
                "120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for host in computes
    ]
    results = [p.communicate(timeout=240) for p in joins]
    elapsed = time.monotonic() - started
    for process, (out, err) in zip(joins, results, strict=True):
        assert process.returncode == 0, f"{err}\n{out}"
        events = [json.loads(line) for line in out.splitlines()]
        seqs = [e["seq"] for e in events if e["seq"]]
        assert seqs == sorted(set(seqs)), seqs
    assert states(control) == {
        "control": "active", "compute1": "active", "compute2": "active", "compute3": "active"
    }  # fmt: skip
    print(f"3 joins through 100 ms + 5 % loss took {elapsed:.1f} s")


@pytest.mark.parametrize("step", ["admit", "issue-config", "configure-node", "done"])
def test_control_killed_at_each_step(network: Network, password_file: Path, step: str) -> None:
    control = start_control(network, password_file, "--step-delay", f"{step}=30")
    compute = network.add_host("compute1")
    compute.start_daemon("compute1")
    joining = compute.popen(
        [MICROSTACKCTL, "--socket", str(compute.socket), "join", control.address,
         "--password-file", str(password_file), "--address", compute.address,
         "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(
        lambda: f"step={step} node=compute1" in control.daemon_log(tail=20),
        30,
        f"the control to reach {step}",
    )
    control.stop_daemon(signal.SIGKILL)
    assert control.node_name and control.state_dir and control.socket
    control.start_daemon(control.node_name, control.state_dir, control.socket)
    out, err = joining.communicate(timeout=120)
    assert joining.returncode == 0, err + out
    events: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    seqs = [e["seq"] for e in events if e["seq"]]
    assert seqs == sorted(set(seqs)), f"an event was shown twice: {seqs}"
    assert any("re-attaching" in e["message"] for e in events)
    assert states(control) == {"control": "active", "compute1": "active"}


def test_remove_then_rejoin(network: Network, control: Host, password_file: Path) -> None:
    compute = network.add_host("compute1")
    compute.start_daemon("compute1")
    join(compute, control, password_file)
    serial = next(n for n in control.status()["nodes"] if n["name"] == "compute1")["cert_serial"]
    out = control.ctl("remove", "compute1").stdout
    assert "revoked" in out
    assert states(control)["compute1"] == "removed"
    assert compute.status()["cluster"] == {}
    join(compute, control, password_file)
    node = next(n for n in control.status()["nodes"] if n["name"] == "compute1")
    assert node["state"] == "active" and node["cert_serial"] != serial


def test_a_password_guessing_neighbour_does_not_slow_a_join(
    network: Network, control: Host, password_file: Path, wrong_password_file: Path
) -> None:
    guesser = network.add_host("guesser")
    guesser.start_daemon("guesser")
    honest = network.add_host("compute1")
    honest.start_daemon("compute1")
    burst = [
        guesser.run(
            [
                MICROSTACKCTL,
                "--socket",
                str(guesser.socket),
                "join",
                control.address,
                "--password-file",
                str(wrong_password_file),
                "--address",
                guesser.address,
                "--timeout",
                "1",
            ],
        )  # fmt: skip
        for _ in range(6)
    ]
    assert all(r.returncode != 0 for r in burst)
    assert any("too many failed attempts" in r.stderr for r in burst), [r.stderr for r in burst]
    started = time.monotonic()
    join(honest, control, password_file)
    assert time.monotonic() - started < 15
    log = control.daemon_log(tail=200)
    assert f"source={guesser.address}" in log and "reason=wrong-password" in log
    assert states(control) == {"control": "active", "compute1": "active"}
