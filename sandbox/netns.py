"""Multi-host clusters on one machine: one network namespace per host.

Topology (all of it inside namespaces this module creates; the root
namespace's interfaces, routes and addresses are never touched)::

    <prefix>sw    switch namespace: bridge br0, one port per host (p<N>)
    <prefix><h>   host namespace:   lo up, eth0 = the other end of p<N>,
                                    an address in SUBNET, no default route

Hosts have no route anywhere but SUBNET and loopback, and IPv6 is off on the
test links (no link-local chatter), so nothing a test runs can send traffic to
any other address. Proxy variables are dropped from the environment.

Every namespace name starts with PREFIX (``mst-<pid>-<random>-``), unique to
this process, so parallel or leftover runs never collide; ``reap(PREFIX)``
removes whatever this process created, and ``stale_namespaces()`` lists what
dead runs left behind (``python -m sandbox.netns --reap-stale`` removes it).

Each host's microstackd is started by the one launcher (``sandbox.launcher``),
on the default ports: every host has its own namespace, so they cannot clash.

Processes are started in their own session (process group = pid) with
PR_SET_PDEATHSIG=SIGKILL, so they die with the test process even when it is
killed (their own children do not inherit that); teardown kills every process
group it started, then every process still inside a namespace, then deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.launcher import Daemon, NotReady, tool

PREFIX = f"mst-{os.getpid()}-{secrets.token_hex(3)}-"
STALE_RE = re.compile(r"^mst-(\d+)-[0-9a-f]{6}-")
SUBNET = ipaddress.IPv4Network("10.251.0.0/24")
#: Addresses from here up are never given to a host (see ``Network.unused_address``).
_FIRST_HOST = 10
_UNUSED_HOST = 250
BRIDGE = "br0"
HOST_IFACE = "eth0"
BOOTSTRAP_PORT = 10002
#: How long a daemon has to stop its role services at teardown, seconds.
STOP_TIMEOUT = 60.0

MICROSTACKD = tool("microstackd")
MICROSTACKCTL = tool("microstackctl")

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for processes in a namespace: no proxies (gRPC honours
    them, which would send traffic off the test subnet), unbuffered Python."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.pop("MICROSTACK_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    if extra:
        env.update(extra)
    return env


# ------------------------------------------------------------ low level --


class CommandFailed(AssertionError):
    """A command the harness (or a test through it) expected to succeed failed."""


def _ip(*args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"`ip {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def _no_ipv6(ns: str, lo: bool) -> None:
    """No IPv6 on the test links (not even link-local chatter); ``lo`` keeps ::1
    unless ``lo`` is true."""
    keys = ["net.ipv6.conf.default.disable_ipv6=1"]
    if lo:
        keys.append("net.ipv6.conf.all.disable_ipv6=1")
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", *keys],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise CommandFailed(f"cannot disable IPv6 in {ns}: {result.stderr.strip()}")


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _checksums_in_software(ns: str, iface: str) -> None:
    """A veth "offloads" TX checksums to a NIC that does not exist: the frame
    leaves with its checksum unfilled, which the far kernel accepts but Open
    vSwitch's userspace datapath (a node's br-phy) forwards unrepaired, and
    TCP to that node dies. A real NIC fills them; here the kernel must."""
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off"],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise CommandFailed(f"ethtool -K {iface} tx off in {ns}: {result.stderr.strip()}")


def processes_referencing(paths: Sequence[Path]) -> list[tuple[int, str]]:
    """Live processes whose command line names a path under one of ``paths``
    (what a test's daemons started outside every namespace the harness knows:
    dnsmasq in a qdhcp- namespace of a node's own, a QEMU)."""
    needles = [str(p).encode() for p in paths]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles) and pid_alive(int(entry)):
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


def mounts_referencing(paths: Sequence[Path]) -> list[str]:
    """Mount points (in this process's mount namespace) under one of ``paths``."""
    needles = [str(p) for p in paths]
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(n in line for n in needles)]


