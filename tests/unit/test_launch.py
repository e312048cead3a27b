"""launch, in-process against a stand-in for openstacksdk's connection: its
phases as they stream, the wait for a real SSH banner (a TCP server on
loopback), and each error naming its cause."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import cmd_launch
from microstackd import errors
from microstackd.cloud import CloudRef, Note, connection, launch
from microstackd.cloud.service import Cloud
from microstackd.model import StepState
from microstackd.wire import convert

CONSOLE = "\n".join(
    [
        "[    0.000000] Linux version 6.1.0-28-cloud-amd64",
        "\x1b[0;32mcirros-init: DHCP on eth0\x1b[0m",
        "",
        "cirros-init: config drive /dev/sr0: 1 public key(s)",
    ]
)


def _obj(**attrs: Any) -> SimpleNamespace:
    return SimpleNamespace(**attrs)


@dataclass
class _Cloud:
    """Enough of openstacksdk's proxies for launch; ``states`` are the
    server's (status, task_state, host, fault) as successive polls see them."""

    image_names: list[str] = field(default_factory=lambda: ["cirros"])
    computes: list[SimpleNamespace] = field(default_factory=list)
    states: list[tuple[str, str, str, str]] = field(default_factory=list)
    console: str = CONSOLE
    address: str = "127.0.0.1"
    created: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0

    def __post_init__(self) -> None:
        self.compute = self.image = self.network = self
        self._states: Iterator[tuple[str, str, str, str]] = iter(self.states)
        self._last = ("BUILD", "scheduling", "", "")

    # image
    def find_image(self, name: str) -> Any:
        return _obj(name=name, id=f"id-{name}") if name in self.image_names else None

    def images(self) -> list[Any]:
        return [_obj(name=n, id=f"id-{n}") for n in self.image_names]

    # compute
    def find_flavor(self, name: str) -> Any:
        return (
            _obj(name="m1.tiny", id="f1", vcpus=1, ram=128, disk=1) if name == "m1.tiny" else None
        )

    def flavors(self) -> list[Any]:
        return [self.find_flavor("m1.tiny")]

    def availability_zones(self, details: bool = False) -> list[Any]:
        return [_obj(name="nova"), _obj(name="internal")]

    def services(self, **query: str) -> list[Any]:
        return [s for s in self.computes if s.host == query.get("host", s.host)]

    def find_keypair(self, name: str) -> Any:
        return None

    def create_keypair(self, **attrs: str) -> None:
        pass

    def create_server(self, **attrs: Any) -> Any:
        self.created.append(attrs)
        return _obj(id="s1", name=attrs["name"])

    def get_server(self, server_id: str) -> Any:
        self.polls += 1
        self._last = next(self._states, self._last)
        status, task, host, fault = self._last
        return _obj(
            id=server_id,
            name="vm",
            status=status,
            task_state=task or None,
            compute_host=host or None,
            fault={"message": fault} if fault else None,
            addresses={"private": [{"addr": "10.233.0.5"}]},
        )

    def get_server_console_output(self, server_id: str, length: int | None = None) -> Any:
        lines = self.console.splitlines()
        return {"output": "\n".join(lines[-length:] if length else lines)}

    # network
    def find_network(self, name: str) -> Any:
        return _obj(name=name, id=f"net-{name}") if name in ("private", "public") else None

    def ports(self, **query: str) -> list[Any]:
        return [_obj(id="p1")]

    def ips(self, **query: str) -> list[Any]:
        return []

    def create_ip(self, **attrs: str) -> Any:
        return _obj(floating_ip_address=self.address, fixed_ip_address="10.233.0.5")

    def close(self) -> None:
        pass


def _compute(host: str, state: str = "up", status: str = "enabled", **extra: Any) -> Any:
    attrs = {
        "host": host,
        "state": state,
        "status": status,
        "availability_zone": "nova",
        "updated_at": "2026-12-01T17:00:00.000000",
        "disabled_reason": None,
        "is_forced_down": False,
        **extra,
    }
    return _obj(**attrs)


BOOTING = [
    ("BUILD", "scheduling", "", ""),
    ("BUILD", "scheduling", "", ""),
    ("BUILD", "networking", "node-1", ""),
    ("BUILD", "spawning", "node-1", ""),
    ("ACTIVE", "", "node-1", ""),
]


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "POLL", 0.01)
    monkeypatch.setattr(launch, "BANNER_TRY", 0.5)
    monkeypatch.setattr(launch, "REPEAT", 0.05)


