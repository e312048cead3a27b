"""Who may call what: the one place that answers it.

Rules:

1. Every method served anywhere is listed in ``ACCESS`` with the one kind
   of caller it accepts. A method not listed is refused (UNIMPLEMENTED) on
   every channel, so a new RPC cannot be exposed by accident.
2. Each server serves one channel kind (``Channel``), and a method is
   served only on the channel its access kind belongs to: local methods only
   on the Unix socket, the bootstrap only on the public TLS port, member and
   control methods only on the mTLS port.
3. On the mTLS port the TLS layer has already checked the chain to the
   cluster CA; this interceptor then reads the caller's identity from its
   certificate and asks the node's ``Authoriser`` (revocation, membership,
   role) before the servicer runs. Servicers never check identity
   themselves; they read it from ``CALLER``.
4. Domain errors (``microstackd.errors``) raised anywhere below become
   their gRPC status here, with the operator-facing message as details.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from grpc import aio

from microstackd import errors, logcontext, security
from microstackd.model import Access

log = logging.getLogger(__name__)

_API = "/microstack.cluster.v1."


class Channel(enum.Enum):
    LOCAL = "local"
    BOOTSTRAP = "bootstrap"
    CLUSTER = "cluster"


#: Which access kinds each channel may serve.
SERVES: dict[Channel, frozenset[Access]] = {
    Channel.LOCAL: frozenset({Access.LOCAL, Access.PUBLIC}),
    Channel.BOOTSTRAP: frozenset({Access.PUBLIC}),
    Channel.CLUSTER: frozenset({Access.MEMBER, Access.CONTROL, Access.PUBLIC}),
}

ACCESS: dict[str, Access] = {
    _API + "AdminService/Init": Access.LOCAL,
    _API + "AdminService/Join": Access.LOCAL,
    _API + "AdminService/Status": Access.LOCAL,
    _API + "AdminService/Watch": Access.LOCAL,
    _API + "AdminService/RemoveNode": Access.LOCAL,
    _API + "AdminService/CreateToken": Access.LOCAL,
    _API + "AdminService/ListTokens": Access.LOCAL,
    _API + "AdminService/RevokeToken": Access.LOCAL,
    _API + "AdminService/Launch": Access.LOCAL,
    _API + "BootstrapService/Exchange": Access.PUBLIC,
    _API + "ClusterService/Enrol": Access.MEMBER,
    _API + "ClusterService/GetClusterStatus": Access.MEMBER,
    _API + "ClusterService/Heartbeat": Access.MEMBER,
    _API + "AgentService/ApplyRole": Access.CONTROL,
    _API + "AgentService/GetServices": Access.CONTROL,
    _API + "AgentService/StopRole": Access.CONTROL,
    _API + "AgentService/Leave": Access.CONTROL,
    "/grpc.health.v1.Health/Check": Access.PUBLIC,
    "/grpc.health.v1.Health/Watch": Access.PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Access.LOCAL,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Access.LOCAL,
}

#: Trailing metadata key naming the microstackd error class of a failed call.
ERROR_METADATA = "microstackd-error"

#: The verified identity of the caller on the mTLS port (None elsewhere).
CALLER: contextvars.ContextVar[security.Identity | None] = contextvars.ContextVar(
    "caller", default=None
)
#: The caller's network address as gRPC reports it ("ipv4:1.2.3.4:5678").
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("peer", default="")


class Authoriser(Protocol):
    """The node's answer to "may this certificate make this kind of call?"."""

    def authorise(self, identity: security.Identity, access: Access) -> None:
        """Raise errors.PermissionDenied to refuse."""


def status_code(error: errors.MicrostackError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, channel: Channel, authoriser: Authoriser | None = None) -> None:
        self._channel = channel
        self._authoriser = authoriser

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        access = ACCESS.get(method)
        if handler is None or access is None or access not in SERVES[self._channel]:
            log.warning("refused unlisted method=%s channel=%s", method, self._channel.value)
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served here")
        return self._wrap(handler, access)

    def _authenticate(self, context: Any, access: Access) -> None:
        PEER.set(context.peer())
        logcontext.new_request_id()
        if access not in (Access.MEMBER, Access.CONTROL):
            CALLER.set(None)
            return
        pems = context.auth_context().get("x509_pem_cert")
        if not pems or self._authoriser is None:
            raise errors.PermissionDenied("a cluster certificate is required for this call")
        identity = security.identity_of(security.load_cert(pems[0]))
        if identity.not_after < datetime.now(UTC):
            raise errors.PermissionDenied(f"the certificate of {identity.name} has expired")
        self._authoriser.authorise(identity, access)
        CALLER.set(identity)

    def _wrap(self, handler: grpc.RpcMethodHandler, access: Access) -> grpc.RpcMethodHandler:
        authenticate = self._authenticate

        async def fail(context: Any, exc: errors.MicrostackError) -> None:
            if isinstance(exc, errors.PermissionDenied):
                log.warning("permission denied peer=%s reason=%s", context.peer(), exc.message)
            # Which domain error it was, for clients that act on it (docs/api.md);
            # its absence marks a transport failure.
            context.set_trailing_metadata(((ERROR_METADATA, type(exc).__name__),))
            await context.abort(status_code(exc), exc.message)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                try:
                    authenticate(context, access)
                    return await inner_uu(request, context)
                except errors.MicrostackError as exc:
                    await fail(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    authenticate(context, access)
                    async for response in _responses(inner_us(request, context)):
                        yield response
                except errors.MicrostackError as exc:
                    await fail(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    authenticate(context, access)
                    async for response in _responses(inner_ss(requests, context)):
                        yield response
                except errors.MicrostackError as exc:
                    await fail(context, exc)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler  # stream-unary: none of ours


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler either yields responses or writes them itself."""
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: Any) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
