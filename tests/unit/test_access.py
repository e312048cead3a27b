"""The access table: every method of the protocol has exactly one entry (or
is retired), every entry is a real method, and what a channel's server
serves is exactly its table."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.api import access
from microstackd.api.access import ACCEPTS, RETIRED, TABLE, Channel
from microstackd.model import Access


def _methods(*files: Any) -> set[str]:
    return {
        f"{service.full_name}/{method.name}"
        for f in files
        for service in f.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def _listed() -> dict[str, list[Channel]]:
    found: dict[str, list[Channel]] = {}
    for channel, services in TABLE.items():
        for service, methods in services.items():
            for method in methods:
                found.setdefault(f"{service}/{method}", []).append(channel)
    return found


def test_every_method_of_the_protocol_has_an_access_entry() -> None:
    listed = _listed()
    missing = sorted(_methods(pb) - set(listed) - set(RETIRED))
    assert not missing, f"methods with no access entry (add them to api/access.py): {missing}"


def test_every_entry_names_a_real_method_and_retired_ones_are_served_nowhere() -> None:
    real = _methods(pb, health_pb2, reflection_pb2)
    assert set(_listed()) <= real
    assert set(RETIRED) <= real and not set(RETIRED) & set(_listed())


def test_our_methods_are_each_served_on_one_channel_only() -> None:
    ours = {m: chans for m, chans in _listed().items() if m.startswith("microstack.")}
    assert all(len(chans) == 1 for chans in ours.values()), ours


def test_each_entry_is_a_kind_of_caller_its_channel_can_tell() -> None:
    for channel, services in TABLE.items():
        for service, methods in services.items():
            for method, who in methods.items():
                assert who in ACCEPTS[channel], f"{service}/{method} on {channel}"


class _Server:
    def __init__(self) -> None:
        self.served: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            for method in handler._method_handlers:  # grpc's generic handler: {path: handler}
                self.served.add(method.lstrip("/"))


def _servicers(channel: Channel) -> dict[str, tuple[Any, object]]:
    adders = {
        "microstack.cluster.v1.AdminService": pb_grpc.add_AdminServiceServicer_to_server,
        "microstack.cluster.v1.BootstrapService": pb_grpc.add_BootstrapServiceServicer_to_server,
        "microstack.cluster.v1.ClusterService": pb_grpc.add_ClusterServiceServicer_to_server,
        "microstack.cluster.v1.AgentService": pb_grpc.add_AgentServiceServicer_to_server,
    }
    from grpc_health.v1 import health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    adders[access.HEALTH] = health_pb2_grpc.add_HealthServicer_to_server
    adders[access.REFLECTION] = reflection_pb2_grpc.add_ServerReflectionServicer_to_server
    return {service: (adders[service], _Anything()) for service in TABLE[channel]}


class _Anything:
    """A servicer with every method."""

    def __getattr__(self, name: str) -> Any:
        async def method(request: Any, context: Any) -> None:
            return None

        return method


@pytest.mark.parametrize("channel", list(Channel), ids=[c.value for c in Channel])
def test_registration_serves_exactly_the_table(channel: Channel) -> None:
    server = _Server()
    access.register(server, channel, _servicers(channel))
    expected = {f"{s}/{m}" for s, methods in TABLE[channel].items() for m in methods}
    assert server.served == expected
    assert "microstack.cluster.v1.AgentService/StopRole" not in server.served


def test_registration_refuses_servicers_the_table_does_not_list() -> None:
    servicers = _servicers(Channel.BOOTSTRAP)
    servicers["microstack.cluster.v1.AdminService"] = (
        pb_grpc.add_AdminServiceServicer_to_server,
        _Anything(),
    )
    with pytest.raises(ValueError, match="table lists"):
        access.register(_Server(), Channel.BOOTSTRAP, servicers)


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.trailers: Any = ()

    def peer(self) -> str:
        return "ipv4:192.0.2.7:4000"

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise aio.AbortError()


def _wrapped(behaviour: Any) -> grpc.RpcMethodHandler:
    handler = grpc.unary_unary_rpc_method_handler(
        behaviour,
        health_pb2.HealthCheckRequest.FromString,
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    return access._Check(Channel.BOOTSTRAP, None).wrap(handler, Access.HEALTH, "x/Check")


def _call(handler: grpc.RpcMethodHandler, data: bytes) -> _Context:
    context = _Context()
    request = handler.request_deserializer(data)
    with pytest.raises(aio.AbortError):
        asyncio.run(handler.unary_unary(request, context))
    return context


def test_a_bug_in_a_servicer_is_internal_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    async def buggy(request: Any, context: Any) -> None:
        raise RuntimeError("secret internals")

    context = _call(_wrapped(buggy), b"")
    assert context.aborted is not None
    code, details = context.aborted
    assert code is grpc.StatusCode.INTERNAL
    assert "secret internals" not in details and "internal error" in details
    assert "secret internals" in caplog.text  # the operator gets it, with the traceback


def test_a_request_that_is_not_the_methods_message_is_invalid_argument(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fine(request: Any, context: Any) -> None:
        raise AssertionError("never called with garbage")

    context = _call(_wrapped(fine), b"\xff\xff\xff\xff garbage")
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_an_answer_already_encoded_goes_out_as_it_is() -> None:
    """A servicer may answer ``wire.convert.Encoded`` (status at 10,000 nodes:
    its bytes are built, not a message): the wrapped handler's serialiser
    sends those bytes; any other answer is serialised as before."""
    from microstackd.wire import convert

    async def answer(request: Any, context: Any) -> None:
        pass

    handler = _wrapped(answer)
    assert handler.response_serializer is not None
    message = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    encoded = convert.Encoded(message, b"")
    assert handler.response_serializer(encoded) == message.SerializeToString()
    assert handler.response_serializer(message) == message.SerializeToString()
    with pytest.raises(TypeError):  # anything else is still refused by protobuf
        handler.response_serializer(b"raw bytes are not an answer")
