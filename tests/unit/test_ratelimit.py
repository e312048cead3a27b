import pytest

from microstackd.control.ratelimit import FailureLimiter, OpenLimit, Quiet, source_key


def test_failures_double_the_lockout_up_to_the_cap() -> None:
    limiter = FailureLimiter(base=1, cap=5, free=0)
    assert limiter.retry_after("a", 0) == 0
    assert [limiter.failed("a", 0) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert limiter.retry_after("a", 1) == 4


def test_other_sources_are_not_affected_and_success_clears() -> None:
    limiter = FailureLimiter(base=1, cap=60, free=0)
    for _ in range(6):
        limiter.failed("attacker", 100)
    assert limiter.retry_after("attacker", 100) == 32
    assert limiter.retry_after("honest", 100) == 0
    limiter.succeeded("attacker")
    assert limiter.retry_after("attacker", 100) == 0


def test_memory_is_bounded_by_forgetting_expired_sources() -> None:
    limiter = FailureLimiter(base=1, cap=1, free=0, max_sources=10)
    for i in range(10):
        limiter.failed(f"s{i}", 0)
    limiter.failed("new", 100)
    assert len(limiter._entries) == 1


def test_the_first_failures_are_free_for_an_operator_who_mistyped() -> None:
    limiter = FailureLimiter(base=1, cap=60, free=2)
    assert [limiter.failed("a", 0) for _ in range(4)] == [0, 0, 1, 2]


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack socket's view of IPv4
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(address: str, key: str) -> None:
    assert source_key(address) == key


def test_one_ipv6_host_cannot_spread_its_guesses_over_its_addresses() -> None:
    limiter = FailureLimiter(base=1, cap=60, free=2)
    for i in range(1, 4):
        limiter.failed(source_key(f"2001:db8::{i:x}"), 0)
    assert limiter.retry_after(source_key("2001:db8::ffff:1"), 0) == 1
    assert limiter.retry_after(source_key("2001:db8:0:1::1"), 0) == 0  # the next /64


def test_open_things_are_capped_per_source() -> None:
    limit = OpenLimit(2)
    assert limit.acquire("a") and limit.acquire("a") and not limit.acquire("a")
    assert limit.acquire("b")
    limit.release("a")
    assert limit.acquire("a") and limit.held("a") == 2


def test_refusals_are_logged_once_a_window_with_a_count() -> None:
    quiet = Quiet(window=10)
    assert quiet.speak("a", 0) == 0
    assert [quiet.speak("a", t) for t in (1, 2, 3)] == [None, None, None]
    assert quiet.speak("b", 3) == 0
    assert quiet.speak("a", 10.5) == 3
