"""Service managers.

The process manager runs real child processes. systemd and snapd do not run
here, so `systemctl`, `snapctl` and `journalctl` are fake executables first
on PATH that record their argv and answer from a scripted state file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.node import services
from microstackd.node.services import (
    ProcessManager,
    ServiceSpec,
    SnapManager,
    SystemdManager,
    make_manager,
)

PY = sys.executable
SH = "/bin/sh"


def sh(name: str, script: str, **kw: Any) -> ServiceSpec:
    return ServiceSpec(name, (SH, "-c", script), **kw)


def pid_of(manager: ProcessManager, spec: ServiceSpec) -> int:
    """The pid of spec's child, which the test expects to exist."""
    pid = manager.pid(spec)
    assert pid is not None, f"{spec.name} has no child process"
    return pid


def alive(pid: int) -> bool:
    """Is pid a live process (zombies are dead)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def _has_members(pgid: int, count: int) -> bool:
    return len(group_members(pgid)) == count


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def log_text(manager: ProcessManager, spec: ServiceSpec) -> str:
    return manager.log_path(spec.name).read_text()


# -- process manager ----------------------------------------------------------


def test_a_healthy_service_becomes_running_with_its_output_in_its_log(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    spec = sh("web", 'echo "hello $GREETING"; exec sleep 30', env={"GREETING": "world"})
    spec = ServiceSpec(spec.name, spec.argv, env=spec.env, ready_after=0.3)

    async def main() -> tuple[int, str]:
        manager = ProcessManager(log_dir)
        try:
            await manager.restart(spec)
            assert (await manager.status(spec)).state == "starting"
            started = time.monotonic()
            assert await manager.wait_ready(spec) == ServiceRecord("web", "running")
            assert time.monotonic() - started >= 0.2
            assert await manager.status(spec) == ServiceRecord("web", "running")
            return pid_of(manager, spec), await manager.log_tail(spec)
        finally:
            await manager.close()

    pid, tail = asyncio.run(main())
    assert "hello world" in tail
    assert not alive(pid)
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o750


def test_a_service_that_exits_fails_wait_ready_at_once_with_status_and_last_lines(
    tmp_path: Path,
) -> None:
    # 50 numbered lines, then one too long to quote whole, on stdout and stderr.
    spec = sh(
        "nova-compute",
        'seq 1 50; printf "%0500d\\n" 0 >&2; exit 1',
        start_timeout=30,
        ready_after=5,
    )

    async def main() -> tuple[errors.ServiceFailed, float, ServiceRecord]:
        manager = ProcessManager(tmp_path)
        try:
            await manager.restart(spec)
            started = time.monotonic()
            with pytest.raises(errors.ServiceFailed) as failed:
                await manager.wait_ready(spec)
            took = time.monotonic() - started
            return failed.value, took, await manager.status(spec)
        finally:
            await manager.close()

    error, took, status = asyncio.run(main())
    assert took < 2
    assert error.code == "ABORTED"
    head, *lines = error.message.split("\n")
    assert head == "nova-compute exited with status 1; last log lines:"
    assert len(lines) == 20
    assert lines[0] == "32" and lines[-2] == "50"
    assert len(lines[-1]) == 300 and lines[-1].startswith("000")
    assert status.state == "failed"
    assert status.message == error.message


def test_a_service_that_never_prints_its_ready_pattern_times_out(tmp_path: Path) -> None:
    spec = sh(
        "glance",
        "echo loading; exec sleep 30",
        ready_pattern=r"listening on \d+",
        ready_after=0,
        start_timeout=0.5,
    )

    async def main() -> str:
        manager = ProcessManager(tmp_path)
        try:
            await manager.restart(spec)
            started = time.monotonic()
            with pytest.raises(errors.ServiceFailed) as failed:
                await manager.wait_ready(spec)
            assert 0.4 < time.monotonic() - started < 2
            assert (await manager.status(spec)).state == "starting"
            return failed.value.message
        finally:
            await manager.close()

    assert asyncio.run(main()) == (
        "glance did not become ready within 0.5 s "
        "(no line matching 'listening on \\\\d+' in its log); last log lines:\nloading"
    )


def test_a_service_is_running_once_its_ready_pattern_appears(tmp_path: Path) -> None:
    spec = sh(
        "keystone",
        "echo booting; sleep 0.4; echo 'listening on 5000'; exec sleep 30",
        ready_pattern=r"listening on \d+",
        ready_after=0,
        start_timeout=10,
    )

    async def main() -> None:
        manager = ProcessManager(tmp_path)
        try:
            await manager.restart(spec)
            await asyncio.sleep(0.1)
            assert (await manager.status(spec)).state == "starting"
            started = time.monotonic()
            assert (await manager.wait_ready(spec)).state == "running"
            assert time.monotonic() - started > 0.15
        finally:
            await manager.close()

    asyncio.run(main())


def test_restart_replaces_the_child_with_a_new_one(tmp_path: Path) -> None:
    spec = sh("nova-api", "sleep 30 & exec sleep 30", ready_after=0)

    async def main() -> int:
        manager = ProcessManager(tmp_path)
        try:
            await manager.restart(spec)
            first = pid_of(manager, spec)
            await until(lambda: len(group_members(first)) == 2)
            await manager.restart(spec)
            second = manager.pid(spec)
            assert second is not None and second != first
            assert not alive(first) and group_members(first) == []
            assert (await manager.wait_ready(spec)).state == "running"
            return second
        finally:
            await manager.close()

    second = asyncio.run(main())
    assert not alive(second)
    assert log_text(ProcessManager(tmp_path), spec).count("] starting nova-api:") == 2


def test_a_crashed_service_is_restarted_after_a_back_off(tmp_path: Path) -> None:
    spec = sh("neutron", "echo started; exit 3", ready_after=0)

    async def main() -> str:
        manager = ProcessManager(tmp_path)  # the real back-off: 1 s, then 2 s
        try:
            await manager.restart(spec)
            started = time.monotonic()
            await until(lambda: log_text(manager, spec).count("started\n") == 1)
            await asyncio.sleep(0.2)
            status = await manager.status(spec)  # exited, waiting in back-off
            assert status.state == "failed"
            assert status.message == "neutron exited with status 3; last log lines:\nstarted"
            await until(lambda: log_text(manager, spec).count("started\n") == 2, timeout=3)
            assert 0.9 < time.monotonic() - started < 2
            return log_text(manager, spec)
        finally:
            await manager.close()

    log = asyncio.run(main())
    assert "neutron exited with status 3; restarting in 1 s" in log
    assert log.count("started\n") == 2


def test_a_service_that_keeps_exiting_before_it_is_ready_is_failed_while_it_restarts(
    tmp_path: Path,
) -> None:
    # nova-compute without its virt driver: it runs a while, logs why, exits 1,
    # is restarted, and never logs its ready line.
    spec = sh(
        "nova-compute",
        "echo 'Unable to load the virtualization driver: No module named libvirt'; sleep 0.2; "
        "exit 1",
        ready_pattern="Join ServiceGroup membership",
        ready_after=0,
    )

    async def main() -> tuple[ServiceRecord, list[ServiceRecord]]:
        manager = ProcessManager(tmp_path, backoff_base=0.05, backoff_cap=0.05)
        try:
            await manager.restart(spec)
            first = await manager.status(spec)
            await until(lambda: log_text(manager, spec).count("restarting in") >= 2)
            statuses: list[ServiceRecord] = []
            while not any("keeps exiting" in s.message for s in statuses):
                statuses.append(await manager.status(spec))
                assert len(statuses) < 500, statuses[-3:]
                await asyncio.sleep(0.01)
            return first, statuses
        finally:
            await manager.close()

    first, statuses = asyncio.run(main())
    assert first.state == "starting"  # not failed before it ever exited
    # Between two runs (dead child) or while the next run starts: failed, with why.
    assert {s.state for s in statuses} == {"failed"}
    assert all("Unable to load the virtualization driver" in s.message for s in statuses)
    looping = statuses[-1].message
    assert looping.startswith("nova-compute keeps exiting before it is ready"), looping
    assert "exited with status 1; last log lines:" in looping


def test_a_crash_after_being_ready_is_not_a_crash_loop(tmp_path: Path) -> None:
    # The first run crashes after its ready line, when the test says so; the
    # second stays up. (Timed crashes raced the reads on a loaded machine.)
    crashed, crash = tmp_path / "crashed", tmp_path / "crash"
    spec = sh(
        "glance",
        f"echo ready; [ -e {crashed} ] && exec sleep 30; "
        f"while [ ! -e {crash} ]; do sleep 0.02; done; touch {crashed}; exit 1",
        ready_pattern="ready",
        ready_after=0,
    )

    async def main() -> ServiceRecord:
        manager = ProcessManager(tmp_path, backoff_base=0.05, backoff_cap=0.05)
        try:
            await manager.restart(spec)
            await manager.wait_ready(spec)
            crash.touch()
            await until(lambda: log_text(manager, spec).count("restarting in") >= 1)
            await until(lambda: log_text(manager, spec).count("ready\n") >= 2)
            return await manager.status(spec)
        finally:
            await manager.close()

    # The new run printed its ready line: running again, the old exit forgiven.
    assert asyncio.run(main()).state == "running"


def test_stop_hooks_run_before_and_after_the_service_with_their_output_logged(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "trace"
    hook = f"echo $0 >> {trace}; echo hook $0 said this"
    spec = sh(
        "libvirtd",
        f"trap 'echo service-stopped >> {trace}; exit 0' TERM; sleep 30 & wait",
        pre_stop=((SH, "-c", hook, "destroy-domains"),),
        post_stop=((SH, "-c", hook, "kill-leftovers"), (SH, "-c", "exit 4")),
    )

    async def main() -> str:
        manager = ProcessManager(tmp_path / "logs")
        try:
            await manager.restart(spec)
            await until(lambda: len(group_members(pid_of(manager, spec))) == 2)
            await manager.stop(spec)
            stopped_again = trace.read_text()
            await manager.stop(spec)  # nothing runs: no hook either
            assert trace.read_text() == stopped_again
        finally:
            await manager.close()
        return log_text(manager, spec)

    log = asyncio.run(main())
    assert trace.read_text().split() == ["destroy-domains", "service-stopped", "kill-leftovers"]
    assert "hook destroy-domains said this" in log
    assert "exit 4' failed with status 4" in log  # a failing hook is noted, never raised


def test_teardown_hooks_run_when_stopped_for_good_never_at_a_restart(tmp_path: Path) -> None:
    """A restart (and an exit the manager restarts) keeps what the teardown
    would remove (the Neutron agents' namespaces); stop and close remove it."""
    trace = tmp_path / "trace"
    spec = sh(
        "neutron-l3-agent",
        "sleep 30 & wait",
        post_stop=((SH, "-c", f"echo post-stop >> {trace}"),),
        teardown=((SH, "-c", f"echo teardown >> {trace}"),),
    )
    other = sh("neutron-dhcp-agent", "sleep 30", teardown=((SH, "-c", f"echo t2 >> {trace}"),))

    async def main() -> None:
        manager = ProcessManager(tmp_path / "logs", backoff_base=0.05)
        try:
            await manager.restart(spec)
            await manager.restart(spec)
            pid = manager.pid(spec)
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)  # a crash: started again
            await until(lambda: log_text(manager, spec).count("] starting neutron-l3-agent") == 3)
            assert trace.read_text().split() == ["post-stop"]
            await manager.stop(spec)
            assert trace.read_text().split() == ["post-stop", "post-stop", "teardown"]
            await manager.restart(other)
        finally:
            await manager.close()

    asyncio.run(main())
    assert trace.read_text().split() == ["post-stop", "post-stop", "teardown", "t2"]


