"""The control's side of the heartbeat stream (ClusterService.Heartbeats),
with a real control and a member's real credentials: what the unary
heartbeat refuses, the stream refuses too (a version outside the skew
window, recorded for ``status``); a stream is authorised when it opens, so
a member that renewed opens a new one, and that first call with the new
certificate revokes the old and ends the old stream at once; removing the
node ends its stream at once."""

from __future__ import annotations

import asyncio
import dataclasses

from microstackd import errors, versions
from microstackd.model import ClusterRecord, NodeCredentials, ServiceRecord, Software
from microstackd.peers.cluster import ControlClient, HeartbeatStream
from microstackd.trust import x509
from tests.integration.harness import Node

OURS = Software(versions.VERSION, versions.API_VERSION)
RUNNING = [ServiceRecord("nova-compute", "running")]
#: A member that speaks an API before the control's: outside the window.
TOO_OLD = Software("0.0.1", "v0")


async def _first_answer(stream: HeartbeatStream) -> None:
    await stream.beat(RUNNING)
    await asyncio.wait_for(stream.answered.wait(), 10)


async def _ended(stream: HeartbeatStream) -> errors.MicrostackError:
    return await asyncio.wait_for(asyncio.shield(stream.ended), 10)


def _node(control: Node, name: str) -> dict[str, object]:
    return next(n for n in control.status()["nodes"] if n["name"] == name)


def test_a_version_outside_the_window_ends_the_stream_and_is_recorded(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member

    async def main() -> tuple[errors.MicrostackError, bool]:
        client = ControlClient(cluster, creds)
        try:
            old = client.heartbeats(TOO_OLD)
            await _first_answer(old)
            refused = await _ended(old)
            await old.close()
            again = client.heartbeats(OURS)  # once the member is upgraded
            await _first_answer(again)
            taken = not again.ended.done() and again.interval > 0
            await again.close()
            return refused, taken
        finally:
            await client.close()

    refused, taken = asyncio.run(main())
    assert isinstance(refused, errors.VersionSkew)
    assert "upgrade microstackd on node-1" in refused.message
    assert taken
    assert _node(control, "node-1")["version"] == OURS.version  # the last one declared


def test_a_version_refused_is_shown_in_status(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member

    async def main() -> None:
        client = ControlClient(cluster, creds)
        try:
            old = client.heartbeats(TOO_OLD)
            await _first_answer(old)
            await _ended(old)
            await old.close()
        finally:
            await client.close()

    asyncio.run(main())
    node = _node(control, "node-1")
    assert node["version"] == "0.0.1"
    assert "upgrade microstackd on node-1" in str(node["version_refused"])


def test_a_renewed_certificate_on_a_new_stream_ends_the_old_stream(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member
    old_serial = _node(control, "node-1")["cert_serial"]

    async def main() -> tuple[str, errors.MicrostackError, errors.MicrostackError]:
        old_client = ControlClient(cluster, creds)
        old = old_client.heartbeats(OURS)
        await _first_answer(old)
        key = x509.generate_key()
        cert_pem, bundle = await old_client.renew_certificate(x509.make_csr(key, "node-1"))
        # Renewed but not used yet: the old certificate's stream goes on.
        await old.beat(RUNNING)
        await asyncio.sleep(0.5)
        assert not old.ended.done()
        renewed = dataclasses.replace(
            creds, key_pem=x509.key_to_pem(key), cert_pem=cert_pem, ca_pem=bundle
        )
        new_client = ControlClient(cluster, renewed)
        new = new_client.heartbeats(OURS)
        await _first_answer(new)  # its first call with the new certificate
        ended_old = await _ended(old)  # without another beat from it
        serial = format(x509.load_cert(cert_pem).serial_number, "x")
        await asyncio.to_thread(control.ctl, "remove", "node-1", "--force")
        ended_new = await _ended(new)  # removed: at once, not at its next beat
        for stream in (old, new):
            await stream.close()
        for client in (old_client, new_client):
            await client.close()
        return serial, ended_old, ended_new

    serial, ended_old, ended_new = asyncio.run(main())
    assert serial != old_serial
    assert isinstance(ended_old, errors.PermissionDenied)
    assert f"{str(old_serial)[:16]} of node-1 is revoked" in ended_old.message
    assert isinstance(ended_new, errors.PermissionDenied)
    assert f"{serial[:16]} of node-1 is revoked" in ended_new.message


def test_a_stopping_control_ends_every_stream_telling_the_member_to_reconnect(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    """Not a removal (PermissionDenied would make the member think so), and
    not held open until the server's grace period is over."""
    cluster, creds = member

    async def main() -> errors.MicrostackError:
        client = ControlClient(cluster, creds)
        try:
            stream = client.heartbeats(OURS)
            await _first_answer(stream)
            await asyncio.to_thread(control.stop)
            ended = await _ended(stream)
            await stream.close()
            return ended
        finally:
            await client.close()

    ended = asyncio.run(main())
    assert not isinstance(ended, errors.PermissionDenied), ended
    assert ended.code == "UNAVAILABLE", ended
    assert "the control is stopping: reconnect later" in ended.message, ended.message
