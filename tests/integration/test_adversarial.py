"""Attacks on a real control daemon over the network: a man in the middle,
foreign and revoked certificates, calls on the wrong port, malformed and
replayed bootstrap messages."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.member import bootstrap
from microstackd.model import NodeCredentials, Role
from microstackd.peers.bootstrap import BootstrapCall, fetch_bootstrap_certificate
from microstackd.peers.cluster import member_channel
from microstackd.trust import exchange, kdf, x509
from tests.integration.harness import Node

PASSWORD = "correct horse battery staple"


def _now() -> datetime:
    return datetime.now(UTC)


async def _bootstrap(
    node: Node, name: str, password: str = PASSWORD, via: tuple[str, int] | None = None
) -> tuple[bytes, bytes, bytes]:
    """Run the joiner's half of the bootstrap; return (key, cert, ca) PEMs."""
    host, port = via or (node.address, node.port)
    cert_pem = await fetch_bootstrap_certificate(host, port)
    hello = exchange.Hello(node_name=name, address="127.0.0.99", hostname=name)
    trusted = await bootstrap.run(
        host, port, cert_pem, hello, bootstrap.password_verifier(password)
    )
    creds = trusted.credentials
    return creds.key_pem, creds.cert_pem, creds.ca_pem


def _response(joiner: exchange.JoinerExchange, csr: bytes) -> tuple[bytes, bytes, bytes]:
    message, confirmation = joiner.response(csr)
    return message, csr, confirmation


def _cluster_stub(
    node: Node, key: bytes, cert: bytes, ca: bytes
) -> tuple[aio.Channel, pb_grpc.ClusterServiceStub]:
    creds = NodeCredentials(key_pem=key, cert_pem=cert, ca_pem=ca)
    channel = member_channel(node.address, node.cluster_port, creds, "ctl")
    return channel, pb_grpc.ClusterServiceStub(channel)


async def _status_code(node: Node, key: bytes, cert: bytes, ca: bytes) -> grpc.StatusCode:
    channel, stub = _cluster_stub(node, key, cert, ca)
    try:
        await stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=5)
        return grpc.StatusCode.OK
    except aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()


class TlsInterceptor:
    """A machine in the middle: terminates the joiner's TLS with its own
    certificate and relays every byte, in both directions, to the control."""

    def __init__(self, target: tuple[str, int], workdir: Path) -> None:
        self.target = target
        key = x509.generate_key()
        cert = x509.self_signed_bootstrap_certificate(key, _now())
        (workdir / "mitm.key").write_bytes(x509.key_to_pem(key))
        (workdir / "mitm.crt").write_bytes(x509.cert_to_pem(cert))
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(workdir / "mitm.crt", workdir / "mitm.key")
        self.server_ctx.set_alpn_protocols(["h2"])
        self.client_ctx = ssl.create_default_context()
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE
        self.client_ctx.set_alpn_protocols(["h2"])
        self.relayed = 0
        #: What a joiner going through it is shown.
        self.fingerprint = x509.fingerprint(cert)
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                self.relayed += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.target, ssl=self.client_ctx)
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def forget(self) -> None:
        """Drop the (closed) connections, so that they are collected now."""
        self._writers.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[str, int]]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.server_ctx)
        try:
            yield server.sockets[0].getsockname()[:2]
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 2)
                writer.transport.abort()  # a TLS close may wait on a peer that is gone
            await server.wait_closed()
            await asyncio.sleep(0)  # the aborted transports close on the next turn


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_man_in_the_middle_relaying_faithfully_fails(control: Node, tmp_path: Path) -> None:
    mitm = TlsInterceptor((control.address, control.port), tmp_path)

    async def attempt() -> None:
        async with mitm.running() as (host, port):
            with pytest.raises(errors.WrongPassword):
                await _bootstrap(control, "victim", via=(host, port))

    asyncio.run(attempt())
    gc.collect()  # the relay's half-closed TLS transports are this test's, not the next one's
    assert mitm.relayed > 0, "the interceptor never carried the exchange"
    assert "victim" not in {n["name"] for n in control.status()["nodes"]}
    assert "reason=wrong-password" in control.log.read_text()


