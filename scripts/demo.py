"""A real MicroStack cluster on this one machine, each node in its own
network namespace (a bridge namespace links them; their addresses exist only
inside the namespaces): a control and two computes, every step of init and
of each join streamed live, then `status`.

    python scripts/demo.py            the real OpenStack: the control plane on
                                      the control, nova-compute and the Open
                                      vSwitch agent on each compute, then a
                                      test instance launched on node-1
    python scripts/demo.py --light    the same cluster without OpenStack (each
                                      service a configuration-checking stand-in)
    --keep                            leave it running until Ctrl-C

Run as root (namespaces). Everything it starts is stopped and every
namespace removed when it ends, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.netns import MICROSTACKCTL, Host, Network, clean_env, reap  # noqa: E402

PREFIX = Path(os.environ.get("MICROSTACK_OPENSTACK_PREFIX", "/opt/microstack-openstack/venv"))
FAKE_DRIVER = "fake.FakeDriverWithoutFakeNodes"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def ctl(host: Host, *args: str, check: bool = True) -> int:
    """Run microstackctl on ``host`` with its output straight to this terminal."""
    assert host.socket is not None
    argv = [MICROSTACKCTL, "--socket", str(host.socket), *args]
    print(f"[{host.name}]$ microstackctl {' '.join(args)}", flush=True)
    result = host.run(argv, stdout=None, stderr=None, timeout=1800)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `microstackctl {' '.join(args)}` on {host.name} failed")
    return result.returncode


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
    if openstack and not (PREFIX / "bin" / "nova-compute").exists():
        banner(f"creating the OpenStack environment in {PREFIX} (once; about a minute)")
        subprocess.run([str(REPO / "openstack" / "install-env.sh"), str(PREFIX)], check=True)
    extra = ["--openstack-prefix", str(PREFIX)] if openstack else []
    workdir = Path(tempfile.mkdtemp(prefix="microstackd-demo-"))
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
        if openstack:
            assert control.state_dir is not None
            # No KVM in this sandbox: Nova's fake driver is the one stand-in.
            (control.state_dir / "control.yaml").write_text(
                f"compute:\n  compute_driver: {FAKE_DRIVER}\n"
            )

        banner("init --role control (on ctl)")
        ctl(control, "init", "--role", "control", "--address", control.address,
            "--password-file", str(password))  # fmt: skip
        for host in computes:
            banner(f"join {control.address} (on {host.node_name})")
            ctl(host, "join", control.address, "--password-file", str(password),
                "--address", host.address)  # fmt: skip
        if openstack and _has_launch(control):
            banner("launch cirros --name test --availability-zone nova:node-1 (on ctl)")
            _ensure_cirros(control)
            ctl(control, "launch", "cirros", "--name", "test",
                "--availability-zone", "nova:node-1")  # fmt: skip
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
    return 0


def _has_launch(control: Host) -> bool:
    result = control.run([MICROSTACKCTL, "launch", "--help"])
    return result.returncode == 0


def _ensure_cirros(control: Host) -> None:
    """A tiny image named cirros in Glance (no download: this machine has no
    internet; a few KB of zeros stands in for the disk, the fake driver never
    boots it)."""
    assert control.state_dir is not None
    env = clean_env({"OS_CLIENT_CONFIG_FILE": str(control.state_dir / "clouds.yaml")})
    openstack = str(PREFIX / "bin" / "openstack")
    listed = control.run(
        [openstack, "--os-cloud", "microstack", "image", "show", "cirros"], env=env
    )
    if listed.returncode == 0:
        return
    disk = control.workdir / "cirros.img"
    disk.write_bytes(bytes(64 * 1024))
    control.run(
        [openstack, "--os-cloud", "microstack", "image", "create", "cirros",
         "--disk-format", "raw", "--container-format", "bare", "--public",
         "--file", str(disk)],
        env=env, check=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
