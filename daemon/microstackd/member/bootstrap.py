"""The joiner's side of the bootstrap, the one implementation of it: pin the
certificate the control's bootstrap port presented, prove the cluster
password (or a join token) over SPAKE2 bound to that certificate, and take
the certificate the control issues for a key made here (its private half
never leaves this process).

Used by ``member.join`` (which persists the result), the benchmarks'
simulated nodes and the adversarial tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from microstackd import errors
from microstackd.model import ClusterRecord, NodeCredentials, Role, Software
from microstackd.peers.bootstrap import BootstrapCall
from microstackd.trust import exchange, kdf, names, x509
from microstackd.trust.tokens import JoinToken

#: Given the control's KDF parameters, the SPAKE2 password: the password's
#: verifier (derived here), or a join token's.
Verifier = Callable[[kdf.KdfParams], Awaitable[bytes]]

#: The phases ``run`` times, in order (the benchmarks report them).
PHASES = ("hello", "pake_csr", "respond", "check")


@dataclass(frozen=True)
class Trusted:
    """What a successful bootstrap gives: this node's credentials and its cluster."""

    credentials: NodeCredentials
    cluster: ClusterRecord


async def run(
    host: str,
    port: int,
    certificate_pem: bytes,
    hello: exchange.Hello,
    verifier: Verifier,
    *,
    cluster_port: int = 0,
    token: JoinToken | None = None,
    phases: dict[str, float] | None = None,
    software: Software | None = None,
) -> Trusted:
    """One bootstrap with the control at ``host:port``, whose bootstrap port
    presented ``certificate_pem`` (``peers.bootstrap.fetch_bootstrap_certificate``).
    ``cluster_port`` is where this node's agent will listen (0: it runs none)."""
    where = names.format_host_port(host, port)
    seen = x509.fingerprint(certificate_pem)
    if token is not None and seen != token.bootstrap_fingerprint:
        raise errors.PeerAuthenticationFailed(
            f"the control at {where} presented certificate {seen[:16]}…, not the "
            f"{token.bootstrap_fingerprint[:16]}… the join token names: not sending anything "
            "that depends on the token"
        )
    times = phases if phases is not None else {}
    t = time.perf_counter()
    key = x509.generate_key()
    async with BootstrapCall(host, port, certificate_pem) as call:
        challenge = await call.hello(hello, cluster_port, token.id if token else "", software)
        times["hello"] = (t1 := time.perf_counter()) - t
        joiner = exchange.JoinerExchange(
            await verifier(challenge.kdf),
            challenge.cluster_id,
            challenge.kdf,
            hello,
            seen,
            challenge.pake_message,
        )
        csr = x509.make_csr(key, hello.node_name)
        pake_message, confirmation = joiner.response(csr)
        times["pake_csr"] = (t2 := time.perf_counter()) - t1
        result = await call.respond(pake_message, csr, confirmation)
        times["respond"] = (t3 := time.perf_counter()) - t2
        joiner.check_result(
            result.certificate_pem,
            result.ca_certificate_pem,
            result.control_name,
            result.cluster_port,
            result.confirmation,
        )
    # One CA, or two during a CA rotation: the first signs, the token may name either.
    try:
        cas = x509.load_bundle(result.ca_certificate_pem)
    except ValueError as exc:
        raise errors.BootstrapProtocolError(f"the control sent no usable CA: {exc}") from exc
    ca = cas[0]
    x509.verify_issued_by(ca, x509.load_cert(result.certificate_pem), datetime.now(UTC))
    if token is not None and token.ca_fingerprint not in {x509.fingerprint(c) for c in cas}:
        raise errors.PeerAuthenticationFailed(
            "the cluster CA the control sent is not the one the join token names"
        )
    times["check"] = time.perf_counter() - t3
    return Trusted(
        credentials=NodeCredentials(
            key_pem=x509.key_to_pem(key),
            cert_pem=result.certificate_pem,
            ca_pem=result.ca_certificate_pem,
        ),
        cluster=ClusterRecord(
            cluster_id=challenge.cluster_id,
            role=Role.COMPUTE,
            control_name=result.control_name,
            control_address=host,
            bootstrap_port=port,
            cluster_port=result.cluster_port,
            ca_fingerprint=x509.fingerprint(ca),
            ca_not_after=ca.not_valid_after_utc.timestamp(),
        ),
    )


def password_verifier(password: str) -> Verifier:
    """The verifier of ``password`` under the control's KDF parameters (scrypt, in a thread)."""

    async def derive(params: kdf.KdfParams) -> bytes:
        return await asyncio.to_thread(kdf.derive_verifier, password, params)

    return derive


def token_verifier(token: JoinToken) -> Verifier:
    async def known(params: kdf.KdfParams) -> bytes:
        return token.verifier

    return known
