"""Fail a long wait as soon as a node's service fails, with that service's
own words, instead of waiting out a time-out that never says why.

admit-to-cloud waits up to minutes for Nova to see a compute's nova-compute;
a nova-compute that crash-loops (its virt driver missing, libvirt down)
never shows up there. ``unless_a_service_fails`` runs the wait beside a
watch of the node's services (through its agent): the first one reported
``failed`` ends the wait with its message (exit status, last log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from microstackd import errors
from microstackd.model import ServiceRecord

T = TypeVar("T")
#: How often the node's services are asked for, seconds.
INTERVAL = 5.0

Fetch = Callable[[], Awaitable[list[ServiceRecord]]]


def first_failed(services: list[ServiceRecord]) -> ServiceRecord | None:
    return next((s for s in services if s.state == "failed"), None)


async def fail_when_a_service_fails(
    fetch: Fetch, node: str, what: str, interval: float = INTERVAL
) -> NoReturn:
    """Poll ``fetch`` until a service is failed, then raise
    ``errors.ServiceFailed`` naming it. A node that cannot be asked is asked
    again (the wait it watches has its own time-out)."""
    while True:
        try:
            failed = first_failed(await fetch())
        except errors.NodeUnreachable:
            failed = None
        if failed is not None:
            raise errors.ServiceFailed(
                f"{failed.name} on {node} failed while {what}: {failed.message or failed.state}"
            )
        await asyncio.sleep(interval)


async def unless_a_service_fails(
    wait: Awaitable[T], fetch: Fetch, node: str, what: str, interval: float = INTERVAL
) -> T:
    """``wait``'s result, unless one of the node's services fails first."""
    main = asyncio.ensure_future(wait)
    watch = asyncio.ensure_future(fail_when_a_service_fails(fetch, node, what, interval))
    try:
        await asyncio.wait({main, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            watch.result()  # raises
        return main.result()
    finally:
        for task in (main, watch):
            task.cancel()
        for task in (main, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