def kill_processes_referencing(paths: Sequence[Path], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while found := processes_referencing(paths):
        for pid, _cmd in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise CommandFailed(f"processes survive SIGKILL: {found}")
        time.sleep(0.05)


def list_namespaces() -> list[str]:
    result = _ip("-j", "netns", "list", check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return [str(entry["name"]) for entry in json.loads(result.stdout)]


def namespace_pids(ns: str) -> list[int]:
    result = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit() and pid_alive(int(p))]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_namespace_processes(ns: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in ``ns`` (and its process group) until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise CommandFailed(f"processes {pids} in namespace {ns} survive SIGKILL")
        time.sleep(0.05)


def delete_namespace(ns: str) -> None:
    """Kill what runs in ``ns``, then delete it (its veth ends and bridge go with it)."""
    kill_namespace_processes(ns)
    result = _ip("netns", "delete", ns, check=False)
    if result.returncode != 0 and ns in list_namespaces():
        raise CommandFailed(f"cannot delete namespace {ns}: {result.stderr.strip()}")


RUN_ROOT = Path("/tmp")


def reap(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (and the run
    directories ``/tmp/<prefix>*``); return the namespaces' names.

    The prefix must be a run's (``mst-<pid>-<hex>-``...): never touch anyone else's."""
    if not STALE_RE.match(prefix):
        raise ValueError(f"refusing to reap namespaces with the prefix {prefix!r}")
    for path in RUN_ROOT.glob(f"{prefix}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    removed = []
    errors = []
    for ns in list_namespaces():
        if ns.startswith(prefix):
            try:
                delete_namespace(ns)
                removed.append(ns)
            except CommandFailed as exc:
                errors.append(str(exc))
    if errors:
        raise CommandFailed("; ".join(errors))
    return removed


def _dead_run(name: str) -> str | None:
    """The run prefix of ``name`` if it belongs to an e2e run whose process is gone."""
    m = STALE_RE.match(name)
    if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
        return m.group(0)
    return None


def stale_namespaces() -> list[str]:
    """Namespaces left by e2e runs whose process is gone (killed before its teardown)."""
    return [ns for ns in list_namespaces() if _dead_run(ns)]


def reap_stale() -> list[str]:
    """Remove what dead e2e runs left: namespaces, processes in them, run directories."""
    names = list_namespaces() + [p.name for p in RUN_ROOT.glob("mst-*")]
    removed = []
    for prefix in sorted({p for n in names if (p := _dead_run(n))}):
        removed += reap(prefix)
    return removed


def unavailable_reason() -> str | None:
    """Why this machine cannot run the e2e suites, or None when it can."""
    if os.geteuid() != 0:
        return f"creating network namespaces needs root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}probe"
    try:
        result = _ip("netns", "add", probe, check=False)
        if result.returncode != 0:
            return f"`ip netns add` failed: {result.stderr.strip()}"
        for args, what in (
            (("link", "add", "pbr", "type", "bridge"), "a bridge"),
            (("link", "add", "pv0", "type", "veth", "peer", "name", "pv1"), "a veth pair"),
        ):
            result = _ip("-n", probe, *args, check=False)
            if result.returncode != 0:
                return f"cannot create {what} in a namespace: {result.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run `ip netns`: {exc}"
    finally:
        with contextlib.suppress(Exception):
            delete_namespace(probe)
    return None


# ----------------------------------------------------------------- host --


class Host:
    """One machine: a network namespace on the test bridge, and at most one microstackd."""

    def __init__(
        self, network: Network, name: str, index: int, workdir: Path, rundir: Path
    ) -> None:
        self.network = network
        self.name = name
        self.ns = f"{network.prefix}{name}"
        self.address = str(SUBNET.network_address + _FIRST_HOST + index)
        self.iface = HOST_IFACE
        self.switch_port = f"p{index}"
        self.workdir = workdir
        self.rundir = rundir
        self.node_name: str | None = None
        self.state_dir: Path | None = None
        self.socket: Path | None = None
        self.log_path: Path | None = None
        self.listen_port = BOOTSTRAP_PORT
        self.daemon: subprocess.Popen[bytes] | None = None
        self._launched: Daemon | None = None
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, address={self.address!r})"

    # ---------------------------------------------------------- set-up --

    def _create(self) -> None:
        sw = self.network.switch
        _ip("netns", "add", self.ns)
        _no_ipv6(self.ns, lo=False)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        # Both ends are born in the switch namespace; eth0 is moved straight
        # into the host namespace, so the root namespace never sees them.
        _ip("-n", sw, "link", "add", self.switch_port, "type", "veth",
            "peer", "name", self.iface, "netns", self.ns)  # fmt: skip
        _ip("-n", sw, "link", "set", self.switch_port, "master", BRIDGE)
        _ip("-n", sw, "link", "set", self.switch_port, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.address}/{SUBNET.prefixlen}", "dev", self.iface)
        _ip("-n", self.ns, "link", "set", self.iface, "up")
        _checksums_in_software(self.ns, self.iface)

    # -------------------------------------------------------- commands --

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 60, check: bool = False, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in this host's namespace; text output captured by default."""
        kw.setdefault("env", clean_env())
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("start_new_session", True)
        kw.setdefault("preexec_fn", _die_with_parent)
        return subprocess.run(self.argv(argv), timeout=timeout, check=check, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host's namespace; killed (by group) at teardown."""
        kw.setdefault("env", clean_env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["start_new_session"] = True
        kw.setdefault("preexec_fn", _die_with_parent)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    # ---------------------------------------------------------- daemon --

    def start_daemon(
        self,
        node_name: str,
        state_dir: Path | None = None,
        socket: Path | None = None,
        listen_port: int = BOOTSTRAP_PORT,
        *,
        extra_args: Sequence[str] = (),
        timeout: float = 30,
    ) -> subprocess.Popen[bytes]:
        """Start microstackd here; return once it is ready (its ``ready`` line)."""
        if self.daemon is not None and self.daemon.poll() is None:
            raise RuntimeError(f"{self.name} already runs microstackd (pid {self.daemon.pid})")
        self.node_name = node_name
        self.state_dir = state_dir or self.workdir / "state"
        self.socket = socket or self.rundir / "microstackd.sock"
        self.listen_port = listen_port
        self.log_path = self.workdir / f"microstackd-{node_name}.log"
        self._launched = Daemon(
            name=node_name,
            host=self.address,
            state_dir=self.state_dir,
            socket=self.socket,
            config_root=self.workdir / "etc",
            log_path=self.log_path,
            port=listen_port,
            extra=list(extra_args),
        )
        try:
            self.daemon = self._launched.start(self.popen, timeout)
        except NotReady as exc:
            raise CommandFailed(f"microstackd on {self.name} {exc.reason}\n{exc.log}") from None
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal microstackd; wait for it (SIGKILL after ``timeout``); return its exit code."""
        proc, self.daemon = self.daemon, None
        if proc is None or self._launched is None:
            return None
        return self._launched.stop(sig, timeout)

    def daemon_log(self, tail: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return f"--- no microstackd log for {self.name}"
        lines = self.log_path.read_text(errors="replace").splitlines()
        shown = "\n".join(lines[-tail:])
        return f"--- {self.log_path} (last {min(tail, len(lines))} lines)\n{shown}"

    def ctl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``microstackctl --socket SOCK ARGS`` in this namespace, text output."""
        if self.socket is None:
            raise RuntimeError(f"no microstackd started on {self.name}")
        argv = [MICROSTACKCTL, "--socket", str(self.socket), *args]
        result: subprocess.CompletedProcess[str] = self.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise CommandFailed(
                f"`microstackctl {' '.join(args)}` on {self.name} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}{self.daemon_log()}"
            )
        return result

    def status(self) -> dict[str, Any]:
        """``status --format json``, parsed."""
        data: dict[str, Any] = json.loads(self.ctl("status", "--format", "json").stdout)
        return data

    # ------------------------------------------------- fault injection --

    def link_down(self, switch_side: bool = False) -> None:
        """Unplug this host: its eth0 (or its bridge port) goes down."""
        self._set_link("down", switch_side)

    def link_up(self, switch_side: bool = False) -> None:
        self._set_link("up", switch_side)

    def _set_link(self, state: str, switch_side: bool) -> None:
        if switch_side:
            _ip("-n", self.network.switch, "link", "set", self.switch_port, state)
        else:
            _ip("-n", self.ns, "link", "set", self.iface, state)

    # -------------------------------------------------------- teardown --

    def close(self) -> None:
        """Stop microstackd and every process started here, by process group.
        The daemon gets time to stop its role services (nova-compute alone
        takes ~10 s) and run their stop hooks (domains, dnsmasq)."""
        with contextlib.suppress(Exception):
            self.stop_daemon(signal.SIGTERM, timeout=STOP_TIMEOUT)
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self._procs.clear()


# -------------------------------------------------------------- network --


class Network:
    """A switch namespace with a bridge, and hosts plugged into it."""

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{PREFIX}{secrets.token_hex(2)}-"
        if not self.prefix.startswith(PREFIX):
            raise ValueError("a network's prefix must extend this run's PREFIX")
        self.workdir = workdir
        self.switch = f"{self.prefix}sw"
        # Unix socket paths are limited to 108 bytes: keep them short.
        self.rundir = Path(tempfile.mkdtemp(prefix=self.prefix, dir=RUN_ROOT))
        self.hosts: dict[str, Host] = {}
        self._closed = False
        try:
            _ip("netns", "add", self.switch)
            _no_ipv6(self.switch, lo=True)
            _ip("-n", self.switch, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.switch, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
            raise ValueError(f"host name {name!r}: 1-12 lower-case letters and digits")
        if name in self.hosts or name == "sw":
            raise ValueError(f"host {name!r} exists")
        index = len(self.hosts)
        if _FIRST_HOST + index >= _UNUSED_HOST:
            raise ValueError("too many hosts")
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        rundir = self.rundir / name
        rundir.mkdir()
        host = Host(self, name, index, workdir, rundir)
        self.hosts[name] = host  # before _create: close() must remove a half-made host
        host._create()
        return host

    def unused_address(self) -> str:
        """An address in the test subnet that no host has."""
        return str(SUBNET.network_address + _UNUSED_HOST)

    def namespaces(self) -> list[str]:
        return [self.switch, *(h.ns for h in self.hosts.values())]

    def close(self) -> None:
        """Kill every process, delete every namespace (and with them the veths
        and the bridge); safe to call twice and after a failed set-up."""
        if self._closed:
            return
        self._closed = True
        failures: list[str] = []

        def close_host(host: Host) -> None:
            try:
                host.close()
            except Exception as exc:  # keep going: the namespaces must go regardless
                failures.append(f"{host.name}: {exc}")

        # In parallel: an OpenStack node takes ~15 s to stop its services.
        threads = [threading.Thread(target=close_host, args=(h,)) for h in self.hosts.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for ns in reversed(self.namespaces()):
            try:
                delete_namespace(ns)
            except CommandFailed as exc:
                failures.append(str(exc))
        try:
            kill_processes_referencing([self.workdir, self.rundir])
        except CommandFailed as exc:
            failures.append(str(exc))
        try:
            reap(self.prefix)
        except CommandFailed as exc:
            failures.append(str(exc))
        shutil.rmtree(self.rundir, ignore_errors=True)
        if failures:
            raise CommandFailed("network teardown: " + "; ".join(failures))


# ------------------------------------------------------------ CLI flows --


def init_control(host: Host, password_file: Path) -> subprocess.CompletedProcess[str]:
    return host.ctl(
        "init", "--role", "control", "--address", host.address,
        "--password-file", str(password_file),
    )  # fmt: skip


def join(
    host: Host, control: Host, password_file: Path, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return host.ctl(
        "join", control.address, "--password-file", str(password_file),
        "--address", host.address, check=check, timeout=timeout,
    )  # fmt: skip


@dataclass
class Cluster:
    network: Network
    control: Host
    computes: list[Host]
    joins: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _main(args: Iterable[str]) -> int:
    if "--reap-stale" in args:
        for ns in reap_stale():
            print(f"removed {ns}")
        return 0
    print("\n".join(stale_namespaces()) or "no stale e2e namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
