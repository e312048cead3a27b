"""One unary gRPC call to the local daemon over its Unix socket, without grpcio.

``status`` makes only this call, and ``import grpc`` (asyncio, ssl,
logging, grpc.aio) is half of its run time (docs/performance.md). This is
the least HTTP/2 (RFC 9113) and gRPC that call needs: the client preface
and SETTINGS (a window large enough for a 1,001-node response), one
HEADERS and one DATA frame with END_STREAM; then the response's HEADERS,
CONTINUATION and DATA frames and its trailers, read with ``hpack``. A
failure is mapped by ``daemon_errors.call_error``, as grpcio's are.
"""

from __future__ import annotations

import _socket  # not socket: its enum and selectors cost 3 ms, for nothing used here
import struct
import time

from microstackctl import hpack
from microstackctl.daemon_errors import (
    DEADLINE_EXCEEDED,
    ERROR_METADATA,
    INTERNAL,
    UNAVAILABLE,
    UNKNOWN,
    call_error,
    check_socket,
    permission_denied,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
STREAM = 1
MAX_WINDOW = 2**31 - 1
#: A response larger than this is refused (a 1,001-node status is ~0.5 MB).
#: SETTINGS_MAX_FRAME_SIZE: the default, which the client does not raise.
MAX_FRAME = 16384
MAX_RESPONSE = 64 * 1024 * 1024


class CallFailed(Exception):
    """The call ended with a gRPC status other than OK."""

    def __init__(self, code: int, details: str, error_class: str | None = None) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.error_class = error_class


_HEX = frozenset(b"0123456789abcdefABCDEF")


def percent_decode(raw: bytes) -> str:
    """A grpc-message as gRPC percent-encodes it (an invalid escape stays as it is)."""
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and all(c in _HEX for c in part[:2]):
            out += bytes([int(part[:2], 16)]) + part[2:]
        else:
            out += b"%" + part
    return out.decode("utf-8", "replace")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def request_bytes(path: str, message: bytes, timeout: float) -> bytes:
    """Everything the client sends, in one write."""
    settings = struct.pack(">HIHIHI", 0x2, 0, 0x4, MAX_WINDOW, 0x3, 1)  # no push, window, 1 stream
    headers = hpack.encode_never_indexed(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"%dm" % max(1, int(timeout * 1000))),
        ]
    )
    body = struct.pack(">BI", 0, len(message)) + message
    return (
        PREFACE
        + frame(SETTINGS, 0, 0, settings)
        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
        + frame(HEADERS, END_HEADERS, STREAM, headers)
        + frame(DATA, END_STREAM, STREAM, body)
    )


class _Reader:
    def __init__(self, sock: _socket.socket, deadline: float | None = None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if self.deadline is not None:  # the call's deadline, not each read's
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise CallFailed(UNAVAILABLE, "microstackd closed the connection mid-response")
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def frame(self) -> tuple[int, int, int, bytes]:
        head = self.exactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = struct.unpack(">BBI", head[3:])
        if length > MAX_FRAME:
            raise CallFailed(UNAVAILABLE, "not an HTTP/2 frame from microstackd")
        return kind, flags, stream & 0x7FFFFFFF, self.exactly(length)


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise CallFailed(INTERNAL, "bad HTTP/2 padding from microstackd")
        return payload[1 : len(payload) - payload[0]]
    return payload


_RST_CODES = {7: UNAVAILABLE, 8: 1}  # REFUSED_STREAM, CANCEL


def exchange(
    sock: _socket.socket, request: bytes, deadline: float | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Send ``request`` and read the response (by ``deadline``, a
    ``time.monotonic()``): its body and every header and trailer field
    (the trailers last)."""
    sock.sendall(request)
    reader = _Reader(sock, deadline)
    decoder = hpack.Decoder()
    body = bytearray()
    fields: list[tuple[bytes, bytes]] = []
    while True:
        kind, flags, stream, payload = reader.frame()
        if kind == SETTINGS:
            if not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            last_stream, error = struct.unpack(">II", payload[:8])
            if error or (last_stream & 0x7FFFFFFF) < STREAM:
                raise CallFailed(UNAVAILABLE, f"microstackd went away (HTTP/2 error {error})")
        elif stream != STREAM:
            continue  # WINDOW_UPDATE, PRIORITY of the connection; unknown frames
        elif kind == RST_STREAM:
            (error,) = struct.unpack(">I", payload[:4])
            code = _RST_CODES.get(error, INTERNAL)
            raise CallFailed(code, f"stream reset by microstackd (HTTP/2 error {error})")
        elif kind == DATA:
            body += _unpad(flags, payload)
            if len(body) > MAX_RESPONSE:
                raise CallFailed(INTERNAL, "response from microstackd too large")
            if flags & END_STREAM:
                return bytes(body), fields
        elif kind == HEADERS:
            block = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                block = block[5:]
            end_stream = flags & END_STREAM
            while not flags & END_HEADERS:
                kind, flags, stream, payload = reader.frame()
                if kind != CONTINUATION or stream != STREAM:
                    raise CallFailed(INTERNAL, "HTTP/2 header block interrupted")
                block += payload
            try:
                fields += decoder.decode(block)
            except hpack.HpackError as exc:
                raise CallFailed(INTERNAL, f"bad header block from microstackd: {exc}") from None
            if end_stream:
                return bytes(body), fields


def result(body: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """The response message, or ``CallFailed`` with the call's status."""
    last = {name: value for name, value in fields}
    status = last.get(b"grpc-status")
    if status is None:
        http = last.get(b":status", b"?").decode("ascii", "replace")
        raise CallFailed(UNKNOWN if http == "200" else UNAVAILABLE, f"no grpc-status (HTTP {http})")
    try:
        code = int(status)
    except ValueError:
        raise CallFailed(UNKNOWN, "bad grpc-status from microstackd") from None
    if code:
        message = percent_decode(last.get(b"grpc-message", b""))
        error = last.get(ERROR_METADATA.encode())
        raise CallFailed(code, message, error.decode("utf-8", "replace") if error else None)
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise CallFailed(INTERNAL, "bad gRPC message framing from microstackd")
    return body[5:]


def call(path: str, method: str, message: bytes, timeout: float) -> bytes:
    """The response of ``method`` (``/package.Service/Method``) to the
    serialized ``message``, from the daemon at socket ``path``; a failure
    as the CLI's ``CommandError``, mapped as grpcio's are."""
    check_socket(path)
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except PermissionError:
            raise permission_denied(path) from None
        except OSError as exc:
            raise CallFailed(UNAVAILABLE, f"connect: {exc.strerror or exc}") from None
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            return result(*exchange(sock, request_bytes(method, message, timeout), deadline))
        except TimeoutError:
            raise CallFailed(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except OSError as exc:
            reason = exc.strerror or exc
            raise CallFailed(UNAVAILABLE, f"microstackd connection: {reason}") from None
    except CallFailed as exc:
        raise call_error(exc.code, exc.details, exc.error_class, path) from None
    finally:
        sock.close()