def test_the_back_off_doubles_up_to_its_cap(tmp_path: Path) -> None:
    spec = sh("placement", "exit 2")

    async def main() -> str:
        manager = ProcessManager(tmp_path, backoff_base=0.05, backoff_cap=0.2)
        try:
            await manager.restart(spec)
            await until(lambda: log_text(manager, spec).count("restarting in") >= 5)
        finally:
            await manager.close()
        return log_text(manager, spec)

    delays = [
        line.rsplit("restarting in ", 1)[1]
        for line in asyncio.run(main()).splitlines()
        if "restarting in" in line
    ]
    assert delays[:5] == ["0.05 s", "0.1 s", "0.2 s", "0.2 s", "0.2 s"]


def test_stop_ends_the_whole_process_group_and_it_stays_stopped(tmp_path: Path) -> None:
    spec = sh("cinder", "sleep 30 & sleep 30 & wait")

    async def main() -> None:
        manager = ProcessManager(tmp_path, backoff_base=0.05)
        try:
            await manager.restart(spec)
            pid = pid_of(manager, spec)
            await until(lambda: len(group_members(pid)) == 3)
            await manager.stop(spec)
            assert not alive(pid) and group_members(pid) == []
            await asyncio.sleep(0.3)  # no restart, however short the back-off
            assert await manager.status(spec) == ServiceRecord("cinder", "stopped")
            assert log_text(manager, spec).count("] starting cinder:") == 1
            with pytest.raises(errors.ServiceFailed, match="cinder is not running"):
                await manager.wait_ready(spec)
        finally:
            await manager.close()

    asyncio.run(main())


