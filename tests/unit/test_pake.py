"""SPAKE2 on libsodium against the reference implementation (the ``spake2`` package).

``microstackd.pake`` must be the same protocol, bit for bit: same group, same
M and N, same password scalar, same messages for the same randomness, same
session key. The reference is a dev dependency only; these tests are what
ties the two together. Then the adversarial inputs: every way a peer can
send something that is not a point of the prime-order group.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from nacl import bindings
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.parameters.ed25519 import ParamsEd25519

from microstackd.trust import pake

P = 2**255 - 19


def _entropy(seed: int) -> bytes:
    return random.Random(seed).randbytes(64)


def _fixed(data: bytes) -> Callable[[int], bytes]:
    def entropy_f(n: int) -> bytes:
        assert n == 64
        return data

    return entropy_f


def test_m_and_n_are_the_references() -> None:
    assert pake.M == ParamsEd25519.M.to_bytes()
    assert pake.N == ParamsEd25519.N.to_bytes()
    assert bindings.crypto_core_ed25519_is_valid_point(pake.M)
    assert bindings.crypto_core_ed25519_is_valid_point(pake.N)


@pytest.mark.parametrize("seed", range(8))
def test_same_randomness_gives_the_references_messages_and_keys(seed: int) -> None:
    rng = random.Random(seed)
    password = rng.randbytes(32)
    id_a, id_b = b"node-%d" % seed, b"cluster-%d" % seed
    ea, eb = _entropy(1000 + seed), _entropy(2000 + seed)

    ref_a = SPAKE2_A(password, idA=id_a, idB=id_b, entropy_f=_fixed(ea))
    ref_b = SPAKE2_B(password, idA=id_a, idB=id_b, entropy_f=_fixed(eb))
    ours_a = pake.Spake2A(password, id_a, id_b, entropy=ea)
    ours_b = pake.Spake2B(password, id_a, id_b, entropy=eb)

    ma, mb = ours_a.start(), ours_b.start()
    assert ma == ref_a.start()
    assert mb == ref_b.start()
    key = ref_a.finish(mb)
    assert ours_a.finish(mb) == key
    assert ours_b.finish(ma) == key
    assert ref_b.finish(ma) == key


@pytest.mark.parametrize("seed", range(20))
def test_interoperates_with_the_reference_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    password = rng.randbytes(rng.randint(1, 64))
    id_a = rng.randbytes(rng.randint(0, 40))
    id_b = rng.randbytes(rng.randint(0, 40))

    a, b = pake.Spake2A(password, id_a, id_b), SPAKE2_B(password, idA=id_a, idB=id_b)
    ma, mb = a.start(), b.start()
    assert a.finish(mb) == b.finish(ma)

    a2, b2 = SPAKE2_A(password, idA=id_a, idB=id_b), pake.Spake2B(password, id_a, id_b)
    ma, mb = a2.start(), b2.start()
    assert a2.finish(mb) == b2.finish(ma)


def _run(
    pw_a: bytes,
    pw_b: bytes,
    ids_a: tuple[bytes, bytes] = (b"a", b"b"),
    ids_b: tuple[bytes, bytes] = (b"a", b"b"),
) -> tuple[bytes, bytes]:
    a, b = pake.Spake2A(pw_a, *ids_a), pake.Spake2B(pw_b, *ids_b)
    ma, mb = a.start(), b.start()
    return a.finish(mb), b.finish(ma)


def test_same_password_agrees_and_the_key_is_fresh_each_time() -> None:
    k1a, k1b = _run(b"pw", b"pw")
    k2a, k2b = _run(b"pw", b"pw")
    assert k1a == k1b and k2a == k2b
    assert k1a != k2a
    assert len(k1a) == 32


def test_wrong_password_disagrees() -> None:
    ka, kb = _run(b"right", b"wrong")
    assert ka != kb


def test_different_identities_disagree() -> None:
    ka, kb = _run(b"pw", b"pw", ids_a=(b"node-1", b"c"), ids_b=(b"node-2", b"c"))
    assert ka != kb
    ka, kb = _run(b"pw", b"pw", ids_a=(b"n", b"cluster-1"), ids_b=(b"n", b"cluster-2"))
    assert ka != kb


def test_messages_carry_their_side() -> None:
    assert pake.Spake2A(b"pw", b"a", b"b").start()[:1] == b"A"
    assert pake.Spake2B(b"pw", b"a", b"b").start()[:1] == b"B"


# --- adversarial inputs --------------------------------------------------------------------------


def _encode_y(y: int, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


def _small_order_points() -> list[bytes]:
    # The eight points of order 1, 2, 4 and 8 (libsodium's blocklist, in
    # canonical encodings); order 1 is the identity.
    hexes = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ]
    return [bytes.fromhex(h) for h in hexes]


@pytest.mark.parametrize("point", _small_order_points())
def test_small_order_points_are_refused(point: bytes) -> None:
    b = pake.Spake2B(b"pw", b"a", b"b")
    b.start()
    with pytest.raises(pake.PakeError):
        b.finish(b"A" + point)


def test_a_point_outside_the_prime_order_subgroup_is_refused() -> None:
    # A valid group element plus a point of order 8: on the curve, canonical,
    # not small order, but not in the subgroup of order L.
    torsion = _small_order_points()[4]
    element = bindings.crypto_scalarmult_ed25519_base_noclamp(
        bindings.crypto_core_ed25519_scalar_reduce(os.urandom(64))
    )
    mixed = bindings.crypto_core_ed25519_add(element, torsion)
    assert not bindings.crypto_core_ed25519_is_valid_point(mixed)
    b = pake.Spake2B(b"pw", b"a", b"b")
    b.start()
    with pytest.raises(pake.PakeError, match="not a point of the prime-order group"):
        b.finish(b"A" + mixed)


def test_off_curve_and_non_canonical_encodings_are_refused() -> None:
    # y = 2: x^2 = (y^2 - 1) / (d y^2 + 1) has no square root, so no point.
    off_curve = _encode_y(2)
    # y >= p is not canonical (libsodium and RFC 8032 refuse it).
    non_canonical = _encode_y(P + 1)
    for bad in (off_curve, non_canonical, b"\xff" * 32):
        b = pake.Spake2B(b"pw", b"a", b"b")
        b.start()
        with pytest.raises(pake.PakeError):
            b.finish(b"A" + bad)


def test_reflected_message_is_refused() -> None:
    a = pake.Spake2A(b"pw", b"a", b"b")
    ma = a.start()
    with pytest.raises(pake.PakeError, match="side"):
        a.finish(ma)
    # Same point, but claiming the other side: still our own message.
    a = pake.Spake2A(b"pw", b"a", b"b")
    ma = a.start()
    with pytest.raises(pake.PakeError, match="reflected"):
        a.finish(b"B" + ma[1:])


@pytest.mark.parametrize("message", [b"", b"A", b"A" + b"\x00" * 31, b"A" + b"\x00" * 33])
def test_wrong_length_is_refused(message: bytes) -> None:
    b = pake.Spake2B(b"pw", b"a", b"b")
    b.start()
    with pytest.raises(pake.PakeError, match="length"):
        b.finish(message)


def test_the_peer_message_equal_to_the_password_blinding_is_refused() -> None:
    # Y = pw*N makes K the identity: only someone who knows the password can
    # send it, but the exchange must still fail rather than derive a key from
    # a fixed point.
    password = b"pw"
    pw_scalar = pake.password_scalar(password)
    y = bindings.crypto_scalarmult_ed25519_noclamp(pw_scalar, pake.N)
    a = pake.Spake2A(password, b"a", b"b")
    a.start()
    with pytest.raises(pake.PakeError):
        a.finish(b"B" + y)


def test_each_step_runs_once_and_in_order() -> None:
    a = pake.Spake2A(b"pw", b"a", b"b")
    b = pake.Spake2B(b"pw", b"a", b"b")
    with pytest.raises(pake.PakeError, match="start"):
        a.finish(b.start())
    a = pake.Spake2A(b"pw", b"a", b"b")
    a.start()
    with pytest.raises(pake.PakeError, match="once"):
        a.start()
    with pytest.raises(pake.PakeError, match="once"):  # misuse spends it
        a.finish(pake.Spake2B(b"pw", b"a", b"b").start())
    a = pake.Spake2A(b"pw", b"a", b"b")
    ma = a.start()
    b = pake.Spake2B(b"pw", b"a", b"b")
    mb = b.start()
    a.finish(mb)
    with pytest.raises(pake.PakeError, match="once"):
        a.finish(mb)
    # A failed finish spends the object too: no second guess on one start.
    b2 = pake.Spake2B(b"pw", b"a", b"b")
    b2.start()
    with pytest.raises(pake.PakeError):
        b2.finish(b"A" + b"\x00" * 32)
    with pytest.raises(pake.PakeError, match="once"):
        b2.finish(ma)


def test_bad_arguments_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        pake.Spake2A("pw", b"a", b"b")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pake.Spake2A(b"pw", b"a", b"b", entropy=b"short")
