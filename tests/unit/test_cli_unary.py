"""``status``'s hand-written unary call (microstackctl.unary): its framing,
read from a socket pair whose other end plays the daemon's responses, and
its failures, mapped as grpcio's are (daemon_errors.call_error)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstackctl import hpack, unary
from microstackctl.errors import CommandError

OK_HEADERS = b"\x88" + b"\x5f\x10application/grpc"  # :status 200, content-type (indexed)
OK_TRAILERS = b"\x40\x0bgrpc-status\x010"


def message(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def frames(*parts: tuple[int, int, int, bytes]) -> bytes:
    return b"".join(unary.frame(*part) for part in parts)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.settimeout(5)
    server.settimeout(5)
    yield client, server
    client.close()
    server.close()


def respond(
    pair: tuple[socket.socket, socket.socket], response: bytes, close: bool = False
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """What ``exchange`` reads from ``response``, and all it sent back."""
    client, server = pair
    server.sendall(response)
    if close:
        server.shutdown(socket.SHUT_WR)
    body, fields = unary.exchange(client, unary.request_bytes("/p.S/M", b"", 30))
    return body, fields, client_sent(server)


def client_sent(server: socket.socket) -> bytes:
    server.settimeout(0.2)
    out = b""
    try:
        while chunk := server.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kind, flags, stream = struct.unpack(">BBI", data[3:9])
        out.append((kind, flags, stream, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"no such node: %C3%A9 100%25", "no such node: é 100%"),
        (b"50% off", "50% off"),
        (b"%", "%"),
        (b"%4", "%4"),
        (b"% 1x", "% 1x"),
        (b"%zz%41", "%zzA"),
        (b"plain", "plain"),
    ],
)
def test_grpc_message_is_percent_decoded(raw: bytes, text: str) -> None:
    assert unary.percent_decode(raw) == text


def test_the_request_is_preface_settings_window_headers_and_one_data_frame() -> None:
    sent = unary.request_bytes("/microstack.cluster.v1.AdminService/Status", b"\x08\x01", 30)
    assert sent.startswith(unary.PREFACE)
    kinds = parse(sent[len(unary.PREFACE) :])
    assert [(k, f, s) for k, f, s, _ in kinds] == [
        (unary.SETTINGS, 0, 0),
        (unary.WINDOW_UPDATE, 0, 0),
        (unary.HEADERS, unary.END_HEADERS, 1),
        (unary.DATA, unary.END_STREAM, 1),
    ]
    settings = dict(struct.iter_unpack(">HI", kinds[0][3]))
    assert settings[0x4] == 2**31 - 1  # SETTINGS_INITIAL_WINDOW_SIZE: never stalled
    assert struct.unpack(">I", kinds[1][3])[0] + 65535 == 2**31 - 1
    headers = dict(hpack.Decoder().decode(kinds[2][3]))
    assert headers == {
        b":method": b"POST",
        b":scheme": b"http",
        b":path": b"/microstack.cluster.v1.AdminService/Status",
        b":authority": b"localhost",
        b"content-type": b"application/grpc",
        b"te": b"trailers",
        b"grpc-timeout": b"30000m",
    }
    assert kinds[2][3][0] == 0x10  # literal never indexed
    assert kinds[3][3] == b"\x00\x00\x00\x00\x02\x08\x01"


def test_settings_are_acked_and_pings_answered(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    body, fields, sent = respond(
        pair,
        frames(
            (unary.SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)),
            (unary.PING, 0, 0, b"12345678"),
            (unary.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)),
            (unary.GOAWAY, 0, 0, struct.pack(">II", 1, 0)),  # graceful: stream 1 still ends
            (unary.HEADERS, unary.END_HEADERS, 1, OK_HEADERS),
            (unary.DATA, 0, 1, message(b"hi")),
            (unary.HEADERS, unary.END_HEADERS | unary.END_STREAM, 1, OK_TRAILERS),
        ),
    )
    assert unary.result(body, fields) == b"hi"
    replies = parse(sent[len(unary.request_bytes("/p.S/M", b"", 30)) :])
    assert replies == [(unary.SETTINGS, unary.ACK, 0, b""), (unary.PING, unary.ACK, 0, b"12345678")]


def test_a_message_split_across_padded_data_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    payload = bytes(range(256)) * 200  # 51 KB: several frames
    data = message(payload)
    chunks = [data[i : i + 16000] for i in range(0, len(data), 16000)]
    parts = [(unary.DATA, unary.PADDED, 1, bytes([3]) + c + b"\0\0\0") for c in chunks[:-1]]
    parts.append((unary.DATA, 0, 1, chunks[-1]))
    body, fields, _ = respond(
        pair,
        frames(
            (unary.HEADERS, unary.END_HEADERS, 1, OK_HEADERS),
            *parts,
            (unary.HEADERS, unary.END_HEADERS | unary.END_STREAM, 1, OK_TRAILERS),
        ),
    )
    assert unary.result(body, fields) == payload


def test_trailers_only_with_continuation_and_a_percent_encoded_message(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    block = (
        OK_HEADERS
        + b"\x40\x0bgrpc-status\x015"
        + b"\x00\x0cgrpc-message\x1bno such node: %C3%A9 100%25"
        + b"\x00\x11microstackd-error\x0cNodeNotFound"
    )
    body, fields, _ = respond(
        pair,
        frames(
            (unary.HEADERS, unary.END_STREAM | unary.PADDED, 1, b"\x02" + block[:10] + b"\0\0"),
            (unary.CONTINUATION, 0, 1, block[10:30]),
            (unary.CONTINUATION, unary.END_HEADERS, 1, block[30:]),
        ),
    )
    with pytest.raises(unary.CallFailed) as failed:
        unary.result(body, fields)
    assert (failed.value.code, failed.value.details, failed.value.error_class) == (
        5,
        "no such node: é 100%",
        "NodeNotFound",
    )


@pytest.mark.parametrize(
    "data",
    [message(b"abc")[:-1], b"\x00\x00\x00\x00\x09abc", b"\x01" + message(b"abc")[1:], b"\x00"],
    ids=["short", "long", "compressed", "no-prefix"],
)
def test_a_bad_length_prefix_is_an_internal_error(data: bytes) -> None:
    with pytest.raises(unary.CallFailed, match="framing") as failed:
        unary.result(data, [(b":status", b"200"), (b"grpc-status", b"0")])
    assert failed.value.code == 13


@pytest.mark.parametrize(
    ("response", "code", "text"),
    [
        (frames((unary.RST_STREAM, 0, 1, struct.pack(">I", 7))), 14, "reset"),
        (frames((unary.RST_STREAM, 0, 1, struct.pack(">I", 2))), 13, "reset"),
        (frames((unary.GOAWAY, 0, 0, struct.pack(">II", 0, 0))), 14, "went away"),
        (frames((unary.GOAWAY, 0, 0, struct.pack(">II", 1, 2))), 14, "went away"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", 14, "not an HTTP/2 frame"),
        (frames((unary.HEADERS, unary.END_HEADERS, 1, b"\xbe")), 13, "bad header block"),
        (
            frames((unary.HEADERS, 0, 1, OK_HEADERS), (unary.DATA, 0, 1, b"x")),
            13,
            "interrupted",
        ),
    ],
    ids=["refused", "reset", "goaway", "goaway-error", "http1", "hpack", "no-continuation"],
)
def test_a_broken_response_fails_clearly(
    pair: tuple[socket.socket, socket.socket], response: bytes, code: int, text: str
) -> None:
    with pytest.raises(unary.CallFailed, match=text) as failed:
        respond(pair, response)
    assert failed.value.code == code


def test_the_connection_closed_mid_response(pair: tuple[socket.socket, socket.socket]) -> None:
    response = frames(
        (unary.HEADERS, unary.END_HEADERS, 1, OK_HEADERS), (unary.DATA, 0, 1, message(b"xyz"))
    )
    with pytest.raises(unary.CallFailed, match="closed the connection mid-response"):
        respond(pair, response[:-2], close=True)


def test_the_deadline_is_the_calls_not_each_reads(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    import time

    client, server = pair
    server.sendall(frames((unary.HEADERS, unary.END_HEADERS, 1, OK_HEADERS)))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        unary.exchange(client, unary.request_bytes("/p.S/M", b"", 1), started + 0.3)
    assert time.monotonic() - started < 2


def test_a_failure_is_the_clis_error_with_grpcios_mapping(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # bound, not listening: connection refused
    try:
        with pytest.raises(CommandError) as failed:
            unary.call(str(path), "/p.S/M", b"", 5)
    finally:
        listener.close()
    assert failed.value.exit_code == 3 and failed.value.daemon_lost
    assert failed.value.message.startswith(f"lost microstackd at {path}: is it running? (")
    with pytest.raises(CommandError) as missing:
        unary.call(str(tmp_path / "none.sock"), "/p.S/M", b"", 5)
    assert missing.value.exit_code == 3
    assert missing.value.message.startswith("no microstackd socket at")
