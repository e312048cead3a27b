"""The CLI's HPACK decoder (microstackctl.hpack) against RFC 7541's own
examples (Appendix C), Huffman included, and its refusals."""

from __future__ import annotations

import pytest

from microstackctl import hpack

H = list[tuple[bytes, bytes]]


def fields(*pairs: tuple[str, str]) -> H:
    return [(n.encode(), v.encode()) for n, v in pairs]


REQ1 = fields((":method", "GET"), (":scheme", "http"), (":path", "/"))
AUTH = (":authority", "www.example.com")


def check(decoder: hpack.Decoder, hexa: str, expected: H, table: H, size: int) -> None:
    assert decoder.decode(bytes.fromhex(hexa)) == expected
    assert decoder.table == table
    assert decoder.size == size


@pytest.mark.parametrize(
    "blocks",
    [
        # C.3: requests without Huffman coding.
        (
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ),
        # C.4: the same requests with Huffman coding.
        (
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ),
    ],
    ids=["C.3", "C.4"],
)
def test_rfc_requests_decode_with_their_dynamic_table(blocks: tuple[str, str, str]) -> None:
    decoder = hpack.Decoder()
    check(decoder, blocks[0], [*REQ1, *fields(AUTH)], fields(AUTH), 57)
    cache = ("cache-control", "no-cache")
    check(decoder, blocks[1], [*REQ1, *fields(AUTH, cache)], fields(cache, AUTH), 110)
    custom = ("custom-key", "custom-value")
    third = fields((":method", "GET"), (":scheme", "https"), (":path", "/index.html"), AUTH)
    check(decoder, blocks[2], [*third, *fields(custom)], fields(custom, cache, AUTH), 164)


def test_rfc_responses_with_huffman_evict_from_a_256_octet_table() -> None:
    # C.6: SETTINGS_HEADER_TABLE_SIZE 256, so entries are evicted.
    decoder = hpack.Decoder(256)
    date1 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT")
    loc = ("location", "https://www.example.com")
    private = ("cache-control", "private")
    check(
        decoder,
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff"
        "6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        fields((":status", "302"), private, date1, loc),
        fields(loc, date1, private, (":status", "302")),
        222,
    )
    check(
        decoder,
        "4883640effc1c0bf",
        fields((":status", "307"), private, date1, loc),
        fields((":status", "307"), loc, date1, private),
        222,
    )
    date3 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT")
    cookie = ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
    check(
        decoder,
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7"
        "b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        fields((":status", "200"), private, date3, loc, ("content-encoding", "gzip"), cookie),
        fields(cookie, ("content-encoding", "gzip"), date3),
        215,
    )


def test_what_grpcio_sends_for_a_failed_call() -> None:
    # The probe of docs/performance.md: :status indexed, content-type and
    # grpc-status with incremental indexing, the rest without indexing.
    block = (
        b"\x88"
        + b"\x5f\x10application/grpc"
        + b"\x40\x0bgrpc-status\x015"
        + b"\x00\x0cgrpc-message\x05a%25b"
    )
    decoder = hpack.Decoder()
    assert decoder.decode(block) == fields(
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "5"),
        ("grpc-message", "a%25b"),
    )
    # A second block may refer to the entries the first added.
    assert decoder.decode(b"\xbe\xbf") == fields(
        ("grpc-status", "5"), ("content-type", "application/grpc")
    )


def test_a_size_update_evicts_and_is_bounded_by_our_setting() -> None:
    decoder = hpack.Decoder()
    decoder.decode(b"\x40\x01a\x01b")
    assert decoder.size == 34
    decoder.decode(b"\x20")  # size 0: the table empties
    assert decoder.table == [] and decoder.size == 0
    decoder.decode(b"\x3f\xe1\x1f")  # 4096, the most we allow
    assert decoder.size_limit == 4096
    with pytest.raises(hpack.HpackError, match="table size update"):
        decoder.decode(b"\x3f\xe2\x1f")  # 4097


def test_never_indexed_literals_round_trip_long_values_included() -> None:
    headers = [(b":path", b"/x" * 100), (b"te", b"trailers")]
    decoder = hpack.Decoder()
    assert decoder.decode(hpack.encode_never_indexed(headers)) == headers
    assert decoder.table == []  # never indexed


def test_every_huffman_code_is_the_rfcs() -> None:
    by_symbol = {symbol: key for key, symbol in hpack.huffman_codes().items()}
    # A few rows of RFC 7541 Appendix B as printed there: (length, code).
    assert by_symbol[0] == (13, 0x1FF8)
    assert by_symbol[ord(" ")] == (6, 0x14)
    assert by_symbol[ord("0")] == (5, 0x0)
    assert by_symbol[ord("a")] == (5, 0x3)
    assert by_symbol[ord("%")] == (6, 0x15)
    assert by_symbol[ord("~")] == (13, 0x1FFD)
    assert by_symbol[255] == (26, 0x3FFFFEE)
    assert by_symbol[hpack.EOS] == (30, 0x3FFFFFFF)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "beyond the dynamic table"),
        (b"\x00\x05ab", "truncated string"),
        (b"\xff", "truncated"),
        (b"\x00\x81\x00\x00", "Huffman padding"),  # 8 zero bits: not EOS padding
        (b"\x00\x84\xff\xff\xff\xff\x00", "EOS"),  # the 30-bit EOS in a string
    ],
)
def test_a_bad_block_is_refused(block: bytes, error: str) -> None:
    with pytest.raises(hpack.HpackError, match=error):
        hpack.Decoder().decode(block)