@contextlib.contextmanager
def _in_thread(mitm: TlsInterceptor) -> Iterator[tuple[str, int]]:
    """Run the interceptor on its own event loop while a subprocess uses it."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with mitm.running() as where:
            ready.set_result(where)
            await stop.wait()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await asyncio.sleep(0.2)  # let the closed transports finish closing on this loop

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_join_through_a_machine_in_the_middle_says_so_and_shows_both_fingerprints(
    control: Node, make_node: Callable[..., Node], password_file: Path, tmp_path: Path
) -> None:
    """The right password through an interceptor: the joiner is told the
    password is wrong *or* the connection is intercepted, with the fingerprint
    it was shown, beside the command that shows the real one on the control."""
    mitm = TlsInterceptor((control.address, control.port), tmp_path)
    node = make_node("node-1")
    with _in_thread(mitm) as (host, port):
        result = node.ctl(
            "join", f"{host}:{port}", "--password-file", str(password_file),
            "--address", node.address, check=False,
        )  # fmt: skip
    mitm.forget()
    gc.collect()  # the relay's half-closed TLS transports are this test's, not the next one's
    assert result.returncode == 4, result.stderr
    assert "intercepted" in result.stderr, result.stderr
    assert mitm.fingerprint in result.stderr, result.stderr
    assert "microstackctl status" in result.stderr, result.stderr
    real = x509.fingerprint((control.state_dir / "tls" / "bootstrap.crt").read_bytes())
    assert real != mitm.fingerprint
    assert control.status()["local"]["bootstrap_fingerprint"] == real
    assert real in control.ctl("status").stdout


def test_a_certificate_from_another_ca_is_refused(control: Node) -> None:
    foreign = x509.create_ca("elsewhere", _now())
    key = x509.generate_key()
    cert = x509.issue_certificate(
        foreign,
        key.public_key(),
        node_name="node-9",
        role=Role.COMPUTE,
        address="127.0.0.9",
        hostname="node-9",
        now=_now(),
    )
    ca_pem = (control.state_dir / "tls" / "ca.crt").read_bytes()
    code = asyncio.run(_status_code(control, x509.key_to_pem(key), x509.cert_to_pem(cert), ca_pem))
    assert code is grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails


def test_a_cluster_certificate_for_an_unknown_node_is_refused(control: Node) -> None:
    """Signed by the cluster CA (say, a stolen CA key was used once) but never admitted."""
    tls = control.state_dir / "tls"
    ca = x509.CertificateAuthority(
        key=x509.load_key((tls / "ca.key").read_bytes()),
        cert=x509.load_cert((tls / "ca.crt").read_bytes()),
    )
    key = x509.generate_key()
    cert = x509.issue_certificate(
        ca,
        key.public_key(),
        node_name="ghost",
        role=Role.COMPUTE,
        address="127.0.0.9",
        hostname="ghost",
        now=_now(),
    )
    code = asyncio.run(
        _status_code(
            control,
            x509.key_to_pem(key),
            x509.cert_to_pem(cert),
            x509.cert_to_pem(ca.cert),
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_a_replaced_certificate_is_revoked(control: Node) -> None:
    async def bootstrap_twice() -> tuple[tuple[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]:
        old = await _bootstrap(control, "node-7")
        new = await _bootstrap(control, "node-7")  # still pending: a retry replaces it
        return old, new

    old, new = asyncio.run(bootstrap_twice())
    assert asyncio.run(_status_code(control, *old)) is grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(_status_code(control, *new)) is grpc.StatusCode.OK
    assert "is revoked" in control.log.read_text()
    control.stop()
    control.start()  # revocation lives in the store: still refused after a restart
    assert asyncio.run(_status_code(control, *old)) is grpc.StatusCode.PERMISSION_DENIED


#: Where each service must be served, stated apart from api/access.py's table
#: so that a wrong table fails here: the admin API on the socket only, the
#: bootstrap on the bootstrap port only, member and agent calls on the mTLS
#: port only, health everywhere, reflection on the socket only.
SERVED_ON = {
    "microstack.cluster.v1.AdminService": {"socket"},
    "microstack.cluster.v1.BootstrapService": {"bootstrap"},
    "microstack.cluster.v1.ClusterService": {"cluster"},
    "microstack.cluster.v1.AgentService": {"cluster"},
    "grpc.health.v1.Health": {"socket", "bootstrap", "cluster"},
    "grpc.reflection.v1alpha.ServerReflection": {"socket"},
}
#: Served nowhere, whatever the channel: retired, or not ours to offer
#: (health is Check and Watch).
NOWHERE = {"microstack.cluster.v1.AgentService/StopRole", "grpc.health.v1.Health/List"}


def _every_method() -> list[tuple[str, str, bool, bool]]:
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    return [
        (service.full_name, method.name, method.client_streaming, method.server_streaming)
        for f in (pb, health_pb2, reflection_pb2)
        for service in f.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


async def _code(channel: aio.Channel, path: str, client_stream: bool, server_stream: bool) -> str:
    """Call ``path`` with an empty request; the status it ends with."""
    try:
        if client_stream:
            call = channel.stream_stream(path)(iter(()), timeout=3)
            async for _ in call:
                break
        elif server_stream:
            async for _ in channel.unary_stream(path)(b"", timeout=3):
                break
        else:
            await channel.unary_unary(path)(b"", timeout=3)
    except aio.AioRpcError as exc:
        return str(exc.code().name)
    return "OK"


def test_methods_are_served_only_on_their_channel(control: Node) -> None:
    """Every method of the protocol, on every channel: UNIMPLEMENTED where it
    is not served, anything else (it answered) where it is."""
    tls = control.state_dir / "tls"
    ca = x509.CertificateAuthority(
        key=x509.load_key((tls / "ca.key").read_bytes()),
        cert=x509.load_cert((tls / "ca.crt").read_bytes()),
    )
    key = x509.generate_key()
    stranger = x509.issue_certificate(
        ca, key.public_key(), node_name="ghost", role=Role.COMPUTE, address="127.0.0.9",
        hostname="ghost", now=_now(),
    )  # fmt: skip
    creds = NodeCredentials(
        x509.key_to_pem(key), x509.cert_to_pem(stranger), x509.cert_to_pem(ca.cert)
    )

    async def calls() -> dict[tuple[str, str], str]:
        cert_pem = await fetch_bootstrap_certificate(control.address, control.port)
        options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
        channels = {
            "socket": aio.insecure_channel(f"unix:{control.socket}"),
            "bootstrap": aio.secure_channel(
                control.endpoint,
                grpc.ssl_channel_credentials(root_certificates=cert_pem),
                options=options,
            ),
            "cluster": member_channel(control.address, control.cluster_port, creds, "ctl"),
        }
        codes = {}
        try:
            for where, channel in channels.items():
                for service, method, client_stream, server_stream in _every_method():
                    path = f"/{service}/{method}"
                    code = await _code(channel, path, client_stream, server_stream)
                    codes[(where, f"{service}/{method}")] = code
        finally:
            for channel in channels.values():
                await channel.close(None)
        return codes

    codes = asyncio.run(calls())
    assert codes, "no method was called"
    wrong = []
    for (where, method), code in codes.items():
        served = where in SERVED_ON[method.split("/")[0]] and method not in NOWHERE
        if served == (code == "UNIMPLEMENTED"):
            wrong.append(f"{method} on the {where}: {code}")
    assert not wrong, wrong
    # Served member calls from a stranger's certificate: the access check refused it.
    assert codes[("cluster", "microstack.cluster.v1.ClusterService/GetClusterStatus")] == (
        "PERMISSION_DENIED"
    )


async def _raw_exchange(
    node: Node, requests: list[pb.ExchangeRequest]
) -> tuple[grpc.StatusCode, str]:
    cert_pem = await fetch_bootstrap_certificate(node.address, node.port)
    creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
    async with aio.secure_channel(node.endpoint, creds, options=options) as channel:
        call = pb_grpc.BootstrapServiceStub(channel).Exchange(timeout=10)
        try:
            for request in requests:
                await call.write(request)
                await call.read()
            await call.done_writing()
            await call.read()
        except aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return await call.code(), await call.details() or ""


HELLO = pb.ExchangeRequest(
    hello=pb.BootstrapHello(version=1, node_name="node-5", address="127.0.0.5", hostname="node-5")
)


@pytest.mark.parametrize(
    ("requests", "code", "text"),
    [
        (
            [pb.ExchangeRequest(response=pb.BootstrapResponse())],
            grpc.StatusCode.INVALID_ARGUMENT,
            "must start with hello",
        ),
        (
            [
                pb.ExchangeRequest(
                    hello=pb.BootstrapHello(
                        version=1, node_name="Bad_Name", address="127.0.0.5", hostname="x"
                    )
                )
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "node name",
        ),
        (
            [
                pb.ExchangeRequest(
                    hello=pb.BootstrapHello(
                        version=1, node_name="n", address="nowhere", hostname="n"
                    )
                )
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "node address",
        ),
        (
            [
                pb.ExchangeRequest(
                    hello=pb.BootstrapHello(
                        version=9, node_name="n", address="127.0.0.5", hostname="n"
                    )
                )
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "version 9",
        ),
        ([HELLO, HELLO], grpc.StatusCode.INVALID_ARGUMENT, "PAKE response"),
        (
            [
                HELLO,
                pb.ExchangeRequest(
                    response=pb.BootstrapResponse(
                        pake_message=b"\x00" * 33, csr_pem=b"junk", confirmation=b"\x00" * 32
                    )
                ),
            ],
            None,
            "",
        ),
        (
            [
                HELLO,
                pb.ExchangeRequest(
                    response=pb.BootstrapResponse(
                        pake_message=b"A" + b"\x01" * 5000, csr_pem=b"x" * 5_000_000
                    )
                ),
            ],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ],
)
def test_malformed_bootstrap_messages_are_refused(
    control: Node, requests: list[pb.ExchangeRequest], code: grpc.StatusCode | None, text: str
) -> None:
    got, details = asyncio.run(_raw_exchange(control, requests))
    if code is None:  # garbage PAKE material: refused, whichever check catches it first
        assert got in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)
    else:
        assert got is code, details
        assert text in details
    assert control.status()["cluster"]  # the daemon is still serving


def test_a_replayed_bootstrap_response_is_refused(control: Node) -> None:
    """Record a successful joiner's response, then replay it in a new session."""

    async def scenario() -> tuple[grpc.StatusCode, str]:
        cert_pem = await fetch_bootstrap_certificate(control.address, control.port)
        hello = exchange.Hello(node_name="node-3", address="127.0.0.3", hostname="node-3")
        key = x509.generate_key()
        async with BootstrapCall(control.address, control.port, cert_pem) as call:
            challenge = await call.hello(hello)
            joiner = exchange.JoinerExchange(
                kdf.derive_verifier(PASSWORD, challenge.kdf),
                challenge.cluster_id,
                challenge.kdf,
                hello,
                x509.fingerprint(cert_pem),
                challenge.pake_message,
            )
            recorded = _response(joiner, x509.make_csr(key, "node-3"))
            await call.respond(*recorded)
        replay = pb.ExchangeRequest(
            response=pb.BootstrapResponse(
                pake_message=recorded[0], csr_pem=recorded[1], confirmation=recorded[2]
            )
        )
        return await _raw_exchange(
            control,
            [
                pb.ExchangeRequest(
                    hello=pb.BootstrapHello(
                        version=1, node_name="node-3", address="127.0.0.3", hostname="node-3"
                    )
                ),
                replay,
            ],
        )

    code, details = asyncio.run(scenario())
    assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS), details


def test_errors_keep_their_class_across_the_wire(control: Node) -> None:
    """The peer client raises the class the control raised, not one guessed
    from the status code (an unknown token is not a wrong password)."""

    async def hello(**fields: object) -> errors.MicrostackError:
        cert_pem = await fetch_bootstrap_certificate(control.address, control.port)
        version = int(fields.pop("version", exchange.PROTOCOL_VERSION))  # type: ignore[call-overload]
        hello = exchange.Hello(
            node_name="node-4", address="127.0.0.4", hostname="node-4", version=version
        )
        async with BootstrapCall(control.address, control.port, cert_pem) as call:
            try:
                await call.hello(hello, 0, str(fields.get("token_id", "")))
            except errors.MicrostackError as exc:
                return exc
        raise AssertionError("the control accepted the hello")

    unknown = asyncio.run(hello(token_id="0" * 16))
    assert type(unknown) is errors.TokenRejected, unknown
    assert "unknown to the control node" in unknown.message
    future = asyncio.run(hello(version=9))
    assert type(future) is errors.BootstrapProtocolError, future
    assert "version 9" in future.message
