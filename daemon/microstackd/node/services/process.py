"""The ``process`` backend: each service a supervised child process, for a
sandbox on one machine. Each runs in its own process group with its output
appended to ``LOG_DIR/NAME.log``; it is restarted with capped exponential
back-off when it exits on its own, and every child is stopped when the daemon
shuts down (or, after a daemon was killed, when the next daemon starts the
service)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import signal
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from microstackd import errors
from microstackd.enrolment.backoff import Backoff
from microstackd.model import ServiceRecord
from microstackd.node.services import procfs
from microstackd.node.services.procfs import end_group, killpg, probe, signal_group
from microstackd.node.services.spec import (
    FAILED,
    RUNNING,
    SERVICE_MARKER,
    STARTING,
    STOPPED,
    TAIL_LINES,
    ServiceSpec,
    exit_head,
    open_log,
    read_tail,
    run_hooks,
    timeout_head,
    with_tail,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Child:
    """One run of a service."""

    proc: asyncio.subprocess.Process
    started: float  # loop time
    #: This run's output in the log: from log_start to log_end (None: EOF).
    log_start: int
    log_end: int | None = None
    scan_offset: int = 0
    scan_partial: bytes = b""
    pattern_seen: bool = False
    ready: bool = False
    #: The spec's ready_check has answered (for this run).
    probe_ok: bool = False


@dataclass(eq=False)
class _Service:
    spec: ServiceSpec
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    child: _Child | None = None
    supervisor: asyncio.Task[None] | None = None
    #: Why the service is failed when no child runs (could not be started).
    failure: str = ""
    #: Unexpected exits so far, and the message of the last one.
    crashes: int = 0
    last_crash: str = ""
    #: Exits since the service was last ready: >0 with no ready child is a
    #: crash loop, shown failed (with the last exit's log lines) until it is ready.
    unready_exits: int = 0
    orphans_checked: bool = False


#: ProcessManager.wait_ready: the pause between looks at a young child, and
#: for how long after its start it stays that short (seconds).
FAST_POLL, FAST_POLL_FOR = 0.01, 0.5


class ProcessManager:
    """Each service a supervised child process in its own process group."""

    kind = "process"

    def __init__(
        self,
        log_dir: Path,
        *,
        stop_grace: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        backoff_reset: float = 60.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._log_dir = Path(log_dir).absolute()
        self._stop_grace = stop_grace
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        #: A child that stayed up this long starts the back-off over.
        self._backoff_reset = backoff_reset
        self._poll_interval = poll_interval
        self._services: dict[str, _Service] = {}
        self._closed = False

    def poll_pause(self, since_start: float) -> float:
        """How long ``wait_ready`` sleeps between looks at a child that has
        been up ``since_start`` s: 10 ms for its first half second — a
        stand-in is ready in ~30 ms, and every join waits for two — then
        the manager's poll interval (50 ms)."""
        if since_start < FAST_POLL_FOR:
            return min(FAST_POLL, self._poll_interval)
        return self._poll_interval

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.pid"

    def _marker(self, name: str) -> str:
        return str(self.log_path(name))

    # -- the API --------------------------------------------------------------

    async def restart(self, spec: ServiceSpec) -> None:
        if self._closed:
            raise errors.ServiceFailed(f"cannot start {spec.name}: the daemon is shutting down")
        if not spec.argv:
            raise errors.ServiceFailed(f"{spec.name} has no command line to run")
        svc = self._services.setdefault(spec.name, _Service(spec))
        async with svc.lock:
            if self._closed:
                raise errors.ServiceFailed(f"cannot start {spec.name}: the daemon is shutting down")
            await self._halt(svc, final=False)
            svc.spec = spec
            svc.failure = ""
            svc.unready_exits = 0
            try:
                await self._spawn(svc)
            except errors.ServiceFailed as exc:
                svc.failure = exc.message
                raise
            svc.supervisor = asyncio.create_task(
                self._supervise(svc), name=f"supervise {spec.name}"
            )

    async def status(self, spec: ServiceSpec) -> ServiceRecord:
        svc = self._services.get(spec.name)
        if svc is None:
            return ServiceRecord(spec.name, STOPPED)
        await self._probe(svc)
        return self._status(svc)

    async def wait_ready(self, spec: ServiceSpec) -> ServiceRecord:
        svc = self._services.get(spec.name)
        if svc is None:
            raise errors.ServiceFailed(f"{spec.name} is not running: it was never started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.start_timeout
        crashes = svc.crashes
        while True:
            if svc.crashes != crashes:  # it exited and was already restarted
                raise errors.ServiceFailed(svc.last_crash)
            await self._probe(svc)
            status = self._status(svc)
            if status.state == RUNNING:
                return status
            if status.state == FAILED:
                raise errors.ServiceFailed(status.message)
            if status.state == STOPPED:
                raise errors.ServiceFailed(f"{spec.name} is not running: it was stopped")
            if loop.time() >= deadline:
                raise errors.ServiceFailed(self._timeout_message(svc))
            pause = self.poll_pause(loop.time() - svc.child.started if svc.child else 0.0)
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))

    async def stop(self, spec: ServiceSpec) -> None:
        svc = self._services.get(spec.name)
        if svc is None:
            return
        async with svc.lock:
            await self._halt(svc, final=True)
            svc.failure = ""

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*(self.stop(svc.spec) for svc in list(self._services.values())))

    async def log_tail(self, spec: ServiceSpec, lines: int = TAIL_LINES) -> str:
        path = self.log_path(spec.name)
        if not path.exists():
            return f"no log is available ({spec.name} has not been started)"
        return "\n".join(read_tail(path, 0, None, lines))

    def pid(self, spec: ServiceSpec) -> int | None:
        """The process id (= process group) of the service's current child."""
        svc = self._services.get(spec.name)
        if svc is None or svc.child is None or svc.child.proc.returncode is not None:
            return None
        return svc.child.proc.pid

    # -- state ----------------------------------------------------------------

    def _status(self, svc: _Service) -> ServiceRecord:
        name = svc.spec.name
        child = svc.child
        if child is None:
            if svc.failure:
                return ServiceRecord(name, FAILED, svc.failure)
            return ServiceRecord(name, STOPPED)
        if child.proc.returncode is not None:
            return ServiceRecord(name, FAILED, self._exit_message(svc, child))
        if self._is_ready(svc, child):
            return ServiceRecord(name, RUNNING)
        if svc.unready_exits:
            return ServiceRecord(name, FAILED, self._crash_loop_message(svc))
        return ServiceRecord(name, STARTING)

    def _crash_loop_message(self, svc: _Service) -> str:
        times = "once" if svc.unready_exits == 1 else f"{svc.unready_exits} times"
        return (
            f"{svc.spec.name} keeps exiting before it is ready ({times} so far; restarted "
            f"each time). The last time: {svc.last_crash}"
        )

    def _is_ready(self, svc: _Service, child: _Child) -> bool:
        if child.ready:
            return True
        spec = svc.spec
        if asyncio.get_running_loop().time() - child.started < spec.ready_after:
            return False
        if spec.ready_pattern and not self._pattern_seen(svc, child):
            return False
        if spec.ready_check and not child.probe_ok:
            return False
        child.ready = True
        svc.unready_exits = 0
        return True

    def _was_ready(self, svc: _Service, child: _Child) -> bool:
        """Whether a child that exited had been ready: seen ready, or alive
        past its readiness rules (its probe cannot be asked any more: a child
        that lived past the back-off reset counts as having answered)."""
        if child.ready:
            return True
        lived = asyncio.get_running_loop().time() - child.started
        if lived >= self._backoff_reset:
            return True
        spec = svc.spec
        if lived < spec.ready_after or spec.ready_check:
            return False
        return not spec.ready_pattern or self._pattern_seen(svc, child)

    async def _probe(self, svc: _Service) -> None:
        """Try the spec's ready_check once (at most 1 s) for a live child."""
        child = svc.child
        check = svc.spec.ready_check
        if not check or child is None or child.probe_ok or child.proc.returncode is not None:
            return
        child.probe_ok = await probe(check)

    def _pattern_seen(self, svc: _Service, child: _Child) -> bool:
        if child.pattern_seen:
            return True
        pattern = re.compile(svc.spec.ready_pattern)
        try:
            with open(self.log_path(svc.spec.name), "rb") as f:
                f.seek(child.scan_offset)
                while chunk := f.read(1 << 20):
                    child.scan_offset += len(chunk)
                    *complete, child.scan_partial = (child.scan_partial + chunk).split(b"\n")
                    if any(pattern.search(line.decode(errors="replace")) for line in complete):
                        child.pattern_seen = True
                        return True
        except OSError:
            return False
        if pattern.search(child.scan_partial.decode(errors="replace")):
            child.pattern_seen = True
        elif len(child.scan_partial) > 1 << 16:
            child.scan_partial = child.scan_partial[-4096:]
        return child.pattern_seen

    def _run_tail(self, svc: _Service, child: _Child) -> list[str]:
        return read_tail(self.log_path(svc.spec.name), child.log_start, child.log_end, TAIL_LINES)

    def _exit_message(self, svc: _Service, child: _Child) -> str:
        assert child.proc.returncode is not None
        head = exit_head(svc.spec.name, child.proc.returncode)
        return with_tail(head, self._run_tail(svc, child))

    def _timeout_message(self, svc: _Service) -> str:
        spec, child = svc.spec, svc.child
        if spec.ready_pattern and (child is None or not child.pattern_seen):
            reason = f"no line matching {spec.ready_pattern!r} in its log"
        elif spec.ready_check and (child is None or not child.probe_ok):
            reason = f"{spec.ready_check} did not answer"
        else:
            reason = f"it must stay up {spec.ready_after:g} s"
        lines = self._run_tail(svc, child) if child is not None else []
        return with_tail(timeout_head(spec, reason), lines)

    # -- children -------------------------------------------------------------

    def _note(self, name: str, text: str) -> None:
        """Append a line of our own to a service's log."""
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            with os.fdopen(open_log(self.log_path(name)), "a", encoding="utf-8") as f:
                f.write(f"[microstackd {stamp}] {text}\n")
        except OSError as exc:
            log.warning("cannot write to the log of %s: %s", name, exc)

    def _ensure_log_dir(self) -> None:
        if self._log_dir.is_dir():
            return
        try:
            self._log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            os.chmod(self._log_dir, 0o750)
        except OSError as exc:
            raise errors.ServiceFailed(
                f"cannot create the log directory {self._log_dir}: {exc.strerror or exc}"
            ) from exc

    async def _spawn(self, svc: _Service) -> None:
        """Start a child for the service; on success ``svc.child`` is it."""
        spec = svc.spec
        self._ensure_log_dir()
        if not svc.orphans_checked:
            await self._reap_orphans(spec)
            svc.orphans_checked = True
        self._note(spec.name, f"starting {spec.name}: {shlex.join(spec.argv)}")
        path = self.log_path(spec.name)
        try:
            fd = open_log(path)
        except OSError as exc:
            raise errors.ServiceFailed(
                f"{spec.name}: cannot open its log {path}: {exc.strerror or exc}"
            ) from exc
        try:
            start = os.fstat(fd).st_size
            env = {**os.environ, **spec.env, SERVICE_MARKER: self._marker(spec.name)}
            try:
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=fd,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"{spec.name}: cannot run {spec.argv[0]}: {exc.strerror or exc}"
                self._note(spec.name, message)
                raise errors.ServiceFailed(message) from exc
        finally:
            os.close(fd)
        loop = asyncio.get_running_loop()
        svc.child = _Child(proc, loop.time(), start, scan_offset=start)
        try:
            # The start time tells this process from a later one with the same pid.
            self._pid_path(spec.name).write_text(f"{proc.pid} {procfs.start_time(proc.pid)}\n")
        except OSError as exc:
            log.warning("cannot record the pid of %s: %s", spec.name, exc)

    async def _supervise(self, svc: _Service) -> None:
        try:
            await self._supervise_forever(svc)
        except Exception:  # a bug: say so rather than stop supervising silently
            log.exception("the supervisor of %s failed", svc.spec.name)
            svc.failure = svc.last_crash = (
                f"{svc.spec.name}: its supervisor failed; see the daemon log"
            )
            svc.crashes += 1

    async def _supervise_forever(self, svc: _Service) -> None:
        """Restart the service whenever it exits on its own, with back-off."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self._backoff_base, self._backoff_cap)
        while True:
            child = svc.child
            if child is not None:
                returncode = await child.proc.wait()
                child.log_end = procfs.size(self.log_path(svc.spec.name))
                if loop.time() - child.started >= self._backoff_reset:
                    backoff.reset()
                svc.last_crash = self._exit_message(svc, child)
                svc.crashes += 1
                svc.unready_exits = 0 if self._was_ready(svc, child) else svc.unready_exits + 1
                head = exit_head(svc.spec.name, returncode)
                log.warning("%s; restarting in %g s", head, backoff.delay)
                self._note(svc.spec.name, f"{head}; restarting in {backoff.delay:g} s")
                # Whatever it left behind in its group goes too.
                await end_group(child.proc.pid, loop.time() + self._stop_grace)
            await backoff.wait()
            try:
                await self._spawn(svc)
            except errors.ServiceFailed as exc:
                svc.child = None
                svc.failure = svc.last_crash = exc.message
                svc.crashes += 1
                svc.unready_exits += 1

    async def _halt(self, svc: _Service, *, final: bool) -> None:
        """Stop the supervisor, then the child and its whole process group;
        ``final`` (not a restart): its teardown hooks too."""
        task, svc.supervisor = svc.supervisor, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        child, svc.child = svc.child, None
        if child is None:
            return
        try:
            self._pid_path(svc.spec.name).unlink(missing_ok=True)
        except OSError:
            pass
        proc = child.proc
        name = svc.spec.name
        if proc.returncode is None:
            await run_hooks(name, svc.spec.pre_stop, lambda text: self._note(name, text))
        deadline = asyncio.get_running_loop().time() + self._stop_grace
        if proc.returncode is None:
            signal_group(proc, signal.SIGTERM)
            try:
                async with asyncio.timeout_at(deadline):
                    await proc.wait()
            except TimeoutError:
                signal_group(proc, signal.SIGKILL)
                await proc.wait()
            self._note(svc.spec.name, f"stopped {svc.spec.name}")
        await end_group(proc.pid, deadline)
        await run_hooks(name, svc.spec.post_stop, lambda text: self._note(name, text))
        if final:
            await run_hooks(name, svc.spec.teardown, lambda text: self._note(name, text))

    async def _reap_orphans(self, spec: ServiceSpec) -> None:
        """Stop the children a killed daemon left running for this service,
        with its stop hooks (what they left outside their group goes too)."""
        name = spec.name
        try:
            fields = self._pid_path(name).read_text().split()
            pgid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return
        marker = f"{SERVICE_MARKER}={self._marker(name)}".encode()
        members = procfs.group_members(pgid)
        # Its leader started when recorded (setproctitle, as gunicorn uses it,
        # overwrites a process's environment block), or a member bears our marker.
        recorded = len(fields) > 1 and fields[1] != "0" and procfs.start_time(pgid) == fields[1]
        if pgid <= 1 or not (recorded or any(marker in procfs.environ(pid) for pid in members)):
            return
        log.warning("stopping %s (process group %d) left running by a previous daemon", name, pgid)
        self._note(name, f"stopping {name} (process group {pgid}) left by a previous daemon")
        await run_hooks(name, spec.pre_stop, lambda text: self._note(name, text))
        killpg(pgid, signal.SIGTERM)
        await end_group(pgid, asyncio.get_running_loop().time() + self._stop_grace)
        await run_hooks(name, spec.post_stop, lambda text: self._note(name, text))
        # Its teardown too: what it kept for a restart belonged to a daemon
        # that is gone (and may live in a mount namespace this one cannot see).
        await run_hooks(name, spec.teardown, lambda text: self._note(name, text))
