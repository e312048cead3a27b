"""Who may call what: the one place that answers it.

Rules:

1. ``TABLE`` lists, for each channel (the Unix socket, the bootstrap port,
   the mTLS cluster port), every method served there and the one kind of
   caller it accepts. The table IS the registration: ``register`` puts on a
   channel's server exactly the methods its table lists, each wrapped in the
   check below, and nothing else. A method not listed is not served there
   (UNIMPLEMENTED), so a new RPC cannot be exposed by accident, and every
   method of the protocol must be listed somewhere or in ``RETIRED``
   (tests/unit/test_access.py).
2. ``Access.HEALTH`` is grpc.health.v1 and nothing else; ``Access.BOOTSTRAP``
   is the password / token exchange, the only call a stranger may make.
3. On the mTLS port the TLS layer has already checked the chain to the
   cluster CA; the check then reads the caller's identity from its
   certificate and asks the node's ``Authoriser`` (revocation, membership,
   role) before the servicer runs. Servicers never check identity
   themselves; they read it from ``CALLER``.
4. Domain errors (``microstackd.errors``) raised anywhere below become
   their gRPC status here, with the operator-facing message as details and
   the class's name in the ``microstackd-error`` trailer (``wire/status.py``).
   Anything else is a bug: logged with its traceback, and the caller gets
   INTERNAL without its text.
5. A request that is not the method's protobuf message is INVALID_ARGUMENT
   for the caller and one warning line here: grpc would log an error-level
   traceback for it, which any stranger on the bootstrap port could trigger.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from grpc import aio

from microstackd import errors, logcontext
from microstackd.model import Access
from microstackd.trust import x509
from microstackd.wire import convert
from microstackd.wire.status import error_trailers, status_code

log = logging.getLogger(__name__)

_API = "microstack.cluster.v1."
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


class Channel(enum.Enum):
    LOCAL = "local"  # the Unix socket
    BOOTSTRAP = "bootstrap"  # --listen: TLS, server certificate only
    CLUSTER = "cluster"  # the cluster port: mutual TLS under the cluster CA


_HEALTH = {"Check": Access.HEALTH, "Watch": Access.HEALTH}

#: channel -> service -> method -> who may call it.
TABLE: Mapping[Channel, Mapping[str, Mapping[str, Access]]] = {
    Channel.LOCAL: {
        _API + "AdminService": {
            "Init": Access.LOCAL,
            "Join": Access.LOCAL,
            "Status": Access.LOCAL,
            "Watch": Access.LOCAL,
            "RemoveNode": Access.LOCAL,
            "CreateToken": Access.LOCAL,
            "ListTokens": Access.LOCAL,
            "RevokeToken": Access.LOCAL,
            "Launch": Access.LOCAL,
            "RotateCA": Access.LOCAL,
            "Drain": Access.LOCAL,
            "Undrain": Access.LOCAL,
            "Backup": Access.LOCAL,
            "Restore": Access.LOCAL,
            "Reconfigure": Access.LOCAL,
            "RotateSecrets": Access.LOCAL,
        },
        HEALTH: _HEALTH,
        REFLECTION: {"ServerReflectionInfo": Access.LOCAL},
    },
    Channel.BOOTSTRAP: {
        _API + "BootstrapService": {"Exchange": Access.BOOTSTRAP},
        HEALTH: _HEALTH,
    },
    Channel.CLUSTER: {
        _API + "ClusterService": {
            "Enrol": Access.MEMBER,
            "GetClusterStatus": Access.MEMBER,
            "Heartbeat": Access.MEMBER,
            "Heartbeats": Access.MEMBER,
            "RenewCertificate": Access.MEMBER,
        },
        _API + "AgentService": {
            "ApplyRole": Access.CONTROL,
            "GetServices": Access.CONTROL,
            "Leave": Access.CONTROL,
            "TrustCA": Access.CONTROL,
            "UpdateRevocations": Access.CONTROL,
        },
        HEALTH: _HEALTH,
    },
}

#: Methods of the protocol that are served nowhere any more, and why.
RETIRED: Mapping[str, str] = {
    _API + "AgentService/StopRole": "deprecated: Leave stops the role's services",
}

#: The kinds of caller each channel can tell apart (a certificate only on the mTLS port).
ACCEPTS: Mapping[Channel, frozenset[Access]] = {
    Channel.LOCAL: frozenset({Access.LOCAL, Access.HEALTH}),
    Channel.BOOTSTRAP: frozenset({Access.BOOTSTRAP, Access.HEALTH}),
    Channel.CLUSTER: frozenset({Access.MEMBER, Access.CONTROL, Access.HEALTH}),
}

#: The verified identity of the caller on the mTLS port (None elsewhere).
CALLER: contextvars.ContextVar[x509.Identity | None] = contextvars.ContextVar(
    "caller", default=None
)
#: The caller's network address as gRPC reports it ("ipv4:1.2.3.4:5678").
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("peer", default="")


class Authoriser(Protocol):
    """The node's answer to "may this certificate make this kind of call?"."""

    def authorise(self, identity: x509.Identity, access: Access) -> None:
        """Raise errors.PermissionDenied to refuse."""


#: Registers a servicer on a server, as the generated ``add_*_to_server`` do.
Adder = Callable[[Any, Any], None]


