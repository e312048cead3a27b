"""Where a `microstackctl join` spends its time: a timeline of one join.

    python bench/join_timeline.py [N]        # N token and N password joins (default 5)

Runs a control and one fresh compute per join on loopback (process manager,
stand-in services), with microstackd and microstackctl started through this
file, which wraps the join path's functions (``TIMED``) in timers before it
runs them. Prints the last join of each kind as a timeline (ms after the
CLI started) and the medians over the N joins. A measurement aid, not part
of the benchmark: the wrappers cost a little themselves, and a name that no
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
    import subprocess
    from pathlib import Path

#: The functions timed, by module and qualified name, in the CLI and in the daemons.
TIMED = {
    "cli": [
        ("microstackctl.api", "Api.__init__"),
        ("microstackctl.api", "Api._stream"),
    ],
    "daemon": [
        ("microstackd.member", "Member._bootstrap"),
        ("microstackd.member", "Member.follow"),
        ("microstackd.member", "_Credential.verifier"),
        ("microstackd.rpc.peer", "fetch_bootstrap_certificate"),
        ("microstackd.rpc.peer", "BootstrapCall.hello"),
        ("microstackd.rpc.peer", "BootstrapCall.respond"),
        ("microstackd.rpc.peer", "ControlClient.enrol"),
        ("microstackd.rpc.peer", "AgentClient.apply_role"),
        ("microstackd.store", "Store.write_secrets"),
        ("microstackd.store", "Store.set_cluster"),
        ("microstackd.daemon", "Daemon.start_cluster_server"),
        ("microstackd.control", "Control.begin_bootstrap"),
        ("microstackd.control", "Control.finish_bootstrap"),
        ("microstackd.control", "Control._configure_node"),
        ("microstackd.agent", "Agent.apply_role"),
        ("microstackd.node.render", "render_role"),
        ("microstackd.node.services", "ProcessManager.restart"),
        ("microstackd.node.services", "ProcessManager.wait_ready"),
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


class _Cluster:
    def __init__(self, root: Path, log: Path) -> None:

        self.root, self.log = root, log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "JOIN_TIMELINE_LOG": str(log)}

    def daemon(self, name: str, host: str, port: int) -> tuple[subprocess.Popen[bytes], Path]:
        import subprocess

        d = self.root / name
        d.mkdir()
        argv = [sys.executable, __file__, "--daemon", "--state-dir", str(d / "state")]
        argv += ["--socket", str(d / "sock"), "--listen", f"{host}:{port}", "--node-name", name]
        argv += ["--service-manager", "process", "--config-root", str(d / "etc")]
        with open(d / "log", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not (d / "sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(d / 'log').read_text()[-2000:]}")
            time.sleep(0.01)
        return proc, d / "sock"

    def ctl(self, socket: Path, *args: str) -> tuple[str, float, float]:
        import subprocess

        argv = [sys.executable, __file__, "--cli", "--socket", str(socket), *args]
        start = time.time()
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        if result.returncode:
            raise RuntimeError(f"microstackctl {' '.join(args)}: {result.stderr}")
        return result.stdout, start, time.time()

    def close(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def measure(joins: int) -> None:
    import json
    import shutil
    import signal
    import statistics
    import tempfile
    from pathlib import Path

    from fleet import free_port_pair

    root = Path(tempfile.mkdtemp(prefix="microstackd-timeline-"))
    cluster = _Cluster(root, root / "timeline.log")
    password = root / "password"
    password.write_text("correct horse battery staple\n")
    medians: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = {}
    try:
        port = free_port_pair("127.0.0.1")
        control, control_socket = cluster.daemon("ctl", "127.0.0.1", port)
        init = ["init", "--role", "control", "--address", "127.0.0.1"]
        cluster.ctl(control_socket, *init, "--password-file", str(password))
        for i in range(joins + 1):  # the first of each kind warms caches
            for kind in ("token", "password"):
                name, host = f"{kind[:3]}-{i}", f"127.0.{31 if kind == 'token' else 32}.{i + 1}"
                node, socket = cluster.daemon(name, host, port)
                if kind == "token":
                    made = cluster.ctl(control_socket, "add-node", name, "--format", "json")[0]
                    args = ["join", "--token", json.loads(made)["token"], "--address", host]
                else:
                    args = ["join", f"127.0.0.1:{port}", "--password-file", str(password)]
                    args += ["--address", host]
                size = cluster.log.stat().st_size if cluster.log.exists() else 0
                _, start, end = cluster.ctl(socket, *args)
                time.sleep(0.3)  # the last notes of the daemons
                rows = _rows(cluster.log, size, start, control.pid)
                if i:
                    for at, took, who, what in rows:
                        medians.setdefault(kind, {}).setdefault((who, what), []).append((at, took))
                    medians[kind].setdefault(("", "wall"), []).append((0.0, (end - start) * 1000))
                if i == joins:
                    print(f"--- the last {kind} join: {(end - start) * 1000:.0f} ms wall")
                    for at, took, who, what in rows:
                        print(f"  {at:7.1f} ms  +{took:6.1f} ms  {who:7s} {what}")
                node.send_signal(signal.SIGTERM)
                node.wait(30)
    finally:
        cluster.close()
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
