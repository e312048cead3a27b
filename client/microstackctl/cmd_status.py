"""`microstackctl status`: every node of the cluster.

Its one call goes through ``unary`` rather than grpcio: ``import grpc``
is half of this command's run time (docs/performance.md)."""

from __future__ import annotations

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render, unary
from microstackctl.daemon_errors import socket_path

#: The RPC (protos/microstack_api/v1/cluster.proto) and today's deadline.
METHOD = "/microstack.cluster.v1.AdminService/Status"
TIMEOUT = 30.0


def fetch(socket: str | None) -> pb.StatusResponse:
    raw = unary.call(socket_path(socket), METHOD, pb.StatusRequest().SerializeToString(), TIMEOUT)
    return pb.StatusResponse.FromString(raw)


def status(socket: str | None, fmt: str) -> None:
    response = fetch(socket)
    if fmt == "json":
        render.print_json(render.status_dict(response))
    else:
        render.print_status(response)
