"""What a guest without a DHCP lease needs looked at, captured while it runs
(bench/dhcp_warm.py calls it before deleting the guest)."""

from __future__ import annotations

import json
import subprocess

from sandbox.guests import discover_flow, ovs_env, tried
from tests.e2e.test_openstack import Cloud, network_diagnostics, osc


def capture(cloud: Cloud, server: str, host: str) -> str:
    parts: list[str] = []
    control = cloud.control
    node = cloud.computes[host]
    parts.append(
        "=== console\n" + osc(control, "console", "log", "show", server, check=False).stdout
    )
    ports = json.loads(
        osc(control, "port", "list", "--server", server, "--long", "-f", "json", check=False).stdout
        or "[]"
    )
    parts.append("=== ports\n" + json.dumps(ports, indent=1))
    for port in ports:
        parts.append(
            "=== port show\n"
            + osc(control, "port", "show", port["ID"], "-f", "json", check=False).stdout
        )
    env, db = ovs_env(node)
    for port in ports:
        tap = "tap" + port["ID"][:11]
        mac = port["MAC Address"]
        parts.append(tried(node, ["ovs-vsctl", db, "list", "interface", tap], env))
        parts.append(tried(node, ["ovs-vsctl", db, "list", "port", tap], env))
        ofport = node.run(["ovs-vsctl", db, "get", "interface", tap, "ofport"], env=env).stdout
        ofport = ofport.strip()
        flow = discover_flow(ofport, mac)
        parts.append(tried(node, ["ovs-appctl", "ofproto/trace", "br-int", flow], env))
        parts.append(tried(node, ["timeout", "8", "tcpdump", "-lnei", tap, "-c", "20"], env))
    for who in (control, node):
        env, db = ovs_env(who)
        for bridge in ("br-int", "br-tun"):
            parts.append(f"=== {who.name} " + tried(who, ["ovs-ofctl", "dump-flows", bridge], env))
        parts.append(tried(who, ["ovs-appctl", "dpctl/dump-flows"], env))
    # dnsmasq on the control: its hosts file, and what it hears.
    for pid_line in subprocess.run(
        ["pgrep", "-a", "dnsmasq"], capture_output=True, text=True
    ).stdout.splitlines():
        pid, _, cmd = pid_line.partition(" ")
        if str(control.state_dir) not in cmd:
            continue
        parts.append("=== dnsmasq " + pid_line)
        for arg in cmd.split():
            if arg.startswith(("--dhcp-hostsfile=", "--addn-hosts=", "--dhcp-optsfile=")):
                path = arg.split("=", 1)[1]
                try:
                    with open(path) as f:
                        parts.append(f"--- {path}\n{f.read()}")
                except OSError as exc:
                    parts.append(f"--- {path}: {exc}")
        done = subprocess.run(
            ["nsenter", "-t", pid, "-n", "sh", "-c",
             "ip -o addr; timeout 8 tcpdump -lnei any -c 20 port 67 or port 68"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        parts.append("--- tcpdump in dnsmasq's netns\n" + done.stdout + done.stderr)
    parts.append("=== network_diagnostics\n" + network_diagnostics(cloud, host))
    return "\n".join(parts)
