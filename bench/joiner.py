"""A lightweight simulated compute node, and the reference client.

A simulated node does what ``microstackd.member.join.Member`` does over the
wire, with the product's own bootstrap client (``microstackd.member.bootstrap``):
fetch the bootstrap certificate, the SPAKE2 exchange bound to it, a CSR for a
fresh P-256 key, the certificate issued by the control, then
``ClusterService.Enrol`` over mutual TLS with that key, until the final
event. It announces ``cluster_port=0`` in its hello, so the control skips
configure-node ("runs no agent"): no services to start.

What it leaves out, and why:

* the KDF: the verifier is derived once per run (same password and salt give
  the same verifier) and the KDF is timed on its own;
* the joiner's own persistence (a real joiner writes three key files and two
  SQLite transactions with fsync): the simulated node keeps its key in memory.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from microstackd import errors
from microstackd.enrolment.backoff import Backoff
from microstackd.member import bootstrap as joiner_bootstrap
from microstackd.model import ClusterRecord, EventRecord, NodeCredentials, ServiceRecord
from microstackd.peers.bootstrap import BootstrapCall, fetch_bootstrap_certificate
from microstackd.peers.cluster import ControlClient
from microstackd.trust import kdf as trust_kdf
from microstackd.trust.exchange import Hello
from microstackd.wire.options import CHANNEL_OPTIONS

PROBE_NAME = "bench-probe"

#: The phases ``bootstrap`` records, in order.
BOOTSTRAP_PHASES = ("fetch_cert", *joiner_bootstrap.PHASES)


@dataclass(frozen=True)
class Secret:
    """The cluster password's verifier, derived once per run."""

    verifier: bytes
    kdf: trust_kdf.KdfParams

    def to_json(self) -> dict[str, object]:
        k = self.kdf
        return {
            "verifier": self.verifier.hex(),
            "salt": k.salt.hex(),
            "log2_n": k.log2_n,
            "r": k.r,
            "p": k.p,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Secret:
        kdf = trust_kdf.KdfParams(
            salt=bytes.fromhex(str(data["salt"])),
            log2_n=int(str(data["log2_n"])),
            r=int(str(data["r"])),
            p=int(str(data["p"])),
        )
        return cls(bytes.fromhex(str(data["verifier"])), kdf)


async def probe_kdf(host: str, port: int) -> trust_kdf.KdfParams:
    """The control's KDF parameters: send a hello, read the challenge, hang up.

    No guess is spent: the control counts a failure only when a response
    does not verify.
    """
    cert_pem = await fetch_bootstrap_certificate(host, port)
    hello = Hello(node_name=PROBE_NAME, address="127.0.0.1", hostname=PROBE_NAME)
    async with BootstrapCall(host, port, cert_pem) as call:
        challenge = await call.hello(hello, 0)
    return challenge.kdf


def derive(password: str, kdf: trust_kdf.KdfParams) -> tuple[Secret, float]:
    """Derive the verifier as a joiner does; return it and the seconds it took."""
    started = time.perf_counter()
    verifier = trust_kdf.derive_verifier(password, kdf)
    return Secret(verifier, kdf), time.perf_counter() - started


@dataclass
class Member:
    """A simulated node once it holds its certificate."""

    name: str
    creds: NodeCredentials
    cluster: ClusterRecord


@dataclass
class JoinResult:
    name: str
    ok: bool = False
    error: str = ""
    #: time.time() at the start and end of the whole join.
    start: float = 0.0
    end: float = 0.0
    #: seconds per phase (see ``bootstrap`` and ``enrol``).
    phases: dict[str, float] = field(default_factory=dict)
    #: (seq, time.time() on arrival) of every event of the control's stream.
    events: list[tuple[int, float]] = field(default_factory=list)
    final_state: str = ""
    #: Bootstrap attempts, and how many of them the control refused as busy.
    attempts: int = 0
    busy: int = 0
    #: The simulated node once it holds its certificate (not in the JSON).
    member: Member | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "error": self.error,
            "start": self.start,
            "end": self.end,
            "phases": self.phases,
            "events": self.events,
            "final_state": self.final_state,
            "attempts": self.attempts,
            "busy": self.busy,
        }


async def bootstrap(
    host: str,
    port: int,
    name: str,
    address: str,
    secret: Secret,
    phases: dict[str, float],
    agent_port: int = 0,
    pinned: dict[tuple[str, int], bytes] | None = None,
) -> Member:
    """The password bootstrap, through the daemon's own client, with the
    verifier given; ``pinned``: the certificate a busy control presented
    before, pinned again (as ``Member`` does) instead of fetched."""
    t = time.perf_counter()
    cert_pem = (pinned or {}).get((host, port)) or await fetch_bootstrap_certificate(host, port)
    if pinned is not None:
        pinned[host, port] = cert_pem
    phases["fetch_cert"] = time.perf_counter() - t

    async def verifier(kdf: trust_kdf.KdfParams) -> bytes:
        if kdf != secret.kdf:
            raise RuntimeError("the control's KDF parameters changed during the run")
        return secret.verifier

    hello = Hello(node_name=name, address=address, hostname=name)
    trusted = await joiner_bootstrap.run(
        host, port, cert_pem, hello, verifier, cluster_port=agent_port, phases=phases
    )
    return Member(name, trusted.credentials, trusted.cluster)


