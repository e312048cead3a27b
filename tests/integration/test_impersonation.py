"""A member-holding attacker tries to impersonate the control to another
member (issue 14, item 4): it holds the password, so it can bootstrap; it
asks for a certificate naming the control (or another node, or their
address), and whatever certificate it gets, it serves the control's
cluster port with it to a member that comes back up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.member import bootstrap
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.trust import exchange
from tests.integration.harness import Node
from tests.integration.test_adversarial import PASSWORD, _raw_exchange


async def _ask(control: Node, name: str, address: str, hostname: str) -> Any:
    """Bootstrap as ``name`` asking for ``address``/``hostname``: the
    credentials, or the error the control answered with."""
    cert_pem = await fetch_bootstrap_certificate(control.address, control.port)
    hello = exchange.Hello(node_name=name, address=address, hostname=hostname)
    try:
        trusted = await bootstrap.run(
            control.address, control.port, cert_pem, hello, bootstrap.password_verifier(PASSWORD)
        )
    except errors.MicrostackError as exc:
        return exc
    return trusted.credentials


class FakeControl(pb_grpc.ClusterServiceServicer):
    def __init__(self) -> None:
        self.heartbeats = 0

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> Any:
        self.heartbeats += 1
        return pb.HeartbeatResponse(interval_seconds=1)


def test_a_member_cannot_get_or_use_a_certificate_that_impersonates_the_control(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    victim = make_node("node-1")
    victim.join(control, password_file)
    ctl = control.status()["nodes"][0]
    assert ctl["role"] == "control"

    # 1. The control signs no name or address that belongs to another node or to itself.
    for name, address, hostname in [
        ("evil", "127.0.0.66", ctl["name"]),  # the control's name as hostname
        ("evil", "127.0.0.66", "node-1"),  # another node's name as hostname
        ("evil", control.address, "evil"),  # the control's address
        ("evil", victim.address, "evil"),  # another node's address
    ]:
        got = asyncio.run(_ask(control, name, address, hostname))
        assert isinstance(got, errors.NameTaken), (name, address, hostname, got)
    # The name reserved for the control (the one members pin) is refused
    # whoever asks, even with a hello a stock client would not send.
    hello = pb.BootstrapHello(
        version=1, node_name="evil", address="127.0.0.66", hostname="microstackd-control"
    )
    code, details = asyncio.run(_raw_exchange(control, [pb.ExchangeRequest(hello=hello)]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "reserved" in details, details

    # 2. The best it can get is a certificate of its own.
    creds = asyncio.run(_ask(control, "evil", "127.0.0.66", "evil"))
    assert not isinstance(creds, Exception), creds

    # 3. It serves the control's cluster port with it, to a member coming back.
    fake = FakeControl()
    control.stop()
    victim.stop()

    async def impersonate() -> None:
        server = aio.server()
        pb_grpc.add_ClusterServiceServicer_to_server(fake, server)
        tls = grpc.ssl_server_credentials(
            [(creds.key_pem, creds.cert_pem)], root_certificates=creds.ca_pem
        )
        server.add_secure_port(f"{control.address}:{control.cluster_port}", tls)
        await server.start()
        try:
            await asyncio.to_thread(victim.start)  # its heartbeats resume at once
            for _ in range(40):
                if fake.heartbeats or "heartbeat failed" in victim.log.read_text():
                    break
                await asyncio.sleep(0.1)
        finally:
            await server.stop(None)

    asyncio.run(impersonate())
    assert fake.heartbeats == 0, "a member took the attacker for its control"
    assert "heartbeat failed" in victim.log.read_text(), victim.log.read_text()


@pytest.mark.parametrize("name", ["microstackd-control", "microstackd-bootstrap"])
def test_reserved_names_are_refused_as_node_names_too(name: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="reserved"):
        exchange.Hello(node_name=name, address="10.0.0.5", hostname="x")
    with pytest.raises(errors.InvalidArgument, match="reserved"):
        exchange.Hello(node_name="x", address="10.0.0.5", hostname=name.upper() + ".")


def test_a_control_certificate_from_before_the_pinned_name_is_issued_again(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    """A cluster made before controls carried the name members pin: at its
    next start the control re-issues its own certificate (same key) with it."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from microstackd.trust import x509

    tls = control.state_dir / "tls"
    ca = x509.CertificateAuthority.from_pem(
        (tls / "ca.key").read_bytes(), (tls / "ca.crt").read_bytes()
    )
    key = x509.load_key((tls / "node.key").read_bytes())
    now = datetime.now(UTC)
    old = (
        cx509.CertificateBuilder()
        .subject_name(
            cx509.Name(
                [
                    cx509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "control"),
                    cx509.NameAttribute(NameOID.COMMON_NAME, "ctl"),
                ]
            )
        )  # fmt: skip
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=10))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(cx509.SubjectAlternativeName([cx509.DNSName("ctl")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    control.stop()
    (tls / "node.crt").write_bytes(x509.cert_to_pem(old))
    control.start()
    fresh = x509.load_cert((tls / "node.crt").read_bytes())
    assert x509.CONTROL_SERVER_NAME in x509.dns_names(fresh)
    assert fresh.public_key() == key.public_key()
    node = make_node("node-1")
    node.join(control, password_file)  # Enrol dials the control by the pinned name
    assert control.status()["nodes"][1]["state"] == "active"
