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
