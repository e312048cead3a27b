"""A small HPACK decoder (RFC 7541) for the headers and trailers of one call.

What ``unary.py`` reads from the daemon: indexed fields of the static and
the dynamic table, literals with and without indexing, table size updates,
and Huffman-coded strings (Appendix B; the table is built on first use,
so a response without one costs nothing for it).
"""

from __future__ import annotations

#: RFC 7541 Appendix A.
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)

#: RFC 7541 Appendix B, the code length of each symbol (256 is EOS). The
#: code is canonical: codes follow in order of (length, symbol), so these
#: lengths alone give every code (0x1ff8 for symbol 0, 0x3fffffff for EOS).
_LENGTHS = bytes(
    [13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28]
    + [28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28]
    + [6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6]
    + [5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10]
    + [13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
    + [7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6]
    + [15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5]
    + [6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28]
    + [20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23]
    + [24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24]
    + [22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23]
    + [21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23]
    + [26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25]
    + [19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27]
    + [20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23]
    + [26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30]
)
EOS = 256
_codes: dict[tuple[int, int], int] = {}


class HpackError(Exception):
    """A header block this decoder cannot read (a protocol error)."""


def huffman_codes() -> dict[tuple[int, int], int]:
    """(length, code) → symbol, built once."""
    if not _codes:
        code, length = 0, 0
        for symbol in sorted(range(257), key=lambda s: (_LENGTHS[s], s)):
            code <<= _LENGTHS[symbol] - length
            length = _LENGTHS[symbol]
            _codes[(length, code)] = symbol
            code += 1
    return _codes


def huffman_decode(data: bytes) -> bytes:
    codes = huffman_codes()
    out = bytearray()
    acc = bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            acc = (acc << 1) | ((byte >> shift) & 1)
            bits += 1
            symbol = codes.get((bits, acc))
            if symbol is not None:
                if symbol == EOS:
                    raise HpackError("Huffman string contains EOS")
                out.append(symbol)
                acc = bits = 0
            elif bits > 30:
                raise HpackError("bad Huffman code")
    # Padding: fewer than 8 bits, the most significant bits of EOS (all ones).
    if bits > 7 or acc != (1 << bits) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: ``value`` on a ``prefix_bits`` prefix of ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_never_indexed(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Each field as a literal never indexed, with a literal name (6.2.3)."""
    out = bytearray()
    for name, value in headers:
        out += b"\x10" + encode_int(len(name), 7) + name + encode_int(len(value), 7) + value
    return bytes(out)


class Decoder:
    """One connection's decoding state: its dynamic table."""

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size  # SETTINGS_HEADER_TABLE_SIZE we allow
        self.size_limit = max_size  # the encoder's current choice
        self.table: list[tuple[bytes, bytes]] = []  # newest first
        self.size = 0

    def _evict(self) -> None:
        while self.size > self.size_limit:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32

    def _add(self, name: bytes, value: bytes) -> None:
        self.table.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise HpackError("header index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        index -= len(STATIC_TABLE) + 1
        if index >= len(self.table):
            raise HpackError("header index beyond the dynamic table")
        return self.table[index]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(block)

        def integer(prefix_bits: int) -> int:
            nonlocal pos
            if pos >= end:
                raise HpackError("truncated header block")
            limit = (1 << prefix_bits) - 1
            value = block[pos] & limit
            pos += 1
            if value < limit:
                return value
            shift = 0
            while True:
                if pos >= end:
                    raise HpackError("truncated integer")
                byte = block[pos]
                pos += 1
                value += (byte & 127) << shift
                shift += 7
                if not byte & 128:
                    return value
                if shift > 28:
                    raise HpackError("integer too large")

        def string() -> bytes:
            nonlocal pos
            if pos >= end:
                raise HpackError("truncated header block")
            huffman = block[pos] & 128
            length = integer(7)
            if pos + length > end:
                raise HpackError("truncated string")
            raw = block[pos : pos + length]
            pos += length
            return huffman_decode(raw) if huffman else raw

        while pos < end:
            byte = block[pos]
            if byte & 128:  # indexed field
                headers.append(self._entry(integer(7)))
            elif byte & 64:  # literal with incremental indexing
                index = integer(6)
                name = self._entry(index)[0] if index else string()
                value = string()
                self._add(name, value)
                headers.append((name, value))
            elif byte & 32:  # dynamic table size update
                size = integer(5)
                if size > self.max_size:
                    raise HpackError("table size update beyond SETTINGS_HEADER_TABLE_SIZE")
                self.size_limit = size
                self._evict()
            else:  # literal without indexing (0000) or never indexed (0001)
                index = integer(4)
                name = self._entry(index)[0] if index else string()
                headers.append((name, string()))
        return headers