def test_close_kills_every_child_even_those_that_ignore_sigterm(tmp_path: Path) -> None:
    polite = sh("polite", "sleep 30 & wait")
    stubborn = sh("stubborn", "trap '' TERM; sleep 30 & wait")

    async def main() -> list[int]:
        manager = ProcessManager(tmp_path, stop_grace=0.3)
        await manager.restart(polite)
        await manager.restart(stubborn)
        pids = [pid_of(manager, polite), pid_of(manager, stubborn)]
        for pid in pids:
            await until(functools.partial(_has_members, pid, 2))
        started = time.monotonic()
        await manager.close()
        assert 0.25 < time.monotonic() - started < 3
        with pytest.raises(errors.ServiceFailed, match="shutting down"):
            await manager.restart(polite)
        return pids

    for pid in asyncio.run(main()):
        assert not alive(pid)
        assert group_members(pid) == []
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_missing_or_unexecutable_command_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "nova-conductor"
    not_executable = tmp_path / "heat-engine"
    not_executable.write_text("#!/bin/sh\n")

    async def main() -> list[str]:
        manager = ProcessManager(tmp_path / "logs")
        try:
            results = []
            for name, path in (("nova-conductor", missing), ("heat-engine", not_executable)):
                spec = ServiceSpec(name, (str(path), "--verbose"))
                with pytest.raises(errors.ServiceFailed) as failed:
                    await manager.restart(spec)
                status = await manager.status(spec)
                assert status == ServiceRecord(name, "failed", failed.value.message)
                results.append(failed.value.message)
            return results
        finally:
            await manager.close()

    assert asyncio.run(main()) == [
        f"nova-conductor: cannot run {missing}: No such file or directory",
        f"heat-engine: cannot run {not_executable}: Permission denied",
    ]