@contextlib.asynccontextmanager
async def _sshd(banner: bytes | None) -> AsyncIterator[int]:
    """A TCP server on loopback that sends ``banner`` (None: closes at once)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if banner is not None:
            writer.write(banner)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _run(
    monkeypatch: pytest.MonkeyPatch,
    fake: _Cloud,
    banner: bytes | None = b"SSH-2.0-dropbear_2022.83\r\n",
    **request: Any,
) -> tuple[dict[str, Any], list[Note]]:
    monkeypatch.setattr(connection, "_connect", lambda ref: fake)
    notes: list[Note] = []

    async def progress(note: Note) -> None:
        notes.append(note)

    async def go() -> dict[str, Any]:
        async with _sshd(banner) as port:
            monkeypatch.setattr(launch, "SSH_PORT", port)
            service = Cloud(lambda: CloudRef("c"))
            try:
                return await service.run(
                    "launch",
                    {
                        "image": "cirros",
                        "name": "vm",
                        "public_key": "ssh-ed25519 AAAA k",
                        "ssh_timeout": 2,
                        **request,
                    },
                    progress,
                )
            finally:
                service.close()

    return asyncio.run(go()), notes


def test_launch_streams_its_phases_and_waits_for_the_ssh_banner(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    fake = _Cloud(computes=[_compute("node-1")], states=BOOTING)
    result, notes = _run(monkeypatch, fake, availability_zone="nova:node-1")
    assert fake.created[0]["availability_zone"] == "nova:node-1"
    phases = [(n.phase, n.state) for n in notes if n.phase]
    # Each phase starts (or waits), then ends done, in order.
    ended = [p for p, state in phases if state is StepState.DONE]
    assert ended == ["scheduling", "spawning", "floating-ip", "booting"]
    assert phases[0] == ("scheduling", StepState.RUNNING)
    assert ("spawning", StepState.WAITING) in phases
    done = {n.phase: n.message for n in notes if n.state is StepState.DONE}
    assert done["scheduling"].startswith("vm placed on node-1")
    assert done["spawning"].startswith("vm ACTIVE on node-1 after ")
    assert done["booting"].startswith("sshd up on 127.0.0.1:")
    assert "(SSH-2.0-dropbear_2022.83)" in done["booting"]
    assert result["ssh_ready"] is True
    assert result["ssh_banner"] == "SSH-2.0-dropbear_2022.83"
    assert result["floating_ip"] == "127.0.0.1" and result["host"] == "node-1"
    assert 0 <= result["active_after_seconds"] <= result["ssh_after_seconds"]
    assert result["message"] == "server vm is ACTIVE on node-1; sshd answers on 127.0.0.1"


def test_no_wait_skips_the_banner(monkeypatch: pytest.MonkeyPatch, fast: None) -> None:
    fake = _Cloud(states=BOOTING)
    result, notes = _run(monkeypatch, fake, banner=None, wait_ssh=False)
    assert notes[-1] == Note("not waited for sshd (--no-wait)", StepState.SKIPPED, "booting")
    assert result["ssh_ready"] is False and result["ssh_after_seconds"] == 0
    assert result["message"].endswith("its sshd was not waited for")


def _fails(monkeypatch: pytest.MonkeyPatch, fake: _Cloud, **request: Any) -> str:
    with pytest.raises(errors.CloudError) as failed:
        _run(monkeypatch, fake, **request)
    return failed.value.message


def test_no_image_says_cirros_is_missing_from_glance(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    message = _fails(monkeypatch, _Cloud(image_names=["other"]))
    assert message.startswith("no image 'cirros' in Glance (images: other)")
    assert "test-image" in message
    assert _fails(monkeypatch, _Cloud(), image="nope") == "unknown image 'nope' (images: cirros)"


def test_an_unknown_host_lists_the_hosts_there_are(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    fake = _Cloud(computes=[_compute("node-2"), _compute("node-1")])
    message = _fails(monkeypatch, fake, availability_zone="nova:node9")
    assert message == (
        "unknown host 'node9': Nova has no nova-compute there (compute hosts: node-1, node-2)"
    )
    assert not fake.created
    message = _fails(monkeypatch, fake, availability_zone="nowhere:node-1")
    assert message == "unknown availability zone 'nowhere' (zones: internal, nova)"


def test_a_host_whose_nova_compute_is_down_or_disabled_is_refused(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    fake = _Cloud(computes=[_compute("node-1", "down", is_forced_down=True)])
    message = _fails(monkeypatch, fake, availability_zone="nova:node-1")
    assert message.startswith(
        "host 'node-1' is down: its nova-compute service is down (forced down), last report "
        "2026-12-01T17:00:00"
    )
    fake = _Cloud(computes=[_compute("node-1", status="disabled", disabled_reason="drained")])
    message = _fails(monkeypatch, fake, availability_zone="nova:node-1")
    assert message == "host 'node-1' is disabled in Nova: drained"
    assert not fake.created


def test_a_boot_that_fails_carries_novas_fault(monkeypatch: pytest.MonkeyPatch, fast: None) -> None:
    fault = "Build of instance s1 aborted: Failed to allocate the network(s), not rescheduling."
    fake = _Cloud(states=[*BOOTING[:3], ("ERROR", "", "node-1", fault)])
    message = _fails(monkeypatch, fake)
    assert message == f"server vm failed to boot on node-1 (ERROR): {fault}"
    no_host = "No valid host was found. There are not enough hosts available."
    message = _fails(monkeypatch, _Cloud(states=[("ERROR", "", "", no_host)]))
    assert message == f"no capacity for server vm: {no_host}"


def test_a_guest_on_another_host_than_asked_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    fake = _Cloud(computes=[_compute("node-1")], states=[("BUILD", "spawning", "node-2", "")])
    message = _fails(monkeypatch, fake, availability_zone="nova:node-1")
    assert message == "server vm landed on node-2, not on node-1"


def test_a_host_that_goes_down_while_the_server_builds_fails_the_wait(
    monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    service = _compute("node-1")
    fake = _Cloud(computes=[service], states=[("BUILD", "spawning", "node-1", "")])

    def poll(server_id: str, get: Any = fake.get_server) -> Any:
        if fake.polls == 3:  # nova-compute stopped reporting: Nova says down
            service.state = "down"
        return get(server_id)

    monkeypatch.setattr(fake, "get_server", poll)
    message = _fails(monkeypatch, fake, availability_zone="nova:node-1")
    assert message.startswith(
        "host 'node-1' went down while server vm was being built: its nova-compute service "
        "is down, last report 2026-12-01T17:00:00"
    )
    assert message.endswith("; the server is left in BUILD")


@pytest.mark.parametrize(
    ("banner", "why"),
    [
        (None, "the connection closed without an SSH banner"),
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            "not an SSH server: it sent 'HTTP/1.1 400 Bad Request'",
        ),
    ],
)
def test_no_sshd_within_the_time_shows_the_console_logs_last_lines(
    monkeypatch: pytest.MonkeyPatch, fast: None, banner: bytes | None, why: str
) -> None:
    fake = _Cloud(states=BOOTING)
    with pytest.raises(errors.CloudError) as failed:
        _run(monkeypatch, fake, banner=banner, ssh_timeout=0.3)
    message = failed.value.message
    head, _, console = message.partition("\n")
    assert head.startswith("server vm is ACTIVE but its sshd did not answer on 127.0.0.1:")
    assert f"within 0.3 s (last try: {why}); the server is left running." in head
    # Its last non-empty lines, without terminal escapes.
    assert console.splitlines() == [
        "The last lines of its console log:",
        "  [    0.000000] Linux version 6.1.0-28-cloud-amd64",
        "  cirros-init: DHCP on eth0",
        "  cirros-init: config drive /dev/sr0: 1 public key(s)",
    ]


def test_the_banner_probe_reads_past_other_lines_and_names_a_refusal() -> None:
    async def go() -> tuple[tuple[str, str], tuple[str, str]]:
        async with _sshd(b"hello\r\nSSH-2.0-OpenSSH_9.2\r\n") as port:
            found = await launch.ssh_banner("127.0.0.1", port, 2)
        # The same port once nothing listens there any more.
        return found, await launch.ssh_banner("127.0.0.1", port, 2)

    found, refused = asyncio.run(go())
    assert found == ("SSH-2.0-OpenSSH_9.2", "")
    assert refused == ("", "connection refused")


# ------------------------------------------------------------- the CLI --


def _result(ssh_ready: bool) -> dict[str, Any]:
    """What launch returns (as the CLI's JSON shows it, but for ``ssh``)."""
    return {
        "name": "vm",
        "id": "s1",
        "host": "node-1",
        "status": "ACTIVE",
        "addresses": {"private": ["10.233.0.5", "10.20.20.7"]},
        "floating_ip": "10.20.20.7",
        "ssh_ready": ssh_ready,
        "ssh_banner": "SSH-2.0-dropbear_2022.83" if ssh_ready else "",
        "active_after_seconds": 11.5,
        "ssh_after_seconds": 21.0 if ssh_ready else 0.0,
    }


def _stream(ssh_ready: bool) -> list[pb.LaunchResponse]:
    def event(step: str, state: pb.StepState, message: str) -> pb.Event:
        return pb.Event(node="ctl", step=step, state=state, message=message)

    result = convert.launch_result_to_pb(_result(ssh_ready))
    booting = (
        event("booting", pb.STEP_STATE_DONE, "sshd up on 10.20.20.7:22 (SSH-2.0-dropbear_2022.83)")
        if ssh_ready
        else event("booting", pb.STEP_STATE_SKIPPED, "not waited for sshd (--no-wait)")
    )
    final = event("launch", pb.STEP_STATE_DONE, "server vm is ACTIVE on node-1")
    final.final = True
    return [
        pb.LaunchResponse(event=event("scheduling", pb.STEP_STATE_DONE, "vm placed on node-1")),
        pb.LaunchResponse(event=booting),
        pb.LaunchResponse(event=final, result=result),
    ]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
@pytest.mark.parametrize("ssh_ready", [True, False])
def test_the_cli_prints_the_ssh_line_only_once_sshd_answered(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    ssh_ready: bool,
) -> None:
    sent: list[pb.LaunchRequest] = []

    class Api:
        def launch(self, request: pb.LaunchRequest) -> Iterator[pb.LaunchResponse]:
            sent.append(request)
            return iter(_stream(ssh_ready))

    key = tmp_path / ".ssh" / "id_microstack"
    monkeypatch.setattr(cmd_launch, "KEY_PATH", key)
    monkeypatch.setattr(cmd_launch, "connect", lambda socket: Api())
    for fmt in ("text", "json"):
        cmd_launch.launch(None, "cirros", "vm", "", "nova:node-1", "", "", not ssh_ready, 60, fmt)
        out = capsys.readouterr().out
        if fmt == "json":
            ssh = f"ssh -i {key} cirros@10.20.20.7"
            assert json.loads(out) == {**_result(ssh_ready), "ssh": ssh}
            continue
        lines = out.splitlines()
        assert any(line.split()[:2] == ["✓", "scheduling"] for line in lines), out
        if ssh_ready:
            assert f"ssh      ssh -i {key} cirros@10.20.20.7" in lines, out
        else:
            assert not any(line.startswith("ssh ") for line in lines), out
            assert lines[-1] == (
                f"sshd     not waited for (--no-wait); once the guest has booted: "
                f"ssh -i {key} cirros@10.20.20.7"
            )
    assert [(r.no_wait, r.ssh_timeout_seconds) for r in sent] == [(not ssh_ready, 60)] * 2
    assert sent[0].public_key.startswith("ssh-ed25519 ")


def test_the_launch_servicer_streams_each_phase_as_its_step() -> None:
    from microstackd.api.servicers.admin import AdminServicer

    asked: list[dict[str, Any]] = []

    class Members:
        async def launch(self, fields: dict[str, Any], progress: Any) -> dict[str, Any]:
            asked.append(fields)
            await progress(Note("image cirros (id-cirros)"))
            await progress(Note("vm: BUILD, spawning (3 s)", StepState.WAITING, "spawning"))
            await progress(Note("not waited for sshd (--no-wait)", StepState.SKIPPED, "booting"))
            return {"name": "vm", "status": "ACTIVE", "message": "server vm is ACTIVE on n1"}

    none: Any = None
    servicer = AdminServicer("ctl", none, none, none, cast(Any, Members()), none, none, none, none)
    request = pb.LaunchRequest(image="cirros", no_wait=True)

    async def go() -> list[pb.LaunchResponse]:
        return [r async for r in servicer.Launch(request, none)]

    responses = asyncio.run(go())
    assert asked[0]["wait_ssh"] is False and asked[0]["ssh_timeout"] == 0
    steps = [(r.event.step, r.event.state, r.event.final) for r in responses]
    assert steps == [
        ("launch", pb.STEP_STATE_RUNNING, False),
        ("spawning", pb.STEP_STATE_WAITING, False),
        ("booting", pb.STEP_STATE_SKIPPED, False),
        ("launch", pb.STEP_STATE_DONE, True),
    ]
    assert responses[-1].event.message == "server vm is ACTIVE on n1"
    assert responses[-1].result.name == "vm" and not responses[-1].result.ssh_ready
