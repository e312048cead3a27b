"""Machines, not processes: each node a systemd-nspawn container with systemd
as PID 1, in its host's network namespace (sandbox/netns.py) on the test
bridge.

* **The image**: one Debian rootfs, made with debootstrap once per machine
  and kept in ``CACHE`` (``/var/cache/microstackd-e2e/rootfs-ID``; the only
  thing this suite leaves behind). ID is a hash of the recipe below: change
  the recipe (or ``IMAGE_VERSION``) and the next run builds a new one, then
  removes the old ones no run is using (each user holds a shared lock).
* **A node**: an overlay of its own on the image (upper and work directories
  in the test's directory), mounted in a private mount namespace that
  ``unshare`` makes for ``systemd-nspawn`` alone, so it never appears on the
  host and goes away with the container even when the test is killed. The
  upper directory is kept across a stop and start of the node: a reboot.
* **A cgroup of its own**: nspawn with ``--keep-unit`` and no systemd on
  the host runs the container in nspawn's own cgroup (it makes ``payload`` and
  ``supervisor`` under it). Two containers started from one process would
  share those, and each container's systemd would remove the other's unit
  cgroups ("Failed at step CGROUP"). So each nspawn first moves itself into
  a cgroup named after its machine, in the hierarchies systemd uses (v1
  ``name=systemd`` and/or v2), removed again at teardown.
* **Running commands in it**: ``nsenter`` into the container's namespaces,
  with a clean environment (as root, or as a user through ``setpriv``).
* **Stopping**: SIGTERM to nspawn halts the container (systemd shuts down in
  order). If it does not stop in time, or when tearing down after a failure:
  SIGKILL to nspawn's process group and to the container's init (which is in
  a session of its own and would otherwise survive nspawn), then wait until
  no process is left in its PID namespace, and remove what a killed nspawn
  leaves in /run/systemd/nspawn. ``close`` checks all of it and fails loudly
  if anything is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import netns

CACHE = Path(os.environ.get("MICROSTACKD_E2E_CACHE", "/var/cache/microstackd-e2e"))
MIRROR = os.environ.get("MICROSTACKD_E2E_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
#: Bump when ``_finish_image`` changes what it does.
IMAGE_VERSION = 1
#: Units of the image that have no business in a test node.
MASKED = (
    "console-getty.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
#: What the host needs (Debian packages; scripts/setup.sh installs them).
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container"}
NSPAWN_RUN = Path("/run/systemd/nspawn")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MachineError(AssertionError):
    """A machine did not do what the suite needs (the message says what and why)."""


def unavailable_reason() -> str | None:
    """Why this host cannot run machines, or None."""
    reason = netns.unavailable_reason()
    if reason:
        return reason
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"missing Debian packages {' '.join(missing)} (scripts/setup.sh installs them)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    return None


# ---------------------------------------------------------------- image --


def recipe() -> dict[str, Any]:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(PACKAGES),
        "arch": arch,
        "masked": sorted(MASKED),
        "version": IMAGE_VERSION,
    }


def recipe_id(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Image:
    path: Path
    id: str
    #: Seconds this run spent building it; None when it was cached.
    built_in: float | None
    _lock: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def base_image() -> Image:
    """The cached image, built first if this recipe has none; held (shared
    lock) until ``release``."""
    spec = recipe()
    image_id = recipe_id(spec)
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = CACHE / f"rootfs-{image_id}"
    stamp = path / ".microstackd-e2e.json"
    built_in = None
    with _flock(CACHE / ".build.lock", fcntl.LOCK_EX):
        if not stamp.is_file():
            built_in = _build(path, spec)
        use = os.open(
            CACHE / f"rootfs-{image_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        fcntl.flock(use, fcntl.LOCK_SH)
        _prune(keep=path)
    return Image(path, image_id, built_in, use)


def _build(path: Path, spec: dict[str, Any]) -> float:
    for leftover in CACHE.glob(".build-*"):  # a build that was killed (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    if path.exists():
        shutil.rmtree(path)  # no stamp: half made
    tmp = CACHE / f".build-{path.name}-{os.getpid()}"
    started = time.monotonic()
    argv = [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--arch={spec['arch']}",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(tmp),
        MIRROR,
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=1200, env=netns.clean_env(), check=False
    )
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        log = (result.stdout + result.stderr)[-3000:]
        raise MachineError(f"debootstrap failed ({result.returncode}): {' '.join(argv)}\n{log}")
    _finish_image(tmp)
    seconds = time.monotonic() - started
    (tmp / ".microstackd-e2e.json").write_text(
        json.dumps({**spec, "mirror": MIRROR, "built_in_seconds": round(seconds, 1)}, indent=1)
    )
    os.rename(tmp, path)
    return seconds


def _finish_image(root: Path) -> None:
    """What every node shares, beyond debootstrap's."""
    # Each node gets its own host name and machine id (in its overlay).
    (root / "etc" / "hostname").unlink(missing_ok=True)
    (root / "etc" / "machine-id").write_text("")
    for unit in MASKED:
        link = root / "etc" / "systemd" / "system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for wants in (root / "etc" / "systemd" / "system").glob("*.wants"):
        for link in wants.iterdir():
            if link.name in MASKED:
                link.unlink()
    # The packages' downloads and indexes: nothing in a node installs from them.
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def _prune(keep: Path) -> None:
    """Remove the images of other recipes that no run is using."""
    for other in keep.parent.glob("rootfs-*"):
        if other == keep or not other.is_dir() or other.suffix == ".lock":
            continue
        lock = other.with_name(other.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # in use by another run
        else:
            shutil.rmtree(other, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


# -------------------------------------------------------------- machine --


def systemd_cgroups(name: str) -> list[Path]:
    """For each cgroup hierarchy systemd tracks processes in (v2, v1's
    name=systemd), the directory ``name`` under this process's cgroup there."""
    mounts: dict[str, str] = {}  # "" (v2) or "name=systemd" -> mount point
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, options = fields[-3], fields[-1].split(",")
        if fstype == "cgroup2":
            mounts.setdefault("", fields[4])
        elif fstype == "cgroup" and "name=systemd" in options:
            mounts.setdefault("name=systemd", fields[4])
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in mounts:
            found.append(Path(mounts[controllers] + path.rstrip("/")) / name)
    return found


def remove_cgroup(path: Path) -> None:
    """rmdir a cgroup and everything under it (each must be empty of processes)."""
    if not path.is_dir():
        return
    for parent, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(parent, d))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_pid_ns(ns: str) -> list[int]:
    """Live processes (from the host's view) whose PID namespace is ``ns``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pid_ns(int(entry)) == ns and netns.pid_alive(int(entry)):
            found.append(int(entry))
    return found


def mounts_naming(path: Path) -> list[str]:
    """Every mount, in any mount namespace, whose line names ``path``."""
    needle = str(path)
    seen: set[str] = set()
    lines = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            text = Path(f"/proc/{entry}/mountinfo").read_text()
        except OSError:
            continue
        lines += [f"{ns} {line}" for line in text.splitlines() if needle in line]
    return lines


class Machine:
    """One node: a container booted from the image with its own overlay."""

    def __init__(
        self,
        host: netns.Host,
        image: Image,
        workdir: Path,
        binds: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.host = host
        self.name = host.name
        self.address = host.address
        #: nspawn's name for it (/run/systemd/nspawn/propagate/NAME): unique per run.
        self.machine = host.ns
        self.image = image
        self.dir = workdir / f"machine-{host.name}"
        self.upper = self.dir / "upper"
        self.work = self.dir / "work"
        self.root = self.dir / "root"
        self.log_path = self.dir / "nspawn.log"
        self.binds = list(binds)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.pid_ns: str | None = None
        self.started_at = 0.0
        #: Seconds from starting nspawn to systemd's "boot finished", per boot.
        self.boot_seconds: list[float] = []
        self._lock_file = ""
        self._log: Any = None
        self.cgroups = systemd_cgroups(self.machine)
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        etc = self.upper / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(self.name + "\n")
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.address}, init={self.init_pid})"

    # ------------------------------------------------------------ boot --

    def start(self) -> None:
        """Start the container (returns at once; ``wait_booted`` waits)."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            raise MachineError(f"{self.name} is already running")
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            f"--machine={self.machine}",
            f"--directory={self.root}",
            "--boot",
            f"--network-namespace-path=/run/netns/{self.host.ns}",
            "--console=read-only",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            *(f"--bind-ro={src}:{dst}" for src, dst in self.binds),
        ]
        # Into its own cgroups, then the overlay, then nspawn (same process).
        wrapper = (
            'for d in $MST_CGROUPS; do mkdir -p "$d" && echo $$ > "$d/cgroup.procs" || exit 1; done'
            " && unset MST_CGROUPS"
            ' && mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"'
            ' && shift 4 && exec "$@"'
        )
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", wrapper, "sh",
            str(self.image.path), str(self.upper), str(self.work), str(self.root), *nspawn,
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        self._log.write(f"### {' '.join(argv)}\n".encode())
        self._log.flush()
        self.started_at = time.monotonic()
        self.nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=netns.clean_env({"MST_CGROUPS": " ".join(map(str, self.cgroups))}),
            start_new_session=True,
        )
        self.init_pid = self.pid_ns = None

    def _find_init(self, deadline: float) -> int:
        assert self.nspawn is not None
        ours = _pid_ns(os.getpid())
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise MachineError(
                    f"systemd-nspawn for {self.name} exited {self.nspawn.returncode}\n{self.log()}"
                )
            for task in Path(f"/proc/{self.nspawn.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    for child in (task / "children").read_text().split():
                        ns = _pid_ns(int(child))
                        if ns is not None and ns != ours:
                            self.pid_ns = ns
                            root = os.stat(f"/proc/{child}/root")
                            self._lock_file = f"inode-{root.st_dev}:{root.st_ino}"
                            return int(child)
            time.sleep(0.05)
        raise MachineError(f"{self.name}: no container init within the time\n{self.log()}")

    def wait_booted(self, timeout: float = 120) -> float:
        """Wait until systemd finished booting; return the seconds since start."""
        deadline = time.monotonic() + timeout
        self.init_pid = self._find_init(deadline)
        private = Path(f"/proc/{self.init_pid}/root/run/systemd/private")
        netns.wait_for(private.exists, deadline - time.monotonic(), f"{self.name}'s systemd")
        result = self.run(
            ["systemctl", "is-system-running", "--wait"],
            timeout=max(1.0, deadline - time.monotonic()),
        )
        seconds = time.monotonic() - self.started_at
        state = result.stdout.strip()
        if state not in ("running", "degraded"):
            raise MachineError(f"{self.name} booted {state!r}\n{result.stderr}\n{self.log()}")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout
            units = [line.split()[0] for line in failed.splitlines() if line.strip()]
            why = self.run(
                ["systemctl", "status", "--no-pager", "--lines=20", "--full", *units]
            ).stdout
            raise MachineError(f"{self.name} booted degraded; failed units:\n{failed}{why}")
        self.boot_seconds.append(seconds)
        return seconds

    def boot(self, timeout: float = 120) -> float:
        self.start()
        return self.wait_booted(timeout)

    def log(self, tail: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- no nspawn log for {self.name}"
        return f"--- {self.log_path} (last lines)\n" + "\n".join(lines[-tail:])

    # -------------------------------------------------------- commands --

    def argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        if self.init_pid is None:
            raise MachineError(f"{self.name} is not running")
        enter = ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wd"]
        env = ["env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "NO_COLOR=1",
               "COLUMNS=200", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]  # fmt: skip
        if user is None:
            return [*enter, *env, "HOME=/root", *argv]
        become = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return [*enter, *env, f"HOME=/home/{user}", *become, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input: str | None = None,
        check: bool = False,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container (as root, or as ``user``); output captured."""
        result = subprocess.run(
            self.argv(argv, user),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"`{' '.join(argv)}` on {self.name} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run(["systemctl", *args], check=check, timeout=120).stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "--property=" + ",".join(properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """``journalctl -o json ARGS``, one dict per entry."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # ------------------------------------------------------------ stop --

    def stop(self, timeout: float = 60) -> None:
        """Halt the container in order (SIGTERM to nspawn), or kill it when it
        does not stop in time; either way, return once nothing of it is left."""
        proc = self.nspawn
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL nspawn's process group and the container's init; wait until
        no process is left in its PID namespace; remove what nspawn left."""
        proc = self.nspawn
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if self.init_pid is not None and self.pid_ns and _pid_ns(self.init_pid) == self.pid_ns:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)  # takes its whole PID namespace along
        if self.pid_ns:
            netns.wait_for(
                lambda: not processes_in_pid_ns(self.pid_ns or ""),
                10,
                f"the processes of {self.name}'s PID namespace to end",
            )
        shutil.rmtree(NSPAWN_RUN / "propagate" / self.machine, ignore_errors=True)
        for cgroup in self.cgroups:
            remove_cgroup(cgroup)
        if self._lock_file:
            (NSPAWN_RUN / "locks" / self._lock_file).unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.init_pid = None

    def leftovers(self) -> list[str]:
        """What of this machine is still there (nothing, after ``stop``)."""
        left = []
        if self.nspawn is not None and self.nspawn.poll() is None:
            left.append(f"systemd-nspawn (pid {self.nspawn.pid}) still runs")
        if self.pid_ns and (pids := processes_in_pid_ns(self.pid_ns)):
            left.append(f"processes {pids} in its PID namespace {self.pid_ns}")
        for path in (self.root, self.upper):
            left += [f"mount: {line}" for line in mounts_naming(path)]
        left += [f"cgroup {cgroup}" for cgroup in self.cgroups if cgroup.exists()]
        if (NSPAWN_RUN / "propagate" / self.machine).exists():
            left.append(f"{NSPAWN_RUN}/propagate/{self.machine}")
        if self._lock_file and (NSPAWN_RUN / "locks" / self._lock_file).exists():
            left.append(f"{NSPAWN_RUN}/locks/{self._lock_file}")
        return left

    def close(self) -> None:
        """Teardown: stop it, check nothing is left, remove its directory."""
        failure = ""
        try:
            self.stop(timeout=30)
        except Exception as exc:  # still look at what is left, and say both
            failure = f"stopping it failed: {exc}; "
        left = self.leftovers()
        if failure or left:
            raise MachineError(f"{self.name}: {failure}left behind: {'; '.join(left) or 'nothing'}")
        shutil.rmtree(self.dir, ignore_errors=True)