def test_children_left_by_a_killed_daemon_are_stopped_by_the_next(tmp_path: Path) -> None:
    spec = sh("orphan", "sleep 30 & sleep 30 & wait")
    killed_daemon = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from pathlib import Path
        from microstackd.node.services import ProcessManager, ServiceSpec

        async def main():
            manager = ProcessManager(Path(sys.argv[1]))
            spec = ServiceSpec("orphan", (sys.argv[2], "-c", sys.argv[3]))
            await manager.restart(spec)
            print(manager.pid(spec), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [PY, "-c", killed_daemon, str(tmp_path), SH, spec.argv[2]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    orphan = int(done.stdout)
    try:

        async def main() -> None:
            await until(lambda: len(group_members(orphan)) == 3)
            manager = ProcessManager(tmp_path)
            try:
                await manager.restart(spec)
                assert group_members(orphan) == []
                assert manager.pid(spec) != orphan
            finally:
                await manager.close()

        asyncio.run(main())
    finally:
        for pid in group_members(orphan):
            os.kill(pid, signal.SIGKILL)
    assert "left by a previous daemon" in log_text(ProcessManager(tmp_path), spec)


def test_a_stale_pid_file_never_kills_a_process_that_is_not_ours(tmp_path: Path) -> None:
    spec = sh("nova-compute", "exec sleep 30")
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (tmp_path / "nova-compute.pid").write_text(f"{stranger.pid}\n")

        async def main() -> None:
            manager = ProcessManager(tmp_path)
            try:
                await manager.restart(spec)
            finally:
                await manager.close()

        asyncio.run(main())
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# -- systemd and snap, with fake tools ----------------------------------------

FAKE_TOOL = """\
#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
tool = os.path.basename(sys.argv[0])
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps([tool, *sys.argv[1:]]) + "\\n")
with open(os.path.join(here, "state.json")) as f:
    state = json.load(f)
key = tool if tool == "journalctl" else tool + " " + sys.argv[1]
answer = state.get(key, {{"stderr": key + ": not scripted\\n", "rc": 99}})
if isinstance(answer, list):  # a sequence of answers; the last one repeats
    if len(answer) > 1:
        state[key] = answer[1:]
        with open(os.path.join(here, "state.json"), "w") as f:
            json.dump(state, f)
    answer = answer[0]
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("rc", 0))
"""


#: What a fake tool answers: its "stdout", "stderr" and "rc".
Answer = dict[str, str | int]


class FakeTools:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir

    def script(self, **answers: Answer | list[Answer]) -> None:
        """systemctl_is_active={"stdout", "stderr", "rc"} (or a list of them)
        answers `systemctl is-active`; journalctl=... answers journalctl."""
        state: dict[str, Answer | list[Answer]] = {}
        for key, answer in answers.items():
            tool, _, command = key.partition("_")
            state[f"{tool} {command.replace('_', '-')}".strip()] = answer
        (self.bin_dir / "state.json").write_text(json.dumps(state))

    def calls(self) -> list[list[str]]:
        path = self.bin_dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def remove(self, tool: str) -> None:
        (self.bin_dir / tool).unlink()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "snapctl", "journalctl"):
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.format(python=PY))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing real can be reached
    tools = FakeTools(bin_dir)
    tools.script()
    return tools


