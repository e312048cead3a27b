from microstackd.control.ratelimit import FailureLimiter


def test_failures_double_the_lockout_up_to_the_cap():
    limiter = FailureLimiter(base=1, cap=5, free=0)
    assert limiter.retry_after("a", 0) == 0
    assert [limiter.failed("a", 0) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert limiter.retry_after("a", 1) == 4


def test_other_sources_are_not_affected_and_success_clears():
    limiter = FailureLimiter(base=1, cap=60, free=0)
    for _ in range(6):
        limiter.failed("attacker", 100)
    assert limiter.retry_after("attacker", 100) == 32
    assert limiter.retry_after("honest", 100) == 0
    limiter.succeeded("attacker")
    assert limiter.retry_after("attacker", 100) == 0


def test_memory_is_bounded_by_forgetting_expired_sources():
    limiter = FailureLimiter(base=1, cap=1, free=0, max_sources=10)
    for i in range(10):
        limiter.failed(f"s{i}", 0)
    limiter.failed("new", 100)
    assert len(limiter._entries) == 1


def test_the_first_failures_are_free_for_an_operator_who_mistyped():
    limiter = FailureLimiter(base=1, cap=60, free=2)
    assert [limiter.failed("a", 0) for _ in range(4)] == [0, 0, 1, 2]
