"""Where a `microstackctl join` spends its time: a timeline of one join.

    python bench/join_timeline.py [N]        # N token and N password joins (default 5)

Runs a control and one fresh compute per join on loopback (process manager,
stand-in services, any free ports), with microstackd and microstackctl
started through this file (by the benchmarks' fleet and the one launcher),
which wraps the join path's functions (``TIMED``) in timers before it runs
them. Prints the last join of each kind as a timeline (ms after the CLI
started) and the medians over the N joins. A measurement aid, not part of
the benchmark: the wrappers cost a little themselves, and a name that no
longer exists (the daemon's modules move) is reported and skipped.
"""

from __future__ import annotations

# Only what the wrapped CLI and daemons need before they start: the rest is
# imported by measure(), so that the CLI's own imports are timed as they are.
import functools
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from fleet import Daemon, Fleet

#: The functions timed, by module and qualified name, in the CLI and in the daemons.
TIMED = {
    "cli": [
        ("microstackctl.api", "Api.__init__"),
        ("microstackctl.api", "Api._stream"),
    ],
    # A function is wrapped where its callers look it up: a module attribute
    # they reach through the module (``bootstrap.run``), or the name they
    # imported (``fetch_bootstrap_certificate`` in member.join); methods on
    # their class.
    "daemon": [
        ("microstackd.member.join", "Member._bootstrap"),
        ("microstackd.member.join", "Member.follow"),
        ("microstackd.member.join", "fetch_bootstrap_certificate"),
        ("microstackd.member.bootstrap", "run"),
        ("microstackd.trust.kdf", "derive_verifier"),
        ("microstackd.peers.bootstrap", "BootstrapCall.hello"),
        ("microstackd.peers.bootstrap", "BootstrapCall.respond"),
        ("microstackd.peers.cluster", "ControlClient.enrol"),
        ("microstackd.peers.cluster", "AgentClient.apply_role"),
        ("microstackd.store", "Store.write_secrets"),
        ("microstackd.store", "Store.set_cluster"),
        ("microstackd.daemon", "Daemon.start_cluster_server"),
        ("microstackd.control.bootstrap", "Bootstrap.begin"),
        ("microstackd.control.bootstrap", "Bootstrap.finish"),
        ("microstackd.control.enrol", "Enrolments._configure_node"),
        ("microstackd.node.agent", "Agent.apply_role"),
        ("microstackd.node.agent", "_StandIns._start_all"),
        ("microstackd.node.render", "render_role"),
        ("microstackd.node.services.process", "ProcessManager.restart"),
        ("microstackd.node.services.process", "ProcessManager.wait_ready"),
    ],
}


class _Timer:
    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)

    def note(self, name: str, start: float, end: float) -> None:
        self._out.write(f"{start:.6f} {end:.6f} {os.getpid()} {name}\n")

    def wrap(self, module_name: str, qualname: str) -> bool:
        try:
            owner: Any = importlib.import_module(module_name)
            *path, attr = qualname.split(".")
            for part in path:
                owner = getattr(owner, part)
            fn = getattr(owner, attr)
        except (ImportError, AttributeError):
            return False
        import inspect  # after the command's own imports (the CLI's are timed)

        note = self.note
        if inspect.isasyncgenfunction(fn):

            async def agen(*a: Any, **k: Any) -> Any:
                start, first = time.time(), True
                async for item in fn(*a, **k):
                    if first:
                        note(qualname + " (to its first item)", start, time.time())
                        first = False
                    yield item

            wrapped: Any = agen
        elif inspect.iscoroutinefunction(fn):

            async def coro(*a: Any, **k: Any) -> Any:
                start = time.time()
                try:
                    return await fn(*a, **k)
                finally:
                    note(qualname, start, time.time())

            wrapped = coro
        elif inspect.isgeneratorfunction(fn):

            def gen(*a: Any, **k: Any) -> Any:
                start, first = time.time(), True
                for item in fn(*a, **k):
                    if first:
                        note(qualname + " (to its first item)", start, time.time())
                        first = False
                    yield item

            wrapped = gen
        else:

            def plain(*a: Any, **k: Any) -> Any:
                start = time.time()
                try:
                    return fn(*a, **k)
                finally:
                    note(qualname, start, time.time())

            wrapped = plain
        setattr(owner, attr, functools.wraps(fn)(wrapped))
        return True