def out(text: str, rc: int = 0) -> Answer:
    return {"stdout": text, "rc": rc}


# A unit microstackd does not own (a distribution's): driven as it is.
NOVA = ServiceSpec("nova-compute", ("/usr/bin/nova-compute",), unit="nova-compute.service")
JOURNAL = out("Starting OpenStack Compute...\nTraceback (most recent call last):\nboom\n")
SYSTEMD_JOURNAL = [
    "journalctl",
    "-u",
    "nova-compute.service",
    "-n",
    "20",
    "--no-pager",
    "-o",
    "cat",
]
SHOW = [
    "systemctl",
    "show",
    "nova-compute.service",
    "--property=Result,ExecMainCode,ExecMainStatus",
]


def test_systemd_restart_and_stop_issue_systemctl_on_the_unit(fake: FakeTools) -> None:
    fake.script(systemctl_restart=out(""), systemctl_stop=out(""))
    custom = ServiceSpec("ovn", ("/usr/bin/ovn-northd",), unit="ovn-northd@1.service")
    # Its teardown runs once it is stopped, never at a restart.
    nova = dataclasses.replace(NOVA, teardown=(("systemctl", "teardown"),))

    async def main() -> None:
        manager = SystemdManager()
        await manager.restart(nova)
        await manager.restart(custom)
        await manager.stop(nova)
        await manager.close()

    asyncio.run(main())
    assert fake.calls() == [
        ["systemctl", "restart", "nova-compute.service"],
        ["systemctl", "restart", "ovn-northd@1.service"],
        ["systemctl", "stop", "nova-compute.service"],
        ["systemctl", "teardown"],
    ]


@pytest.mark.parametrize(
    ("raw", "state", "rc"),
    [
        ("active", "running", 0),
        ("activating", "starting", 3),
        ("reloading", "starting", 0),
        ("inactive", "stopped", 3),
        ("deactivating", "stopped", 3),
        ("unknown", "stopped", 4),
    ],
)
def test_systemd_states_map_onto_service_states(
    fake: FakeTools, raw: str, state: str, rc: int
) -> None:
    fake.script(systemctl_is_active=out(raw + "\n", rc))
    status = asyncio.run(SystemdManager().status(NOVA))
    assert status == ServiceRecord("nova-compute", state)
    assert fake.calls() == [["systemctl", "is-active", "nova-compute.service"]]


def test_a_failed_unit_reports_its_exit_status_and_journal_tail(fake: FakeTools) -> None:
    fake.script(
        systemctl_is_active=out("failed\n", 3),
        systemctl_show=out("Result=exit-code\nExecMainCode=1\nExecMainStatus=1\n"),
        journalctl=JOURNAL,
    )
    status = asyncio.run(SystemdManager().status(NOVA))
    assert status == ServiceRecord(
        "nova-compute",
        "failed",
        "nova-compute exited with status 1; last log lines:\n"
        "Starting OpenStack Compute...\nTraceback (most recent call last):\nboom",
    )
    assert fake.calls() == [
        ["systemctl", "is-active", "nova-compute.service"],
        SHOW,
        SYSTEMD_JOURNAL,
    ]


def test_systemd_wait_ready_polls_until_active(fake: FakeTools) -> None:
    fake.script(
        systemctl_is_active=[out("activating\n", 3), out("activating\n", 3), out("active\n")]
    )
    status = asyncio.run(SystemdManager(poll_interval=0.01).wait_ready(NOVA))
    assert status == ServiceRecord("nova-compute", "running")
    assert fake.calls() == [["systemctl", "is-active", "nova-compute.service"]] * 3