async def enrol(
    member: Member,
    result: JoinResult,
    on_event: Callable[[EventRecord], None] | None = None,
) -> None:
    """``ClusterService.Enrol`` over mTLS until the final event."""
    t = time.perf_counter()
    client = ControlClient(member.cluster, member.creds)
    try:
        async for event in client.enrol():
            result.events.append((event.seq, time.time()))
            if on_event is not None:
                on_event(event)
            if event.final:
                result.final_state = event.state.value
                break
    finally:
        await client.close()
    result.phases["enrol"] = time.perf_counter() - t
    if result.final_state != "done":
        raise RuntimeError(f"enrolment of {member.name} ended {result.final_state or 'early'}")


#: A control's "busy, come back at your turn" (absent from trees before it,
#: which ``bench/run.py`` also measures: docs/performance.md, before and after).
BUSY: Any = getattr(errors, "ControlBusy", ())

#: How long a simulated node goes on trying to bootstrap (``microstackctl
#: join``'s default --timeout).
GIVE_UP_AFTER = 600.0


async def join(host: str, port: int, name: str, address: str, secret: Secret) -> JoinResult:
    """One whole join with no services to start; errors are recorded, not raised.

    Like ``Member._bootstrap_with_retry``, a bootstrap the control refused
    as busy is tried again at the turn it named, and one that could not
    reach the control after the product's back-off (1 s doubling to 10 s),
    until ``GIVE_UP_AFTER``; ``attempts`` counts them."""
    result = JoinResult(name=name, start=time.time())
    deadline = time.monotonic() + GIVE_UP_AFTER
    backoff = Backoff()
    pinned: dict[tuple[str, int], bytes] = {}
    try:
        while True:
            result.attempts += 1
            result.phases.clear()
            try:
                member = await bootstrap(
                    host, port, name, address, secret, result.phases, pinned=pinned
                )
                break
            except BUSY as exc:
                result.busy += 1
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                await asyncio.sleep(exc.retry_after)
            except errors.ControlUnreachable:
                pinned.clear()
                backoff.failed()
                if time.monotonic() + backoff.delay > deadline:
                    raise
                await backoff.wait()
        await enrol(member, result)
        result.ok = True
        result.member = member
    except Exception as exc:  # a benchmark counts errors, it does not stop at the first
        done = [p for p in BOOTSTRAP_PHASES if p in result.phases]
        stage = (
            "enrol"
            if len(done) == len(BOOTSTRAP_PHASES)
            else f"bootstrap after {done or 'nothing'}"
        )
        result.error = f"{stage}: {type(exc).__name__}: {exc}"
    result.end = time.time()
    return result


# --- reference: a bare TLS handshake and one unary RPC -------------------------------------------

REF_SERVER_NAME = "bench-reference"
REF_METHOD = "/bench.Reference/Ping"


