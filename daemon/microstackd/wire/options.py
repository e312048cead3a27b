"""gRPC options shared by every server and channel: bounded messages,
keepalive so a cut link is noticed (DESIGN.md: 2 s keepalive saw a cut in
~5.6 s)."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    # grpc binds with SO_REUSEPORT by default: a second daemon on the same
    # port would silently share it (and take half its connections).
    ("grpc.so_reuseport", 0),
    # A TCP connection that never finishes its TLS handshake is closed after
    # this (grpc's default: 120 s); a peer on loopback or a LAN needs ms.
    ("grpc.server_handshake_timeout_ms", 10_000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_concurrent_streams", 10_000),
    # grpc core queues calls the application has not picked up yet and, past
    # 1,000 queued (its default), cancels new ones at random (every one past
    # 3,000). When hundreds of nodes join at once the control's event loop
    # is busy and their hellos and Enrol calls queue there: 2,000 joins at
    # once lost 7 % of them as CANCELLED (docs/performance.md). A deeper
    # queue lets such a burst through; it stays bounded, and a queued call
    # still gives up after grpc's 30 s unrequested-call limit. On the
    # bootstrap port strangers can fill it too, but grpc's shedding would
    # not have protected joiners from a flood either: it drops at random.
    ("grpc.server.max_pending_requests", 10_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
]


#: The bootstrap port's messages: a hello, a CSR (at most 16 KiB) and two
#: SPAKE2 messages; nothing near grpc's default.
BOOTSTRAP_MAX_MESSAGE_BYTES = 64 * 1024
#: A joiner uses one stream (its exchange), maybe a health check beside it.
BOOTSTRAP_STREAMS_PER_CONNECTION = 2


def bootstrap_server_options(max_connections: int) -> list[tuple[str, int | str]]:
    """The bootstrap server's options, behind the gate (``api/gate.py``): what
    a stranger may hold open is small and short-lived. An exchange takes
    milliseconds; a connection with no stream is closed after 15 s, any
    connection after 2 minutes (then 10 s to finish its calls), at most two
    streams each; the gate caps connections, grpc's own total cap is the
    backstop for callers on loopback that do not come through the gate."""
    own: dict[str, int | str] = {
        "grpc.max_receive_message_length": BOOTSTRAP_MAX_MESSAGE_BYTES,
        "grpc.max_concurrent_streams": BOOTSTRAP_STREAMS_PER_CONNECTION,
        "grpc.max_connection_idle_ms": 15_000,
        "grpc.max_connection_age_ms": 120_000,
        "grpc.max_connection_age_grace_ms": 10_000,
        "grpc.max_allowed_incoming_connections": max_connections + 64,
    }
    return [*((k, v) for k, v in SERVER_OPTIONS if k not in own), *own.items()]