def test_systemd_wait_ready_raises_with_the_journal_when_the_unit_fails(fake: FakeTools) -> None:
    fake.script(
        systemctl_is_active=[out("activating\n", 3), out("failed\n", 3)],
        systemctl_show=out("Result=signal\nExecMainCode=2\nExecMainStatus=9\n"),
        journalctl=JOURNAL,
    )
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(SystemdManager(poll_interval=0.01).wait_ready(NOVA))
    assert failed.value.message == (
        "nova-compute was killed by SIGKILL; last log lines:\n"
        "Starting OpenStack Compute...\nTraceback (most recent call last):\nboom"
    )
    assert fake.calls()[-2:] == [SHOW, SYSTEMD_JOURNAL]


def test_systemd_wait_ready_gives_up_after_the_start_timeout(fake: FakeTools) -> None:
    fake.script(systemctl_is_active=out("activating\n", 3), journalctl=JOURNAL)
    # Long enough for the fake systemctl to answer at least once on a loaded
    # machine (0.3 s was not, at load 30).
    spec = ServiceSpec(
        "nova-compute", ("/usr/bin/nova-compute",), unit="nova-compute.service", start_timeout=3
    )
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(SystemdManager(poll_interval=0.05).wait_ready(spec))
    assert failed.value.message.startswith(
        "nova-compute did not become ready within 3 s (it is activating); last log lines:\n"
        "Starting OpenStack Compute..."
    )
    assert fake.calls()[-1] == SYSTEMD_JOURNAL


def test_a_failing_systemctl_raises_with_its_stderr(fake: FakeTools) -> None:
    fake.script(
        systemctl_restart={
            "stderr": "Failed to restart nova-compute.service: "
            "Unit nova-compute.service not found.\n",
            "rc": 5,
        }
    )
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(SystemdManager().restart(NOVA))
    assert failed.value.message == (
        "systemctl restart nova-compute.service failed with status 5: "
        "Failed to restart nova-compute.service: Unit nova-compute.service not found."
    )


def test_systemd_log_tail_reads_the_journal(fake: FakeTools) -> None:
    fake.script(journalctl=JOURNAL)
    tail = asyncio.run(SystemdManager().log_tail(NOVA, lines=2))
    assert tail == "Traceback (most recent call last):\nboom"
    assert fake.calls() == [
        ["journalctl", "-u", "nova-compute.service", "-n", "2", "--no-pager", "-o", "cat"]
    ]


SNAP_TABLE = """\
Service                  Startup  Current   Notes
microstack.nova-compute  enabled  {}    -
"""
SNAP_JOURNAL = [
    "journalctl",
    "-u",
    "snap.microstack.nova-compute.service",
    "-n",
    "20",
    "--no-pager",
    "-o",
    "cat",
]


def test_snap_restart_stop_and_status_use_snapctl(fake: FakeTools) -> None:
    fake.script(
        snapctl_restart=out(""),
        snapctl_stop=out(""),
        snapctl_services=[out(SNAP_TABLE.format("active")), out(SNAP_TABLE.format("inactive"))],
    )

    async def main() -> tuple[ServiceRecord, ServiceRecord]:
        manager = SnapManager()
        await manager.restart(NOVA)
        running = await manager.status(NOVA)
        await manager.stop(NOVA)
        stopped = await manager.status(NOVA)
        return running, stopped

    assert asyncio.run(main()) == (
        ServiceRecord("nova-compute", "running"),
        ServiceRecord("nova-compute", "stopped"),
    )
    assert fake.calls() == [
        ["snapctl", "restart", "microstack.nova-compute"],
        ["snapctl", "services", "microstack.nova-compute"],
        ["snapctl", "stop", "microstack.nova-compute"],
        ["snapctl", "services", "microstack.nova-compute"],
    ]


def test_snap_wait_ready_fails_with_the_journal_when_the_service_died(fake: FakeTools) -> None:
    fake.script(snapctl_services=out(SNAP_TABLE.format("inactive")), journalctl=JOURNAL)
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(SnapManager(poll_interval=0.01).wait_ready(NOVA))
    assert failed.value.message == (
        "nova-compute is not running (snapctl reports it inactive); last log lines:\n"
        "Starting OpenStack Compute...\nTraceback (most recent call last):\nboom"
    )
    assert fake.calls() == [["snapctl", "services", "microstack.nova-compute"], SNAP_JOURNAL]


