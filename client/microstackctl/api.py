"""The CLI's client of its local daemon, over the Unix socket.

gRPC failures become ``CommandError`` with an operator-facing message and
the documented exit code (docs/cli.md): 1 error, 3 unreachable, 4 rejected
credentials.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc

DEFAULT_SOCKET = "/run/microstackd/microstackd.sock"

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4


class CommandError(Exception):
    def __init__(
        self, message: str, exit_code: int = EXIT_ERROR, *, daemon_lost: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        #: The local daemon went away (as opposed to an error it reported).
        self.daemon_lost = daemon_lost


def _permission_denied(path: Path) -> CommandError:
    return CommandError(
        f"permission denied on {path}: run as root or as a member of the 'microstack' group "
        "(sudo usermod -aG microstack $USER, then log in again)",
        EXIT_REJECTED,
    )


def socket_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("MICROSTACK_SOCKET") or DEFAULT_SOCKET)


class Api:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.stat()
        except FileNotFoundError:
            raise CommandError(
                f"no microstackd socket at {path}: is microstackd running? "
                "(start it, or point --socket / MICROSTACK_SOCKET at its socket)",
                EXIT_UNREACHABLE,
                daemon_lost=True,
            ) from None
        except PermissionError:
            # The socket's directory is root:microstack 0750: others cannot even look.
            raise _permission_denied(path) from None
        except OSError as exc:
            raise CommandError(
                f"cannot reach the microstackd socket at {path}: {exc.strerror or exc}",
                EXIT_UNREACHABLE,
                daemon_lost=True,
            ) from None
        if not os.access(path, os.R_OK | os.W_OK):
            raise _permission_denied(path)
        self._channel = grpc.insecure_channel(f"unix:{path}")
        self.stub = pb_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def error(self, exc: grpc.RpcError) -> CommandError:
        code = exc.code()
        details = str(exc.details() or code.name)
        metadata = dict(exc.trailing_metadata() or ())
        error_class = metadata.get("microstackd-error")
        if code is grpc.StatusCode.UNAVAILABLE and error_class in (None, "ShuttingDown"):
            return CommandError(
                f"lost microstackd at {self.path}: is it running? ({details})",
                EXIT_UNREACHABLE,
                daemon_lost=True,
            )
        if code is grpc.StatusCode.UNAVAILABLE:
            return CommandError(details, EXIT_UNREACHABLE)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return CommandError(details, EXIT_REJECTED)
        return CommandError(details, EXIT_ERROR)

    def status(self) -> pb.StatusResponse:
        try:
            return self.stub.Status(pb.StatusRequest(), timeout=30)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def init(self, password: str, address: str) -> Iterator[pb.Event]:
        request = pb.InitRequest(role=pb.ROLE_CONTROL, password=password, address=address)
        try:
            for response in self.stub.Init(request):
                yield response.event
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

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
        try:
            for response in self.stub.Join(request):
                yield response.event
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def watch(self, node: str, after_seq: int) -> Iterator[pb.Event]:
        try:
            for response in self.stub.Watch(pb.WatchRequest(node=node, after_seq=after_seq)):
                yield response.event
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def remove(self, name: str, force: bool) -> pb.RemoveNodeResponse:
        try:
            return self.stub.RemoveNode(  # type: ignore[no-any-return]
                pb.RemoveNodeRequest(name=name, force=force), timeout=120
            )
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def launch(self, request: pb.LaunchRequest) -> Iterator[pb.LaunchResponse]:
        try:
            yield from self.stub.Launch(request)
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def create_token(self, name: str, ttl: int) -> pb.CreateTokenResponse:
        try:
            return self.stub.CreateToken(  # type: ignore[no-any-return]
                pb.CreateTokenRequest(name=name, ttl_seconds=ttl), timeout=30
            )
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def list_tokens(self) -> pb.ListTokensResponse:
        try:
            return self.stub.ListTokens(pb.ListTokensRequest(), timeout=30)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def revoke_token(self, id_or_name: str) -> pb.RevokeTokenResponse:
        try:
            return self.stub.RevokeToken(  # type: ignore[no-any-return]
                pb.RevokeTokenRequest(id_or_name=id_or_name), timeout=30
            )
        except grpc.RpcError as exc:
            raise self.error(exc) from exc