async def tls_rpc_once(
    host: str,
    port: int,
    root_pem: bytes,
    client_key_pem: bytes | None = None,
    client_cert_pem: bytes | None = None,
) -> float:
    """Seconds for a new (m)TLS channel, one unary RPC and closing the channel."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=client_key_pem, certificate_chain=client_cert_pem
    )
    started = time.perf_counter()
    channel = aio.secure_channel(
        f"{host}:{port}",
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", REF_SERVER_NAME)],
    )
    try:
        await channel.unary_unary(REF_METHOD)(b"ping", timeout=10)
    finally:
        await channel.close(None)
    return time.perf_counter() - started


async def warm_rpc_samples(host: str, port: int, root_pem: bytes, count: int) -> list[float]:
    """Seconds per unary RPC on one already-connected TLS channel."""
    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
    channel = aio.secure_channel(
        f"{host}:{port}",
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", REF_SERVER_NAME)],
    )
    call = channel.unary_unary(REF_METHOD)
    samples = []
    try:
        await call(b"ping", timeout=10)
        for _ in range(count):
            started = time.perf_counter()
            await call(b"ping", timeout=10)
            samples.append(time.perf_counter() - started)
    finally:
        await channel.close(None)
    return samples


# --- heartbeats ----------------------------------------------------------------------------------


def _declared(method: Callable[..., Any]) -> tuple[Any, ...]:
    """The version a member declares in its heartbeats, for a tree whose
    ``method`` takes one (trees before versions were declared take none)."""
    if "software" not in inspect.signature(method).parameters:
        return ()
    from microstackd import versions
    from microstackd.model import Software

    return (Software(versions.VERSION, versions.API_VERSION),)


#: What a simulated member reports on each beat: a compute's two services.
BEAT_SERVICES = [
    ServiceRecord("neutron-openvswitch-agent", "running"),
    ServiceRecord("nova-compute", "running"),
]


async def heartbeats(member: Member, seconds: float, start_within: float) -> tuple[int, str]:
    """Beat as a member does (``ClusterService.Heartbeats``, the product's
    ``HeartbeatStream``) for ``seconds``, at the interval the control asks
    for, the first beat at a random moment within ``start_within`` seconds
    (members that joined at different times beat at different moments).
    Returns (beats sent, the error that ended the stream or "")."""
    await asyncio.sleep(random.uniform(0, start_within))
    end = time.monotonic() + seconds
    client = ControlClient(member.cluster, member.creds)
    if hasattr(client, "heartbeat_session"):  # a tree with heartbeat datagrams
        await client.close()
        return await _heartbeat_datagrams(member, end)
    if not hasattr(client, "heartbeats"):  # a tree before the stream
        await client.close()
        return await _heartbeat_calls(member, end), ""
    stream = client.heartbeats(*_declared(client.heartbeats))
    sent = 0
    try:
        while time.monotonic() < end:
            await stream.beat(BEAT_SERVICES)
            sent += 1
            if not stream.answered.is_set():
                await asyncio.wait_for(stream.answered.wait(), 30)
            if stream.ended.done():
                if stream.unimplemented:  # an older control: as its members beat
                    return sent - 1 + await _heartbeat_calls(member, end), ""
                return sent, f"{type(stream.ended.result()).__name__}: {stream.ended.result()}"
            await asyncio.sleep(min(stream.interval or 10, max(0.0, end - time.monotonic())))
        return sent, ""
    except Exception as exc:
        return sent, f"{type(exc).__name__}: {exc}"
    finally:
        await stream.close()
        await client.close()


async def _heartbeat_datagrams(member: Member, end: float) -> tuple[int, str]:
    """Beat as a member does with datagrams (``member/heartbeat.py``): a call
    that brings a key (counted as a beat; its channel closed after it), then
    a datagram per interval, each acknowledged; a new call when one goes
    unanswered twice. A stream is not tried: the benchmark measures what
    the member's first choice costs."""
    from microstackd.peers.beats import BeatSender

    sent = 0
    unanswered = 0
    try:
        while time.monotonic() < end:
            interval, session = await _session_call(member, end)
            sent += 1
            if session is None:
                return sent, "the control offered no datagram session"
            sender = await BeatSender.open(member.cluster.control_address, session)
            try:
                while time.monotonic() < end:
                    await asyncio.sleep(min(interval or 10, max(0.0, end - time.monotonic())))
                    if time.monotonic() >= end:
                        break
                    told = await sender.beat(1.0) or await sender.beat(1.0)
                    sent += 1
                    if told is None:
                        unanswered += 1
                        break
                    interval = told
            finally:
                sender.close()
        return sent, f"{unanswered} beats unanswered" if unanswered else ""
    except Exception as exc:
        return sent, f"{type(exc).__name__}: {exc}"


#: Session calls of this process that failed and were made again (the
#: worker reports it: 10,000 members starting within ``BEAT_SPREAD`` make
#: 10,000 mTLS handshakes at once, which the control may not answer in time).
session_calls_retried = 0


async def _session_call(member: Member, end: float) -> tuple[int, Any]:
    """The call that opens a datagram session, made again (after 1-3 s) while
    it fails as unreachable and there is time: as a member's loop does,
    sooner."""
    global session_calls_retried
    from microstackd import errors

    while True:
        client = ControlClient(member.cluster, member.creds)
        try:
            result: tuple[int, Any] = await client.heartbeat_session(
                BEAT_SERVICES, *_declared(client.heartbeat_session), timeout=30.0
            )
            return result
        except errors.ControlUnreachable:
            if time.monotonic() >= end:
                raise
            session_calls_retried += 1
        finally:
            await client.close()
        await asyncio.sleep(random.uniform(1.0, 3.0))


async def _heartbeat_calls(member: Member, end: float) -> int:
    """Heartbeats as members beat before the stream (and still do against a
    control without it): a new mTLS channel and one ``Heartbeat`` call each."""
    sent = 0
    while time.monotonic() < end:
        client = ControlClient(member.cluster, member.creds)
        try:
            interval = await client.heartbeat(BEAT_SERVICES, *_declared(client.heartbeat))
        finally:
            await client.close()
        sent += 1
        await asyncio.sleep(min(interval or 10, max(0.0, end - time.monotonic())))
    return sent