def test_snap_without_journalctl_says_no_log_is_available(fake: FakeTools) -> None:
    fake.remove("journalctl")
    fake.script(snapctl_services=out(SNAP_TABLE.format("inactive")))
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(SnapManager().wait_ready(NOVA))
    assert failed.value.message == (
        "nova-compute is not running (snapctl reports it inactive); "
        "no log is available (journalctl is not installed)"
    )
    tail = asyncio.run(SnapManager().log_tail(NOVA))
    assert tail == "no log is available (journalctl is not installed)"


def test_snap_errors_carry_snapctl_stderr(fake: FakeTools) -> None:
    other = ServiceSpec("nova-compute", ("/x",), snap_service="microstack.nova")
    fake.script(
        snapctl_restart={"stderr": 'error: unknown service: "microstack.nova"\n', "rc": 1},
        snapctl_services=out(SNAP_TABLE.format("active")),
    )
    with pytest.raises(errors.ServiceFailed, match='unknown service: "microstack.nova"'):
        asyncio.run(SnapManager().restart(other))
    with pytest.raises(errors.ServiceFailed, match="does not list microstack.nova$"):
        asyncio.run(SnapManager().status(other))
    assert fake.calls() == [
        ["snapctl", "restart", "microstack.nova"],
        ["snapctl", "services", "microstack.nova"],
    ]


# -- choosing a manager, specs ------------------------------------------------


def test_make_manager_by_name_and_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_manager("systemd", log_dir=tmp_path).kind == "systemd"
    assert make_manager("snap", log_dir=tmp_path).kind == "snap"
    assert make_manager("process", log_dir=tmp_path).kind == "process"
    with pytest.raises(errors.InvalidArgument, match="unknown service manager 'upstart'"):
        make_manager("upstart", log_dir=tmp_path)

    monkeypatch.delenv("SNAP", raising=False)
    monkeypatch.setattr(services, "SYSTEMD_RUNTIME_DIR", tmp_path / "absent")
    assert make_manager("auto", log_dir=tmp_path).kind == "process"
    monkeypatch.setattr(services, "SYSTEMD_RUNTIME_DIR", tmp_path)
    assert make_manager("auto", log_dir=tmp_path).kind == "systemd"
    monkeypatch.setenv("SNAP", "/snap/microstack/1")
    assert make_manager("auto", log_dir=tmp_path).kind == "snap"


def test_spec_defaults_and_validation() -> None:
    spec = ServiceSpec("nova-compute", ("/usr/bin/nova-compute",))
    assert spec.unit == "microstackd-nova-compute.service"
    assert spec.snap_service == "microstack.nova-compute"
    with pytest.raises(errors.InvalidArgument, match="invalid service name"):
        ServiceSpec("../etc/passwd", ("/bin/true",))
    with pytest.raises(errors.InvalidArgument, match="not a valid regular expression"):
        ServiceSpec("x", ("/bin/true",), ready_pattern="(")


def test_a_young_child_is_looked_at_often_then_at_the_poll_interval(tmp_path: Path) -> None:
    # wait_ready's pauses: short while a child is starting (a stand-in is
    # ready within tens of ms), the manager's poll interval afterwards.
    manager = ProcessManager(tmp_path, poll_interval=0.05)
    assert [manager.poll_pause(t) for t in (0.0, 0.2, 0.49, 0.5, 30.0)] == [
        0.01,
        0.01,
        0.01,
        0.05,
        0.05,
    ]
    assert ProcessManager(tmp_path, poll_interval=0.002).poll_pause(0.0) == 0.002


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_service_logs_are_0640_from_their_creation_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """The log is group-readable (the microstack group) and nothing more, from
    the first byte: the service itself sees its log (its stdout) at 0640."""
    spec = sh("web", "stat -L -c 'mode=%a' /proc/self/fd/1; exec sleep 30", ready_after=0.2)

    async def main() -> None:
        manager = ProcessManager(tmp_path / "logs")
        try:
            await manager.restart(spec)
            await manager.wait_ready(spec)
        finally:
            await manager.close()

    old = os.umask(umask)
    try:
        asyncio.run(main())
    finally:
        os.umask(old)
    log = tmp_path / "logs" / "web.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert "mode=640" in log.read_text()