class _Collector:
    """Stands in for a server to learn the method handlers an ``add_*_to_server`` makes."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers come again through ``add_registered_method_handlers``."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers[service] = handlers


def register(
    server: Any,
    channel: Channel,
    servicers: Mapping[str, tuple[Adder, object]],
    authoriser: Authoriser | None = None,
) -> None:
    """Serve on ``server`` exactly what ``TABLE[channel]`` lists, from
    ``servicers`` (service name -> (its ``add_*_to_server``, the servicer))."""
    table = TABLE[channel]
    if set(servicers) != set(table):
        raise ValueError(
            f"{channel.value}: servicers for {sorted(servicers)}, table lists {sorted(table)}"
        )
    check = _Check(channel, authoriser)
    for service, methods in table.items():
        add, servicer = servicers[service]
        collector = _Collector()
        add(servicer, collector)
        handlers = collector.handlers[service]
        wrapped = {}
        for method, access in methods.items():
            if access not in ACCEPTS[channel]:
                raise ValueError(f"{service}/{method}: {access} is not served on {channel.value}")
            wrapped[method] = check.wrap(handlers[method], access, f"{service}/{method}")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))


class _Check:
    """Authenticates each call of one channel, then maps domain errors to status."""

    def __init__(self, channel: Channel, authoriser: Authoriser | None) -> None:
        self._channel = channel
        self._authoriser = authoriser

    def _authenticate(self, context: Any, access: Access) -> None:
        PEER.set(context.peer())
        logcontext.new_request_id()
        if access not in (Access.MEMBER, Access.CONTROL):
            CALLER.set(None)
            return
        pems = context.auth_context().get("x509_pem_cert")
        if not pems or self._authoriser is None:
            raise errors.PermissionDenied("a cluster certificate is required for this call")
        try:  # read without cryptography (trust.der): TLS has verified it
            identity = x509.identity_of(x509.read_cert(pems[0]))
        except ValueError as exc:
            raise errors.PermissionDenied(f"the certificate could not be read: {exc}") from None
        if identity.not_after < datetime.now(UTC):
            raise errors.PermissionDenied(f"the certificate of {identity.name} has expired")
        self._authoriser.authorise(identity, access)
        CALLER.set(identity)

    def wrap(
        self, handler: grpc.RpcMethodHandler, access: Access, name: str
    ) -> grpc.RpcMethodHandler:
        authenticate = self._authenticate

        async def fail(context: Any, exc: errors.MicrostackError) -> None:
            if isinstance(exc, errors.PermissionDenied):
                log.warning("permission denied peer=%s reason=%s", context.peer(), exc.message)
            # Which domain error it was, for clients that act on it (docs/api.md);
            # its absence marks a transport failure.
            context.set_trailing_metadata(error_trailers(exc))
            await context.abort(status_code(exc), exc.message)

        async def crash(context: Any, exc: Exception) -> None:
            log.error("internal error method=%s peer=%s", name, context.peer(), exc_info=exc)
            await fail(
                context,
                errors.MicrostackError(
                    f"internal error in microstackd (request {logcontext.REQUEST_ID.get()}; "
                    "its log has the details)"
                ),
            )

        deserialize = _tolerant(handler.request_deserializer, name)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                try:
                    authenticate(context, access)
                    return await inner_uu(_decoded(request), context)
                except errors.MicrostackError as exc:
                    await fail(context, exc)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    await crash(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, deserialize, _passing(handler.response_serializer)
            )
        streaming = handler.unary_stream or handler.stream_stream
        if streaming is not None:
            many = handler.stream_stream is not None

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    authenticate(context, access)
                    request = _decoded_stream(request) if many else _decoded(request)
                    async for response in _responses(streaming(request, context)):
                        yield response
                except errors.MicrostackError as exc:
                    await fail(context, exc)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    await crash(context, exc)

            make = (
                grpc.stream_stream_rpc_method_handler
                if many
                else grpc.unary_stream_rpc_method_handler
            )
            return make(stream, deserialize, handler.response_serializer)
        raise ValueError("stream-unary methods are not served")


def _passing(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serialize``, except that an answer already encoded
    (``wire.convert.Encoded``) goes out as it is."""
    if serialize is None:
        return None
    inner = serialize

    def serialize_or_pass(response: Any) -> bytes:
        if type(response) is convert.Encoded:
            return response.data
        return inner(response)

    return serialize_or_pass


class _Undecodable:
    """What arrived instead of a protobuf message of the method's type."""

    def __init__(self, method: str, size: int, reason: str) -> None:
        self.method, self.size, self.reason = method, size, reason

    def error(self) -> errors.InvalidArgument:
        log.warning(
            "undecodable request method=%s bytes=%d reason=%r", self.method, self.size, self.reason
        )
        return errors.InvalidArgument(f"the request is not a valid {self.method} message")


def _tolerant(deserialize: Any, method: str) -> Any:
    """``deserialize``, returning an ``_Undecodable`` instead of raising."""
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return _Undecodable(method, len(data), str(exc))

    return decode


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error()
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _is_abort(exc: Exception) -> bool:
    """grpc's own way out of a handler (context.abort raises it): not a bug."""
    return isinstance(exc, aio.AbortError)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler either yields responses or writes them itself."""
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response
