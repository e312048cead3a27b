"""The joiner's wire half of the bootstrap: fetch the certificate the
control's bootstrap port presents, then one ``BootstrapService.Exchange``
over TLS pinned to exactly that certificate."""

from __future__ import annotations

import asyncio
import ssl

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors, versions
from microstackd.model import BootstrapResult, Software
from microstackd.peers.errors import error_from_rpc
from microstackd.trust import names
from microstackd.trust.exchange import Challenge, Hello
from microstackd.trust.kdf import KdfParams
from microstackd.trust.x509 import BOOTSTRAP_SERVER_NAME
from microstackd.wire.convert import bootstrap_result_from_pb
from microstackd.wire.options import CHANNEL_OPTIONS


async def fetch_bootstrap_certificate(host: str, port: int, timeout: float = 5.0) -> bytes:
    """The certificate the control's bootstrap port presents, as PEM."""
    where = names.format_host_port(host, port)
    try:
        pem = await asyncio.to_thread(ssl.get_server_certificate, (host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.ControlUnreachable(
            f"cannot reach the control node at {where}: {reason or type(exc).__name__}"
        ) from exc
    return pem.encode()


class BootstrapCall:
    """One bootstrap exchange with a control whose certificate is pinned."""

    def __init__(self, host: str, port: int, certificate_pem: bytes, timeout: float = 30.0) -> None:
        self._where = names.format_host_port(host, port)
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate_pem)
        self._channel = aio.secure_channel(
            self._where,
            credentials,
            options=[
                *CHANNEL_OPTIONS,
                ("grpc.ssl_target_name_override", BOOTSTRAP_SERVER_NAME),
            ],
        )
        self._call = pb_grpc.BootstrapServiceStub(self._channel).Exchange(timeout=timeout)

    def _error(self, exc: aio.AioRpcError) -> errors.MicrostackError:
        def unreachable(details: str) -> errors.MicrostackError:
            return errors.ControlUnreachable(
                f"cannot reach the control node at {self._where}: {details}"
            )

        return error_from_rpc(exc, unreachable)

    async def __aenter__(self) -> BootstrapCall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()
        await self._channel.close(None)

    async def _read(self) -> pb.ExchangeResponse:
        try:
            response = await self._call.read()
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        if response is aio.EOF:
            code = await self._call.code()
            details = await self._call.details()
            raise errors.BootstrapProtocolError(f"the control ended the exchange: {code} {details}")
        assert isinstance(response, pb.ExchangeResponse)
        return response

    async def _write(self, request: pb.ExchangeRequest) -> None:
        try:
            await self._call.write(request)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def hello(
        self,
        hello: Hello,
        cluster_port: int = 0,
        token_id: str = "",
        software: Software | None = None,
    ) -> Challenge:
        """Send the hello, declaring ``software`` (default: this build's)."""
        software = software or Software(versions.VERSION, versions.API_VERSION)
        await self._write(
            pb.ExchangeRequest(
                hello=pb.BootstrapHello(
                    version=hello.version,
                    node_name=hello.node_name,
                    address=hello.address,
                    hostname=hello.hostname,
                    cluster_port=cluster_port,
                    token_id=token_id,
                    microstackd_version=software.version,
                    api_version=software.api,
                )
            )
        )
        response = await self._read()
        if response.WhichOneof("body") != "challenge":
            raise errors.BootstrapProtocolError("the control did not answer with a challenge")
        c = response.challenge
        return Challenge(
            cluster_id=c.cluster_id,
            kdf=KdfParams(salt=c.kdf.salt, log2_n=c.kdf.log2_n, r=c.kdf.r, p=c.kdf.p),
            pake_message=c.pake_message,
        )

    async def respond(
        self, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> BootstrapResult:
        await self._write(
            pb.ExchangeRequest(
                response=pb.BootstrapResponse(
                    pake_message=pake_message, csr_pem=csr_pem, confirmation=confirmation
                )
            )
        )
        # The last message: half-close now, while the call is surely alive (after
        # the result it may be over already, and grpc then raises its own errors).
        try:
            await self._call.done_writing()
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        except Exception:  # grpc's own error for a call already over
            # (ExecuteBatchError, when its deadline passed meanwhile): the read
            # below raises the call's real status.
            pass
        response = await self._read()
        if response.WhichOneof("body") != "result":
            raise errors.BootstrapProtocolError("the control did not answer with a result")
        return bootstrap_result_from_pb(response.result)
