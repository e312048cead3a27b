"""A long wait ends as soon as a node's service fails, with that service's words."""

from __future__ import annotations

import asyncio

import pytest

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.servicewatch import unless_a_service_fails

CRASH = (
    "nova-compute keeps exiting before it is ready (3 times so far; restarted each time). "
    "The last time: nova-compute exited with status 1; last log lines:\n"
    "ERROR nova.virt.driver Unable to load the virtualization driver: No module named 'libvirt'"
)


def test_a_failed_service_ends_the_wait_with_its_own_message():
    answers = [
        errors.NodeUnreachable("cannot reach the agent of node-1"),  # asked again
        [ServiceRecord("ovsdb-server", "running"), ServiceRecord("nova-compute", "starting")],
        [ServiceRecord("ovsdb-server", "running"), ServiceRecord("nova-compute", "failed", CRASH)],
    ]
    cancelled = []

    async def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def admit():
        try:
            await asyncio.sleep(300)  # Nova never sees a crash-looping nova-compute
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(errors.ServiceFailed) as failed:
            await unless_a_service_fails(admit(), fetch, "node-1", "being admitted", interval=0.01)
        return failed.value.message

    message = asyncio.run(main())
    assert message.startswith("nova-compute on node-1 failed while being admitted: ")
    assert "Unable to load the virtualization driver" in message
    assert cancelled == [True] and answers == []


def test_the_wait_returns_its_result_when_nothing_fails():
    async def fetch():
        return [ServiceRecord("nova-compute", "running")]

    async def admit():
        await asyncio.sleep(0.05)
        return {"host": "node-1"}

    result = asyncio.run(unless_a_service_fails(admit(), fetch, "node-1", "x", interval=0.01))
    assert result == {"host": "node-1"}


def test_the_waits_own_error_is_raised_unchanged():
    async def fetch():
        return []

    async def admit():
        raise errors.CloudError("node-1: timed out after 300 s waiting for nova-compute")

    with pytest.raises(errors.CloudError, match="timed out after 300 s"):
        asyncio.run(unless_a_service_fails(admit(), fetch, "node-1", "x", interval=0.01))
