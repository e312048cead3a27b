"""``BootstrapService`` on the bootstrap port: the password / token exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.api.servicers import Context, source
from microstackd.control.bootstrap import Bootstrap
from microstackd.model import Software
from microstackd.trust.exchange import Hello
from microstackd.wire import convert

#: How long the bootstrap waits for each of the joiner's messages, seconds:
#: a joiner answers within milliseconds (its scrypt is about 0.1 s); a
#: stranger's silent stream holds one of its source's open exchanges no longer.
MESSAGE_TIMEOUT = 15

#: How long a refused exchange waits for its hello before it is refused.
REFUSAL_WAIT = 1.0

#: Maps the bootstrap server's view of a caller (gRPC's peer string) to the
#: address it really comes from (the gate in front of the port knows it).
Sources = Callable[[str], str]


class BootstrapServicer(pb_grpc.BootstrapServiceServicer):
    def __init__(self, bootstrap: Bootstrap, sources: Sources | None = None) -> None:
        self._bootstrap = bootstrap
        self._sources = sources

    def _source(self, context: Context) -> str:
        if self._sources is not None:
            return self._sources(str(context.peer()))
        return source(context)

    async def Exchange(
        self, request_iterator: AsyncIterator[pb.ExchangeRequest], context: Context
    ) -> AsyncIterator[pb.ExchangeResponse]:
        where = self._source(context)
        requests = aiter(request_iterator)
        try:
            with self._bootstrap.slot(where):
                async for response in self._exchange(requests, where):
                    yield response
        except errors.BootstrapBusy:  # only the slot says so
            # Refuse once its hello is in (or a second has passed): ending the
            # call while the client is still sending makes grpc's client report
            # INTERNAL ("execute_batch" failed), not this error, and a joiner
            # would not know to wait and retry.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(requests), timeout=REFUSAL_WAIT)
            raise

    async def _exchange(
        self, requests: AsyncIterator[pb.ExchangeRequest], where: str
    ) -> AsyncIterator[pb.ExchangeResponse]:
        first = await _next(requests, "hello")
        if first.WhichOneof("body") != "hello":
            raise errors.BootstrapProtocolError("the bootstrap must start with hello")
        h = first.hello
        hello = Hello(
            node_name=h.node_name, address=h.address, hostname=h.hostname, version=h.version
        )
        if not 0 <= h.cluster_port < 65536:
            raise errors.InvalidArgument(f"cluster port {h.cluster_port} is not a TCP port")
        session, challenge = self._bootstrap.begin(
            hello,
            where,
            h.cluster_port,
            h.token_id,
            Software(h.microstackd_version, h.api_version),
        )
        try:
            kdf = challenge.kdf
            yield pb.ExchangeResponse(
                challenge=pb.BootstrapChallenge(
                    cluster_id=challenge.cluster_id,
                    kdf=pb.KdfParams(
                        name="scrypt", salt=kdf.salt, log2_n=kdf.log2_n, r=kdf.r, p=kdf.p
                    ),
                    pake_message=challenge.pake_message,
                )
            )
            second = await _next(requests, "response")
            if second.WhichOneof("body") != "response":
                raise errors.BootstrapProtocolError(
                    "expected the PAKE response after the challenge"
                )
            r = second.response
            result = await self._bootstrap.finish(
                session, r.pake_message, r.csr_pem, r.confirmation
            )
            yield pb.ExchangeResponse(result=convert.bootstrap_result_to_pb(result))
        finally:
            self._bootstrap.end(session)


async def _next(requests: AsyncIterator[pb.ExchangeRequest], what: str) -> pb.ExchangeRequest:
    try:
        return await asyncio.wait_for(anext(requests), timeout=MESSAGE_TIMEOUT)
    except StopAsyncIteration:
        raise errors.BootstrapProtocolError(
            f"the joiner closed the stream before its {what}"
        ) from None
    except TimeoutError:
        raise errors.BootstrapProtocolError(
            f"no {what} from the joiner within {MESSAGE_TIMEOUT} s"
        ) from None
