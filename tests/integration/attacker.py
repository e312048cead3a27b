"""What the guessing and flooding tests attack with: connections from a
chosen loopback source address (127.0.0.x, all of them this machine's), a
relay that makes a gRPC channel come from one, and raw bootstrap exchanges
answered with any verifier (a guess) or the real one.

Everything stays on loopback, between this test and daemons it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.trust import exchange, kdf, x509


def raise_own_fd_limit() -> int:
    """This process's soft descriptor limit raised to the hard one; the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fd_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no descriptor limit for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class SourceRelay:
    """A TCP relay on 127.0.0.1 whose connections to ``target`` come from
    ``source``: a gRPC channel dialling it reaches the target from there (TLS
    runs through it untouched, as through the daemon's own gate)."""

    def __init__(self, target: tuple[str, int], source: str) -> None:
        self.target, self.source = target, source
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.target, local_addr=(self.source, 0)
            )
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def __aenter__(self) -> SourceRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.sleep(0)
        await self._server.wait_closed()


def channel(relay: SourceRelay, certificate_pem: bytes) -> aio.Channel:
    """A channel of its own (its own TCP connection) to the bootstrap port,
    pinned to its certificate, through ``relay``."""
    return aio.secure_channel(
        f"127.0.0.1:{relay.port}",
        grpc.ssl_channel_credentials(root_certificates=certificate_pem),
        options=[
            ("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


@dataclass
class Guess:
    """One exchange opened with a hello and challenged, waiting to be answered."""

    call: aio.StreamStreamCall
    hello: exchange.Hello
    challenge: pb.BootstrapChallenge


async def open_exchange(
    stub: pb_grpc.BootstrapServiceStub, name: str, address: str, timeout: float = 60
) -> Guess | grpc.StatusCode:
    """Send a hello; the challenged exchange, or the status it was refused with."""
    call = stub.Exchange(timeout=timeout)
    hello = exchange.Hello(node_name=name, address=address, hostname=name)
    try:
        await call.write(
            pb.ExchangeRequest(
                hello=pb.BootstrapHello(version=1, node_name=name, address=address, hostname=name)
            )
        )
        response = await call.read()
    except aio.AioRpcError as exc:
        return exc.code()
    if response is aio.EOF:
        return await call.code()
    return Guess(call, hello, response.challenge)


async def derive(guess: Guess, password: str) -> bytes:
    """The verifier ``password`` gives under the challenge's KDF parameters
    (the deliberately slow part of a join, done before answering)."""
    c = guess.challenge
    params = kdf.KdfParams(salt=c.kdf.salt, log2_n=c.kdf.log2_n, r=c.kdf.r, p=c.kdf.p)
    return await asyncio.to_thread(kdf.derive_verifier, password, params)


async def prepare(
    guess: Guess, fingerprint: str, password: str | None, *, verifier: bytes | None = None
) -> pb.ExchangeRequest:
    """The response to ``guess``'s challenge: a guess (``password`` None: a
    random verifier), the password itself, or a ``verifier`` derived
    beforehand. Built apart from sending, so that a burst of answers leaves
    at once however slow the key and PAKE computations are on a busy machine."""
    c = guess.challenge
    params = kdf.KdfParams(salt=c.kdf.salt, log2_n=c.kdf.log2_n, r=c.kdf.r, p=c.kdf.p)
    if verifier is None:
        verifier = (
            secrets.token_bytes(kdf.VERIFIER_BYTES)
            if password is None
            else await derive(guess, password)
        )
    joiner = exchange.JoinerExchange(
        verifier, c.cluster_id, params, guess.hello, fingerprint, c.pake_message
    )
    csr = x509.make_csr(x509.generate_key(), guess.hello.node_name)
    message, confirmation = joiner.response(csr)
    return pb.ExchangeRequest(
        response=pb.BootstrapResponse(pake_message=message, csr_pem=csr, confirmation=confirmation)
    )


async def send(guess: Guess, request: pb.ExchangeRequest) -> grpc.StatusCode:
    """Send a prepared response; the status the control ends the exchange with."""
    try:
        await guess.call.write(request)
        response = await guess.call.read()
    except aio.AioRpcError as exc:
        return exc.code()
    if response is aio.EOF:
        return await guess.call.code()
    return grpc.StatusCode.OK if response.HasField("result") else grpc.StatusCode.UNKNOWN


async def answer(guess: Guess, fingerprint: str, password: str | None) -> grpc.StatusCode:
    """Prepare and send at once (see :func:`prepare`)."""
    return await send(guess, await prepare(guess, fingerprint, password))


@contextlib.asynccontextmanager
async def raw_connections(
    target: tuple[str, int], sources: list[str], count: int, payload: bytes = b""
) -> AsyncIterator[list[socket.socket]]:
    """``count`` TCP connections to ``target``, spread over ``sources``, each
    sending ``payload`` (nothing: idle; a TLS record header: half-open TLS)
    and then nothing more; held open until the block ends."""
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []

    async def one(i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((sources[i % len(sources)], 0))
            await asyncio.wait_for(loop.sock_connect(sock, target), 10)
            if payload:
                await loop.sock_sendall(sock, payload)
        except (OSError, TimeoutError):
            sock.close()
            return
        held.append(sock)

    try:
        for start in range(0, count, 200):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 200))))
        yield held
    finally:
        for sock in held:
            sock.close()


def still_open(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the far end has not closed."""
    alive = 0
    for sock in sockets:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            alive += 1
            continue
        except OSError:
            continue
        alive += bool(data)
    return alive
