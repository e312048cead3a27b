#!/usr/bin/env python3
"""Memory of everything the dev scripts started: RSS and PSS per service.

    rss.py [SCRATCH]            (default /opt/microstack-openstack-scratch)

A service = the process group of the pid recorded in SCRATCH/pids/NAME.pid
(gunicorn master + workers, rabbitmq-server's shell + beam.smp, ...), plus
named extras: epmd, each compute's ovsdb-server / ovs-vswitchd (their own
pidfiles), and any other process inside a compute's namespace (privsep
helpers) attributed to "<node>-privsep+other".  RSS double-counts pages
shared between processes; PSS does not.
"""

import glob
import os
import subprocess
import sys


def mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def pgid_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def main() -> int:
    scratch = sys.argv[1] if len(sys.argv) > 1 else "/opt/microstack-openstack-scratch"
    groups: dict[str, list[int]] = {}
    for pf in sorted(glob.glob(f"{scratch}/pids/*.pid")):
        name = os.path.basename(pf)[:-4]
        pid = int(open(pf).read().split()[0])
        members = pgid_members(pid) if name != "epmd" else [pid]
        if not members and os.path.exists(f"/proc/{pid}"):
            members = [pid]
        groups[name] = members
    seen = {p for ps in groups.values() for p in ps}
    for node_dir in sorted(glob.glob(f"{scratch}/compute/*/")):
        node = os.path.basename(node_dir.rstrip("/"))
        for d in ("ovsdb-server", "ovs-vswitchd"):
            try:
                pid = int(open(f"{node_dir}/ovs/run/{d}.pid").read().split()[0])
                groups[f"{node}-{d}"] = [pid]
                seen.add(pid)
            except (OSError, ValueError):
                pass
        try:
            pids = subprocess.run(["ip", "netns", "pids", f"msos-{node}"], capture_output=True,
                                  text=True, check=True).stdout.split()
        except subprocess.CalledProcessError:
            pids = []
        other = [int(p) for p in pids if int(p) not in seen]
        if other:
            groups[f"{node}-privsep+other"] = other
    tot_rss = tot_pss = 0
    print(f"{'service':32} {'procs':>5} {'RSS MiB':>9} {'PSS MiB':>9}")
    for name, pids in groups.items():
        rss = pss = 0
        for p in pids:
            r, s = mem_kb(p)
            rss += r
            pss += s
        tot_rss += rss
        tot_pss += pss
        print(f"{name:32} {len(pids):5} {rss / 1024:9.1f} {pss / 1024:9.1f}")
    print(f"{'TOTAL':32} {'':5} {tot_rss / 1024:9.1f} {tot_pss / 1024:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
