"""The CLI's client of its local daemon, over the Unix socket.

Every call goes through ``_unary`` or ``_stream``, where a gRPC failure
becomes a ``CommandError`` (``command_error``) with the operator-facing
message and the documented exit code (docs/cli.md): 1 error, 3
unreachable, 4 rejected credentials. ``status`` itself calls through
``unary.py`` instead (no grpc import), mapped by the same
``daemon_errors.call_error``.

Imported only by the commands that talk to the daemon: it loads grpc and
the protobuf runtime, which ``--help`` and ``--version`` never need (and
no pathlib: ``status`` has no other use for it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackctl.daemon_errors import (
    DEFAULT_SOCKET,
    ERROR_METADATA,
    call_error,
    check_socket,
    socket_path,
)
from microstackctl.errors import CommandError

__all__ = ["DEFAULT_SOCKET", "ERROR_METADATA", "Api", "command_error", "connect", "socket_path"]


def connect(socket: str | None) -> Api:
    """A client of the daemon at ``--socket`` (else $MICROSTACK_SOCKET, else the default)."""
    return Api(socket_path(socket))


def command_error(exc: grpc.RpcError, socket: str) -> CommandError:
    """The CLI's error for a failed grpcio call (``daemon_errors.call_error``)."""
    code: grpc.StatusCode = exc.code()
    error_class = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA)
    return call_error(code.value[0], exc.details(), error_class, socket)


class Api:
    def __init__(self, path: str) -> None:
        self.path = path
        check_socket(path)
        self._channel = grpc.insecure_channel(f"unix:{path}")
        self.stub = pb_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _root_proof(self) -> bytes:
        """The daemon's root-only proof beside its socket (empty if this
        user cannot read it: the daemon then refuses a backup)."""
        try:
            with open(os.path.splitext(self.path)[0] + ".root-proof", "rb") as f:
                return f.read(4096)
        except OSError:
            return b""

    # The two ways to call the daemon; every RpcError is mapped here, once.

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise command_error(exc, self.path) from exc

    def _stream(self, method: Callable[..., Iterator[Any]], request: Any) -> Iterator[Any]:
        try:
            yield from method(request)
        except grpc.RpcError as exc:
            raise command_error(exc, self.path) from exc

    # AdminService, one method per RPC.

    def status(self) -> pb.StatusResponse:
        return cast(pb.StatusResponse, self._unary(self.stub.Status, pb.StatusRequest(), 30))

    def init(self, password: str, address: str) -> Iterator[pb.Event]:
        request = pb.InitRequest(role=pb.ROLE_CONTROL, password=password, address=address)
        return (response.event for response in self._stream(self.stub.Init, request))

    def join(
        self, control: str, password: str, address: str, token: str = "", timeout: int = 0
    ) -> Iterator[pb.Event]:
        request = pb.JoinRequest(
            control=control,
            password=password,
            address=address,
            token=token,
            timeout_seconds=timeout,
        )
        return (response.event for response in self._stream(self.stub.Join, request))

    def watch(self, node: str, after_seq: int) -> Iterator[pb.Event]:
        request = pb.WatchRequest(node=node, after_seq=after_seq)
        return (response.event for response in self._stream(self.stub.Watch, request))

    def remove(self, name: str, force: bool) -> pb.RemoveNodeResponse:
        request = pb.RemoveNodeRequest(name=name, force=force)
        # Its services stopped, other computes told, the cloud cleaned: minutes at worst.
        return cast(pb.RemoveNodeResponse, self._unary(self.stub.RemoveNode, request, 300))

    def launch(self, request: pb.LaunchRequest) -> Iterator[pb.LaunchResponse]:
        return cast(Iterator[pb.LaunchResponse], self._stream(self.stub.Launch, request))

    def rotate_ca(self, cluster_id: str) -> Iterator[pb.Event]:
        request = pb.RotateCARequest(cluster_id=cluster_id)
        return (response.event for response in self._stream(self.stub.RotateCA, request))

    def drain(self, name: str, instance_timeout: int) -> Iterator[pb.DrainResponse]:
        request = pb.DrainRequest(name=name, instance_timeout_seconds=instance_timeout)
        return cast(Iterator[pb.DrainResponse], self._stream(self.stub.Drain, request))

    def reconfigure(self, nodes: list[str]) -> Iterator[pb.ReconfigureResponse]:
        request = pb.ReconfigureRequest(nodes=nodes)
        return cast(Iterator[pb.ReconfigureResponse], self._stream(self.stub.Reconfigure, request))

    def rotate_secrets(self) -> Iterator[pb.RotateSecretsResponse]:
        request = pb.RotateSecretsRequest()
        return cast(
            Iterator[pb.RotateSecretsResponse], self._stream(self.stub.RotateSecrets, request)
        )

    def undrain(self, name: str) -> pb.UndrainResponse:
        request = pb.UndrainRequest(name=name)
        return cast(pb.UndrainResponse, self._unary(self.stub.Undrain, request, 90))

    def backup(self, no_images: bool) -> Iterator[pb.BackupResponse]:
        request = pb.BackupRequest(no_images=no_images, proof=self._root_proof())
        return cast(Iterator[pb.BackupResponse], self._stream(self.stub.Backup, request))

    def restore(self, pieces: Iterator[pb.RestoreRequest]) -> Iterator[pb.Event]:
        return (response.event for response in self._stream(self.stub.Restore, pieces))

    def create_token(self, name: str, ttl: int) -> pb.CreateTokenResponse:
        request = pb.CreateTokenRequest(name=name, ttl_seconds=ttl)
        return cast(pb.CreateTokenResponse, self._unary(self.stub.CreateToken, request, 30))

    def list_tokens(self) -> pb.ListTokensResponse:
        request = pb.ListTokensRequest()
        return cast(pb.ListTokensResponse, self._unary(self.stub.ListTokens, request, 30))

    def revoke_token(self, id_or_name: str) -> pb.RevokeTokenResponse:
        request = pb.RevokeTokenRequest(id_or_name=id_or_name)
        return cast(pb.RevokeTokenResponse, self._unary(self.stub.RevokeToken, request, 30))
