"""Warm launches on a real cloud, looped: does every guest get its DHCP lease?

    sudo .venv/bin/python -m bench.dhcp_warm [--minutes 30] [--load 2] [--out DIR]
    sudo .venv/bin/python -m bench.dhcp_warm --fresh 10 [--per-cloud 3] [--load 3]

Brings up the cloud the real-cloud suite's ``cloud`` fixture makes
(tests/e2e/test_openstack.py: a control that is the network node and two
computes, node-1 and node-2, each in its network namespace), launches one
resident guest on each compute (the suite's cold vm1 and vm2), then loops
warm launches on node-1 and node-2 in turn (``microstackctl launch cirros
--availability-zone nova:HOST --ssh-timeout S --format json``, then
``openstack server delete --wait``), each beside the resident guest of its
compute, as the suite's vm3 is. For each it records ACTIVE and sshd times
and when the guest's console says it got its lease.

A guest whose sshd does not answer within ``--ssh-timeout`` is captured
before it is deleted (bench/dhcp_capture.py: its console, the trace of a
DHCPDISCOVER through br-int, the flows, tcpdump on its tap and at dnsmasq,
dnsmasq's hosts file, the Neutron port) into ``OUT/fail-N.txt``.

``--fresh N`` instead brings up N clouds in turn, each with its two
resident guests and ``--per-cloud`` warm launches (the suite's vm3 is the
first of them), then tears it down: what the suite does, N times.

``--load N`` runs N busy loops beside it for the whole run (the suite ran
beside another cloud's teardown when it failed). A file ``OUT/stop`` ends
the loop after the current launch. Everything started here (busy loops,
namespaces, daemons) goes at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import dhcp_capture
from sandbox.netns import Network
from sandbox.openstack_env import PREFIX
from tests.e2e.conftest import PASSWORD
from tests.e2e.test_openstack import Cloud, _init_killed_and_resumed, _join_all, _start, osc

from microstackd.node import testimage

LEASE = re.compile(r"cirros-init: eth0 (\S+)/")


def _bring_up(work: Path, network: Network, kill_init: bool) -> Cloud:
    password_file = work / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    home = work / "home"
    home.mkdir()
    control = network.add_host("control")
    computes = {name: network.add_host(name.replace("-", "")) for name in ("node-1", "node-2")}
    cloud = Cloud(network, control, computes, password_file, home)
    _start(control, "control", PREFIX)
    if kill_init:  # as the suite's fixture: SIGKILLed in the identity step, resumed
        _init_killed_and_resumed(cloud, PREFIX)
    else:
        init = cloud.ctl(
            "init", "--role", "control", "--address", control.address,
            "--password-file", str(password_file), timeout=1500,
        )  # fmt: skip
        if init.returncode != 0:
            raise SystemExit(f"control init failed:\n{init.stdout}{init.stderr}")
    for name, host in computes.items():
        _start(host, name, PREFIX)
    _join_all(cloud)
    return cloud


def _console(cloud: Cloud, server: str) -> str:
    done = osc(cloud.control, "console", "log", "show", server, check=False)
    return done.stdout + done.stderr


def _launch(cloud: Cloud, name: str, host: str, ssh_timeout: int) -> dict[str, Any]:
    started = time.monotonic()
    result = cloud.ctl(
        "launch", "cirros", "--name", name, "--availability-zone", f"nova:{host}",
        "--ssh-timeout", str(ssh_timeout), "--format", "json",
    )  # fmt: skip
    record: dict[str, Any] = {
        "name": name,
        "host": host,
        "wall_s": round(time.monotonic() - started, 1),
        "ok": result.returncode == 0,
        "load": os.getloadavg()[0],
    }
    if result.returncode == 0:
        data = json.loads(result.stdout)
        record["active_s"] = data["active_after_seconds"]
        record["ssh_s"] = data["ssh_after_seconds"]
    else:
        record["error"] = (result.stdout + result.stderr)[-1500:]
    console = _console(cloud, name)
    record["leased"] = bool(LEASE.search(console))
    record["dhcp_discover_lines"] = console.count("broadcasting discover")
    return record


def _busy(count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long to loop")
    parser.add_argument("--load", type=int, default=0, help="busy loops beside it")
    parser.add_argument("--ssh-timeout", type=int, default=150)
    parser.add_argument("--max-launches", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--fresh",
        type=int,
        default=0,
        help="instead: N clouds in turn, each up, two resident guests, --per-cloud warm launches",
    )
    parser.add_argument("--per-cloud", type=int, default=3)
    parser.add_argument(
        "--kill-init",
        action="store_true",
        help="init as the suite's fixture does: SIGKILLed in the identity step, then resumed",
    )
    args = parser.parse_args(argv)
    # SIGINT and SIGTERM unwind through the teardowns (a background job
    # starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out = args.out or Path(tempfile.mkdtemp(prefix="dhcp-warm-"))
    out.mkdir(parents=True, exist_ok=True)
    results = out / "launches.jsonl"
    print(f"dhcp_warm: writing to {out}", flush=True)
    testimage.build()
    busy = _busy(args.load)
    failures = 0
    try:
        if args.fresh:
            for run in range(args.fresh):
                if (out / "stop").exists():
                    break
                failures += _one_cloud(args, out, results, f"c{run}-", warm=args.per_cloud)
        else:
            failures += _one_cloud(args, out, results, "", warm=args.max_launches)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    return 1 if failures else 0


def _record(results: Path, record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _one_cloud(args: argparse.Namespace, out: Path, results: Path, prefix: str, warm: int) -> int:
    """One cloud: up, a resident guest on each compute, ``warm`` launches
    (node-1 and node-2 in turn, each deleted after), down. (Failed launches.)"""
    work = Path(tempfile.mkdtemp(prefix="dhcpw-"))
    network = Network(work / "net")
    failures = 0
    try:
        started = time.monotonic()
        cloud = _bring_up(work, network, args.kill_init)
        print(f"dhcp_warm: cloud up in {time.monotonic() - started:.0f} s", flush=True)
        (out / f"{prefix}cloud.json").write_text(
            json.dumps(
                {
                    h.name: {"ns": h.ns, "state": str(h.state_dir), "socket": str(h.socket)}
                    for h in network.hosts.values()
                }
            )  # fmt: skip
        )
        for name, host in ((f"{prefix}res1", "node-1"), (f"{prefix}res2", "node-2")):
            record = _launch(cloud, name, host, args.ssh_timeout)
            record["resident"] = True
            record["busy_loops"] = args.load
            _record(results, record)
        deadline = time.monotonic() + args.minutes * 60
        count = 0
        while time.monotonic() < deadline and count < warm and not (out / "stop").exists():
            host = ("node-1", "node-2")[count % 2]
            name = f"{prefix}w{count}"
            record = _launch(cloud, name, host, args.ssh_timeout)
            record["busy_loops"] = args.load
            count += 1
            if not record["ok"]:
                failures += 1
                importlib.reload(dhcp_capture)
                text = dhcp_capture.capture(cloud, name, host)
                record["capture"] = f"fail-{name}.txt"
                (out / record["capture"]).write_text(text)
            _record(results, record)
            deleted = osc(cloud.control, "server", "delete", "--wait", name, check=False)
            if deleted.returncode != 0:
                print(f"dhcp_warm: delete {name}: {deleted.stderr}", flush=True)
        print(f"dhcp_warm: {count} warm launches, {failures} failed", flush=True)
    finally:
        # Teardown in a thread: a ^C during it must not leave half the namespaces.
        closer = threading.Thread(target=network.close)
        closer.start()
        closer.join()
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(work)], check=False)
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