def _run_wrapped(kind: str, argv: list[str]) -> None:
    """Run microstackd or microstackctl (``kind``) with the timers in place."""
    started = time.time()
    timer = _Timer(os.environ["JOIN_TIMELINE_LOG"])
    if kind == "cli":
        import click  # noqa: F401

        timer.note("import click", started, time.time())
        mark = time.time()
        from microstackctl import cli, cmd_join  # noqa: F401

        timer.note("import the join's modules (grpc, protobuf, ours)", mark, time.time())
    missing = [f"{m}.{q}" for m, q in TIMED[kind] if not timer.wrap(m, q)]
    if missing:
        print(f"join_timeline: not timed (not found): {', '.join(missing)}", file=sys.stderr)
    sys.argv = [kind, *argv]
    if kind == "cli":
        exit_now = os._exit

        def leave(code: int) -> None:
            timer.note("the whole command", started, time.time())
            exit_now(code)

        os._exit = leave  # type: ignore[assignment]
        cli.run()
    from microstackd import main

    main.main(argv)


def _cluster(root: Path, log: Path) -> tuple[Fleet, Callable[..., Daemon]]:
    """A fleet whose daemons and CLI run through this file (their timers on)."""
    from fleet import Daemon, Fleet

    class Timed(Daemon):
        def argv(self) -> list[str]:
            return [sys.executable, __file__, "--daemon", *super().argv()[1:]]

        def ctl_argv(self, *args: str) -> list[str]:
            return [sys.executable, __file__, "--cli", "--socket", str(self.socket), *args]

    os.environ["JOIN_TIMELINE_LOG"] = str(log)  # inherited by the daemons and the CLI
    fleet = Fleet(root)

    def daemon(name: str, host: str) -> Daemon:
        d = Timed(name, host, root / name)
        fleet.daemons.append(d)
        return d.start()

    return fleet, daemon


def _ctl(daemon: Daemon, *args: str) -> tuple[str, float, float]:
    start = time.time()
    out = daemon.ctl(*args).stdout
    return out, start, time.time()


def measure(joins: int) -> None:
    import json
    import shutil
    import signal
    import statistics
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="microstackd-timeline-"))
    log = root / "timeline.log"
    fleet, daemon = _cluster(root, log)
    password = root / "password"
    password.write_text("correct horse battery staple\n")
    medians: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = {}
    try:
        control = daemon("ctl", "127.0.0.1")  # on any free ports, read back
        init = ["init", "--role", "control", "--address", "127.0.0.1"]
        _ctl(control, *init, "--password-file", str(password))
        for i in range(joins + 1):  # the first of each kind warms caches
            for kind in ("token", "password"):
                name, host = f"{kind[:3]}-{i}", f"127.0.{31 if kind == 'token' else 32}.{i + 1}"
                node = daemon(name, host)
                if kind == "token":
                    made = _ctl(control, "add-node", name, "--format", "json")[0]
                    args = ["join", "--token", json.loads(made)["token"], "--address", host]
                else:
                    args = ["join", control.endpoint, "--password-file", str(password)]
                    args += ["--address", host]
                size = log.stat().st_size if log.exists() else 0
                _, start, end = _ctl(node, *args)
                time.sleep(0.3)  # the last notes of the daemons
                rows = _rows(log, size, start, control.pid)
                if i:
                    for at, took, who, what in rows:
                        medians.setdefault(kind, {}).setdefault((who, what), []).append((at, took))
                    medians[kind].setdefault(("", "wall"), []).append((0.0, (end - start) * 1000))
                if i == joins:
                    print(f"--- the last {kind} join: {(end - start) * 1000:.0f} ms wall")
                    for at, took, who, what in rows:
                        print(f"  {at:7.1f} ms  +{took:6.1f} ms  {who:7s} {what}")
                node.stop(signal.SIGTERM)
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    for kind, rows_by_name in medians.items():
        print(f"=== {kind} joins: medians of {joins} (start after the CLI's, duration)")
        ordered = sorted(
            rows_by_name.items(), key=lambda kv: statistics.median(v[0] for v in kv[1])
        )
        for (who, what), values in ordered:
            at = statistics.median(v[0] for v in values)
            took = statistics.median(v[1] for v in values)
            print(f"  {at:7.1f} ms  +{took:6.1f} ms  {who:7s} {what}  (x{len(values) // joins})")


def _rows(
    log: Path, offset: int, start: float, control_pid: int
) -> list[tuple[float, float, str, str]]:
    rows = []
    with open(log) as f:
        f.seek(offset)
        for line in f:
            a, b, pid, what = line.rstrip("\n").split(" ", 3)
            if float(a) < start - 0.01:
                continue
            who = "control" if int(pid) == control_pid else "node"
            if what.startswith(("import ", "the whole", "Api.")):
                who = "cli"
            rows.append(((float(a) - start) * 1000, (float(b) - float(a)) * 1000, who, what))
    return sorted(rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--daemon", "--cli"):
        _run_wrapped(sys.argv[1][2:], sys.argv[2:])
    else:
        measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
