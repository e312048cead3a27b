"""The Neutron agents' own /run/netns (roles/network.py, IN_OWN_NETNS_DIR)
and its release (cleanup release-netns), for real: mounts and network
namespaces, all inside a mount namespace made for the test (a node's, as
``ip netns exec`` makes one for the e2e nodes), so that nothing outlives
it even when the test fails. Root only."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microstackd.node import render
from microstackd.node.roles.network import DHCP_AGENT, IN_OWN_NETNS_DIR, L3_AGENT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip", "taskset")),
    reason="needs root, unshare, nsenter, ip and taskset",
)

PREFIX = render.expand(IN_OWN_NETNS_DIR, {})
RELEASE = shlex.join([sys.executable, "-m", "microstackd.node.cleanup", "release-netns"])


def in_node(script: str) -> str:
    """Run ``script`` (sh) in a fresh mount namespace, a slave of this one;
    ``agent BASE CMD...`` runs CMD as a service run IN_OWN_NETNS_DIR of BASE.
    The namespace is made on the last CPU: where this machine's kernel
    (6.18) gives mount namespaces the highest numbers, which the agent's,
    made later, must exceed."""
    prelude = f'agent() {{ {shlex.join(PREFIX)} "$@"; }}\nrelease() {{ {RELEASE} "$1"; }}\n'
    last = str(max(os.sched_getaffinity(0)))
    done = subprocess.run(
        [
            "taskset",
            "-c",
            last,
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "--",
            "/bin/sh",
            "-ec",
            prelude + script,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_an_agents_namespaces_outlive_it_until_released(tmp_path: Path) -> None:
    base = tmp_path / "netns-l3"
    (base / "netns").mkdir(parents=True)
    (base / "netns" / "qrouter-stale").touch()  # a dead namespace's name
    out = in_node(f"""
        b={base}
        agent $b sh -ec 'ip netns list; echo first-listed
            ip netns add qrouter-r; ip -n qrouter-r addr add 192.0.2.1/32 dev lo'
        echo handle $(mountpoint -q $b/mnt && echo kept)
        agent $b sh -ec 'ip netns list; ip -n qrouter-r -br addr show lo'
        release $b
        grep -c " $b" /proc/self/mountinfo || true
        ls $b/netns; echo listed
        agent $b ip netns list; echo fresh-listed
        release $b
    """)
    first, rest = out.split("first-listed\n")
    assert first == ""  # the stale name went; none of the machine's namespaces shows
    assert "handle kept" in rest
    assert "qrouter-r\nlo" in rest and "192.0.2.1/32" in rest  # the same namespace, entered again
    assert f"mount namespace {base}/mnt released with qrouter-r netns\n{base} unmounted\n" in rest
    released, after = rest.split(f"{base} unmounted\n", 1)
    assert after.startswith("0\nlisted\nfresh-listed\n"), after  # no mount, no name, a new one
    assert after.endswith("released with no netns\n" + f"{base} unmounted\n"), after


def test_two_nodes_agents_on_one_machine_each_have_their_own_namespace_names(
    tmp_path: Path,
) -> None:
    out = in_node(f"""
        agent {tmp_path}/a ip netns add qdhcp-n
        agent {tmp_path}/b ip netns add qdhcp-n
        agent {tmp_path}/a ip netns list; agent {tmp_path}/b ip netns list
        release {tmp_path}/a; release {tmp_path}/b
    """)
    assert out.startswith("qdhcp-n\nqdhcp-n\n"), out


def test_release_leaves_what_is_not_mounted_alone(tmp_path: Path) -> None:
    (tmp_path / "netns").mkdir()
    out = in_node(f"release {tmp_path}; echo status $?")
    assert out == "nothing to do\nstatus 0\n"


def test_the_agents_keep_their_namespaces_across_a_restart_and_release_them_for_good() -> None:
    for agent, base in ((L3_AGENT, "${run_dir}/netns-l3"), (DHCP_AGENT, "${run_dir}/netns-dhcp")):
        assert agent.command[: len(IN_OWN_NETNS_DIR) + 1] == (*IN_OWN_NETNS_DIR, base)
        assert agent.teardown[-1][-2:] == ("release-netns", base)
        assert not agent.post_stop  # nothing of theirs goes at a restart
    assert "kill-pidfiles" in DHCP_AGENT.teardown[0]  # dnsmasq, before its namespace goes
