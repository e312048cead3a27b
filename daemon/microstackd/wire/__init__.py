"""The protocol's plumbing that both sides of a gRPC call share: channel and
server options, model <-> protobuf conversions, and domain errors <-> gRPC
status codes (by the ``microstackd-error`` trailer). Used by ``api/`` (the
servers) and ``peers/`` (the clients) only: nothing below them imports grpc
or the generated code (tests/unit/test_layers.py)."""
