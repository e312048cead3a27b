"""Online guessing is limited however the guesses are spread over streams
and connections from one source (issue 14, item 1), against a real control
with the default lock-out (2 free failures, then 1 s doubling to 60 s).

The attacker comes from 127.0.0.2 (the joiners of these tests come from
127.0.0.1): it opens exchanges on several connections, two streams each,
and answers them all at once; then it keeps guessing as fast as the
control lets it. A check is a ``bootstrap failed`` line in the control's
log: the control looked at a confirmation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.control.ratelimit import FailureLimiter
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.trust import x509
from tests.integration.attacker import (
    SourceRelay,
    answer,
    channel,
    derive,
    open_exchange,
    prepare,
    send,
)
from tests.integration.harness import Node
from tests.integration.test_adversarial import PASSWORD

ATTACKER = "127.0.0.2"
#: The daemon's default open exchanges per source (config.bootstrap_per_source).
OPEN_PER_SOURCE = 8
#: How long the sustained attack runs.
ATTACK_SECONDS = 10.0


def _checks(control: Node, mark: int) -> int:
    return control.log.read_text()[mark:].count("msg='bootstrap failed'")


def _best_attacker_checks(seconds: float, already: int) -> int:
    """The most checks the documented limit allows in ``seconds`` to an
    attacker that had ``already`` failures at t=0: it guesses the instant
    its lock-out ends (docs/security.md)."""
    limiter, now = FailureLimiter(1.0, 60.0, free=2), 0.0
    for _ in range(already):
        limiter.failed("a", 0.0)
    checks = 0
    while True:
        now += limiter.retry_after("a", now)
        if now > seconds:
            return checks
        limiter.failed("a", now)
        checks += 1


def test_parallel_guesses_are_checked_at_most_at_the_documented_rate(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl")
    control.init_control(password_file)
    target = (control.address, control.port)
    mark = len(control.log.read_text())

    async def burst() -> tuple[list[grpc.StatusCode], list[object]]:
        cert = await fetch_bootstrap_certificate(*target)
        fp = x509.fingerprint(cert)
        async with SourceRelay(target, ATTACKER) as relay:
            channels = [channel(relay, cert) for _ in range(OPEN_PER_SOURCE // 2 + 1)]
            try:
                stubs = [pb_grpc.BootstrapServiceStub(c) for c in channels]
                opened = await asyncio.gather(
                    *(
                        open_exchange(stubs[i // 2], f"guess-{i}", f"127.0.9.{i + 1}")
                        for i in range(OPEN_PER_SOURCE)
                    )
                )
                # One more exchange, on a connection of its own, while eight are open.
                extra = await open_exchange(stubs[-1], "guess-extra", "127.0.9.99")
                guesses = [g for g in opened if not isinstance(g, grpc.StatusCode)]
                # Every wrong guess at once, then the right password, sent once
                # the wrong ones are checked: sent with them, it may be checked
                # first, and a proven password rightly clears the source's
                # failures. Every response is built before the burst (the
                # right one's KDF included): built inside it, on a loaded
                # machine the answers would leave over more than the 1 s
                # lock-out the wrong ones earn.
                wrong = [await prepare(g, fp, None) for g in guesses[:-1]]
                right = await prepare(
                    guesses[-1], fp, None, verifier=await derive(guesses[-1], PASSWORD)
                )
                sends = (send(g, r) for g, r in zip(guesses, wrong, strict=False))
                codes = [*await asyncio.gather(*sends), await send(guesses[-1], right)]
                return list(codes), [*opened, extra]
            finally:
                await asyncio.gather(*(c.close(None) for c in channels))

    codes, opened = asyncio.run(burst())
    assert all(not isinstance(o, grpc.StatusCode) for o in opened[:-1]), opened
    assert opened[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, "a ninth open exchange was allowed"
    burst_checks = _checks(control, mark)
    assert burst_checks == 3, f"{burst_checks} of {len(codes)} parallel guesses were checked"
    assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, (
        "the right password, answered while the source was locked out, was checked"
    )
    assert not [n for n in control.status()["nodes"] if n["name"].startswith("guess")]

    # The sustained attack: always eight exchanges open, each answered at once.
    mark = len(control.log.read_text())

    async def sustained() -> int:
        cert = await fetch_bootstrap_certificate(*target)
        fp = x509.fingerprint(cert)
        answered = 0
        deadline = time.monotonic() + ATTACK_SECONDS
        async with SourceRelay(target, ATTACKER) as relay:
            channels = [channel(relay, cert) for _ in range(OPEN_PER_SOURCE // 2)]
            stubs = [pb_grpc.BootstrapServiceStub(c) for c in channels]

            async def guesser(i: int) -> None:
                nonlocal answered
                while time.monotonic() < deadline:
                    guess = await open_exchange(stubs[i // 2], f"guess-{i}", f"127.0.9.{i + 1}")
                    if isinstance(guess, grpc.StatusCode):
                        await asyncio.sleep(0.02)  # locked out: knock again soon
                        continue
                    await answer(guess, fp, None)
                    answered += 1

            try:
                await asyncio.gather(*(guesser(i) for i in range(OPEN_PER_SOURCE)))
            finally:
                await asyncio.gather(*(c.close(None) for c in channels))
        return answered

    answered = asyncio.run(sustained())
    checks = _checks(control, mark)
    allowed = _best_attacker_checks(ATTACK_SECONDS, already=burst_checks)
    print(
        f"measured: {burst_checks} checks of {len(codes)} parallel guesses; then {checks} "
        f"checks of {answered} answers in {ATTACK_SECONDS:g} s (the limit allows {allowed})"
    )
    assert 1 <= checks <= allowed, (checks, allowed, answered)

    # Other sources are never affected: a joiner from 127.0.0.1 gets in at once.
    node = make_node("node-1")
    node.join(control, password_file)
    assert control.status()["nodes"][1]["state"] == "active"
