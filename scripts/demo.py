"""A real MicroStack cluster on this one machine, each node in its own
network namespace (a bridge namespace links them; their addresses exist only
inside the namespaces): a control and two computes, every step of init and
of each join streamed live, then `status`.

    python scripts/demo.py            the real OpenStack: the control plane
                                      (and the network node) on the control,
                                      libvirtd, nova-compute and the Open
                                      vSwitch agent on each compute, then a
                                      real instance launched on node-1 and
                                      `ssh cirros@FLOATING_IP uname -a`
    python scripts/demo.py --light    the same cluster without OpenStack (each
                                      service a configuration-checking stand-in)
    --keep                            leave it running until Ctrl-C

Run as root (namespaces). Everything it starts is stopped and every
namespace removed when it ends, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from microstackd.node import testimage  # noqa: E402
from sandbox import openstack_env  # noqa: E402
from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, reap  # noqa: E402
from sandbox.openstack_env import PREFIX  # noqa: E402

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]  # fmt: skip


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def ctl(host: Host, *args: str, check: bool = True, home: Path | None = None) -> int:
    """Run microstackctl on ``host`` with its output straight to this terminal."""
    assert host.socket is not None
    argv = [MICROSTACKCTL, "--socket", str(host.socket), *args]
    print(f"[{host.name}]$ microstackctl {' '.join(args)}", flush=True)
    env = clean_env({"HOME": str(home)} if home else None)
    result = host.run(argv, stdout=None, stderr=None, timeout=1800, env=env)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `microstackctl {' '.join(args)}` on {host.name} failed")
    return result.returncode


def ctl_lines(host: Host, *args: str, home: Path) -> list[str]:
    """microstackctl on ``host``, each line of its output shown as it comes
    (as a pipe shows it: plain text), and kept."""
    assert host.socket is not None
    print(f"[{host.name}]$ microstackctl {' '.join(args)}", flush=True)
    proc = host.popen(
        [MICROSTACKCTL, "--socket", str(host.socket), *args],
        env=clean_env({"HOME": str(home)}),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise SystemExit(f"demo: `microstackctl {' '.join(args)}` on {host.name} failed")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light", action="store_true", help="no OpenStack: stand-in services")
    parser.add_argument(
        "--keep", action="store_true", help="leave the cluster running until Ctrl-C"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it creates network namespaces)")
    openstack = not args.light
    if openstack and not openstack_env.is_current(PREFIX):
        banner(f"creating the OpenStack environment in {PREFIX} (once; a minute or two)")
        try:
            openstack_env.ensure(PREFIX, capture=False)
        except openstack_env.InstallFailed:
            raise SystemExit(
                "demo: openstack/install-env.sh failed (its output is above)"
            ) from None
    if openstack:
        # The nodes' namespaces cannot reach Debian's archive: the test image
        # is built here (once per machine), and control init finds it.
        banner("the test image (built once from Debian packages, then cached)")
        built = testimage.build()
        print(f"  {built.image} ({'cached' if built.cached else 'built now'})", flush=True)
    extra = ["--openstack-prefix", str(PREFIX)] if openstack else []
    workdir = Path(tempfile.mkdtemp(prefix="microstackd-demo-"))
    home = workdir / "home"  # launch makes its key under $HOME/.ssh: the demo's own
    home.mkdir()
    password = workdir / "password"
    password.write_text(os.urandom(18).hex() + "\n")
    password.chmod(0o600)
    network = Network(workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    try:
        banner("three nodes, each a microstackd in its own network namespace")
        control = network.add_host("control")
        control.start_daemon("ctl", extra_args=extra)
        computes = []
        for index in (1, 2):
            host = network.add_host(f"node{index}")
            host.start_daemon(f"node-{index}", extra_args=extra)
            computes.append(host)
        for host in (control, *computes):
            print(f"  {host.node_name:<8} {host.address:<12} namespace {host.ns}")

        banner("init --role control (on ctl)")
        ctl(control, "init", "--role", "control", "--address", control.address,
            "--password-file", str(password))  # fmt: skip
        for host in computes:
            banner(f"join {control.address} (on {host.node_name})")
            ctl(host, "join", control.address, "--password-file", str(password),
                "--address", host.address)  # fmt: skip
        if openstack:
            banner("launch cirros --name test --availability-zone nova:node-1 (on ctl)")
            launched = ctl_lines(control, "launch", "cirros", "--name", "test",
                                 "--availability-zone", "nova:node-1", home=home)  # fmt: skip
            _ssh_uname(control, home, launched)
        banner("status (on ctl)")
        ctl(control, "status")
        print(f"\ndemo: done in {time.monotonic() - started:.0f} s", flush=True)
        if args.keep:
            print(
                "\nThe cluster keeps running until Ctrl-C. In another terminal, e.g.:\n"
                f"  ip netns exec {computes[0].ns} {MICROSTACKCTL} "
                f"--socket {computes[0].socket} status",
                flush=True,
            )
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        banner("stopping every daemon and removing the namespaces")
        network.close()
        reap(network.prefix)
        # Its state, keys and logs: nothing of the demo stays behind.
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _ssh_uname(control: Host, home: Path, launched: list[str]) -> None:
    """The ssh line launch printed, run once as it stands (launch returned
    when the guest's sshd answered): no waiting, no retry."""
    line = next((ln.split(None, 1)[1] for ln in launched if ln.startswith("ssh ")), "")
    if not line:
        raise SystemExit("demo: launch printed no ssh line")
    argv = shlex.split(line)
    assert argv[0] == "ssh" and argv[1] == "-i", argv
    key = argv[2].replace("~", str(home), 1)  # the demo's own HOME
    banner(f"{line} uname -a (on ctl; the line launch printed)")
    started = time.monotonic()
    result = control.run(["ssh", *SSH_OPTIONS, "-i", key, *argv[3:], "uname -a"], timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{line}` failed: {result.stderr.strip()}")
    print(f"[ctl]$ {line} uname -a", flush=True)
    print(result.stdout, end="", flush=True)
    print(f"  (first try; the login took {time.monotonic() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
