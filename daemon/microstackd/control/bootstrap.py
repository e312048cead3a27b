"""The control's side of the bootstrap: prove a joiner knows the cluster
password (or holds a valid join token) through ``trust.exchange``, then
sign its CSR and record it. Whether a name is taken is told only after the
proof.

The online-guessing limit holds however guesses are spread over streams and
connections: failed proofs lock their source out (``ratelimit``), and the
lock-out is checked where the answer is (``finish``, before the joiner's
confirmation is looked at), not only when an exchange opens: exchanges
opened before a lock-out cannot all be answered after it. A source may
also hold only so many exchanges open (``slot``)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterator
from datetime import timedelta

from microstackd import errors, versions
from microstackd.control.cluster import Cluster, now
from microstackd.control.ratelimit import FailureLimiter, OpenLimit, Quiet, source_key
from microstackd.model import (
    BootstrapCertificate,
    BootstrapResult,
    NodeRecord,
    NodeState,
    Role,
    Software,
)
from microstackd.store import Store
from microstackd.store.files import CA_CERT
from microstackd.trust import exchange, names, x509
from microstackd.trust.exchange import Challenge, Hello

log = logging.getLogger(__name__)

#: A joiner that declared no version (outside every skew window).
UNDECLARED = Software("", "")


class BootstrapSession:
    """One joiner's bootstrap in progress on the control."""

    def __init__(
        self,
        hello: Hello,
        control: exchange.ControlExchange,
        source: str,
        agent_port: int,
        token_id: str = "",
        software: Software = UNDECLARED,
    ) -> None:
        self.hello = hello
        #: What the joiner declares it runs (checked once it proved the password).
        self.software = software
        self.exchange = control
        self.source = source
        #: What its failures count against (an address, or an IPv6 /64).
        self.key = source_key(source)
        self.agent_port = agent_port
        self.token_id = token_id


def check_name_free(store: Store, name: str) -> NodeRecord | None:
    """The node of that name that a joiner may replace (removed, still
    pending, or a compute whose certificate expired: it was off for longer
    than its certificate had left, and comes back under its name), None
    when there is none; ``errors.NameTaken`` otherwise."""
    existing = store.node(name)
    if existing is None or existing.state in (NodeState.REMOVED, NodeState.PENDING):
        return existing
    if existing.role is Role.COMPUTE and existing.cert_not_after < time.time():
        return existing
    raise errors.NameTaken(
        f"a node named {name!r} is already in the cluster ({existing.state.value}, "
        f"address {existing.address}); if this machine replaces it (reinstalled, its state "
        f"lost), free the name on the control with `microstackctl remove {name} --force`, "
        "then join again; or join under another name"
    )


def check_identity_free(store: Store, hello: Hello) -> None:
    """Refuse (``errors.NameTaken``) a hello whose hostname or address belongs
    to another node or to the control, or whose node name is another node's
    hostname: its certificate would name that node, and whoever dials that
    name or address would take the joiner for it."""
    mine = names.dns_key(hello.node_name)
    for node in store.nodes():
        if node.name == hello.node_name or node.state is NodeState.REMOVED:
            continue
        who = f"the control node {node.name}" if node.role is Role.CONTROL else f"node {node.name}"
        theirs = {names.dns_key(node.name), names.dns_key(node.hostname)}
        if names.dns_key(hello.hostname) in theirs:
            raise errors.NameTaken(
                f"hostname {hello.hostname!r} belongs to {who}: a certificate may name only its "
                "own node (start this microstackd with another --hostname)"
            )
        if mine in theirs:
            raise errors.NameTaken(
                f"node name {hello.node_name!r} is the hostname of {who}: join under another name"
            )
        if ipaddress.ip_address(hello.address) == ipaddress.ip_address(node.address):
            raise errors.NameTaken(
                f"address {hello.address} belongs to {who}: give this node its own (--address)"
            )


class Bootstrap:
    def __init__(self, cluster: Cluster, bootstrap: BootstrapCertificate) -> None:
        self._cluster = cluster
        self._store = cluster.store
        #: The certificate the bootstrap port serves now (the transcript binds it).
        self._bootstrap = bootstrap
        config = cluster.config
        self._limiter = FailureLimiter(config.bootstrap_backoff, config.bootstrap_backoff_max)
        self._open = OpenLimit(config.bootstrap_per_source)
        self._quiet = Quiet()

    @contextlib.contextmanager
    def slot(self, source: str) -> Iterator[None]:
        """Hold one of ``source``'s open exchanges for as long as a bootstrap
        stream lasts (before its hello: a stream that never speaks counts)."""
        key = source_key(source)
        if not self._open.acquire(key):
            self._refused(source, key, "too-many-open", 0.0)
            raise errors.BootstrapBusy(
                f"{self._open.per_source} bootstrap exchanges are already open from {key}: "
                "try again when one has finished"
            )
        try:
            yield
        finally:
            self._open.release(key)

    def _locked_out(self, source: str, key: str) -> None:
        wait = self._limiter.retry_after(key, time.monotonic())
        if wait > 0:
            self._refused(source, key, "rate-limited", wait)
            raise errors.TooManyAttempts(
                f"too many failed attempts from {key}: try again in {math.ceil(wait)} s"
            )

    def _refused(self, source: str, key: str, reason: str, wait: float) -> None:
        """One warning per source per window, however many refusals."""
        quiet = self._quiet.speak(key, time.monotonic())
        if quiet is not None:
            log.warning(
                "bootstrap refused source=%s key=%s reason=%s wait=%.1fs refused_quietly=%d",
                source, key, reason, wait, quiet,
            )  # fmt: skip

    def begin(
        self,
        hello: Hello,
        source: str,
        agent_port: int = 0,
        token_id: str = "",
        software: Software = UNDECLARED,
    ) -> tuple[BootstrapSession, Challenge]:
        cluster = self._cluster.require()
        self._locked_out(source, source_key(source))  # early: no PAKE work for it
        exchange.check_version(hello)
        # Whether the name is taken is told only after the password is proven:
        # the bootstrap port must not list the cluster's nodes to strangers.
        _ca, verifier, params = self._cluster.secrets()
        if token_id:
            verifier = self._token_verifier(token_id, hello.node_name)
        control = exchange.ControlExchange(
            verifier, cluster.cluster_id, params, hello, self._bootstrap.fingerprint
        )
        return (
            BootstrapSession(hello, control, source, agent_port, token_id, software),
            Challenge(cluster.cluster_id, params, control.challenge()),
        )

    def finish(
        self, session: BootstrapSession, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> BootstrapResult:
        cluster = self._cluster.require()
        hello = session.hello
        # Where the answer is checked: a source locked out since its exchange
        # opened gets no check, however many exchanges it opened before.
        self._locked_out(session.source, session.key)
        try:
            session.exchange.check_response(pake_message, csr_pem, confirmation)
        except (errors.WrongPassword, errors.BootstrapProtocolError) as exc:
            # Malformed PAKE material counts as a guess too (trust/exchange.py, rule 6).
            wrong = isinstance(exc, errors.WrongPassword)
            delay = self._limiter.failed(session.key, time.monotonic())
            log.warning(
                "bootstrap failed source=%s key=%s node=%s reason=%s lockout=%.1fs",
                session.source,
                session.key,
                hello.node_name,
                "wrong-password" if wrong else "protocol-error",
                delay,
            )
            if wrong and session.token_id:
                raise errors.WrongPassword("the control node rejected the join token") from None
            if wrong:
                # The control cannot tell the two apart: both transcripts differ.
                raise errors.WrongPassword(
                    "the control node rejected the cluster password: it is wrong, or the "
                    "connection is being intercepted"
                ) from None
            raise
        self._limiter.succeeded(session.key)
        # Told only after the proof (the control's version is nothing for
        # strangers), and before a token is spent or a name taken.
        software = session.software
        try:
            versions.check_member(hello.node_name, software, self._cluster.config.version)
        except errors.VersionSkew as exc:
            log.warning(
                "bootstrap refused source=%s node=%s reason=version version=%r api=%r",
                session.source,
                hello.node_name,
                software.version,
                software.api,
            )
            raise errors.VersionSkew(f"join refused: {exc.message}") from None
        existing = check_name_free(self._store, hello.node_name)
        check_identity_free(self._store, hello)
        if session.token_id and not self._store.set_token_state(
            session.token_id, "used", expect="valid"
        ):
            raise errors.TokenRejected("this join token was used or revoked while it was in use")
        ca, _verifier, _kdf = self._cluster.secrets()
        cert = x509.sign_csr(
            ca,
            csr_pem,
            node_name=hello.node_name,
            role=Role.COMPUTE,
            address=hello.address,
            hostname=hello.hostname,
            now=now(),
            lifetime=timedelta(seconds=self._cluster.config.cert_lifetime),
        )
        identity = x509.identity_of(cert)
        self._store.put_node(
            NodeRecord(
                name=hello.node_name,
                role=Role.COMPUTE,
                address=hello.address,
                hostname=hello.hostname,
                state=NodeState.PENDING,
                message="certificate issued",
                cert_serial=format(identity.serial, "x"),
                cert_not_after=identity.not_after.timestamp(),
                joined=time.time(),
                agent_port=session.agent_port,
                version=software.version,
                api_version=software.api,
            ),
            replaces_serial=existing.cert_serial if existing else None,
        )
        log.info(
            "bootstrap succeeded source=%s node=%s serial=%x",
            session.source,
            hello.node_name,
            identity.serial,
        )
        cert_pem = x509.cert_to_pem(cert)
        # The trust bundle: the signing CA first, and during a CA rotation the old one too.
        ca_pem = self._store.read_file(CA_CERT) or x509.cert_to_pem(ca.cert)
        return BootstrapResult(
            certificate_pem=cert_pem,
            ca_certificate_pem=ca_pem,
            control_name=cluster.control_name,
            cluster_port=cluster.cluster_port,
            confirmation=session.exchange.result_confirmation(
                cert_pem, ca_pem, cluster.control_name, cluster.cluster_port
            ),
        )

    def _token_verifier(self, token_id: str, name: str) -> bytes:
        found = self._store.token(token_id)
        if found is None:
            raise errors.TokenRejected("this join token is unknown to the control node")
        token, verifier = found
        state = token.state_at(time.time())
        if state != "valid":
            raise errors.TokenRejected(
                f"this join token is {state}; make a new one with "
                f"`microstackctl add-node {token.name}` on the control node"
            )
        if token.name != name:
            raise errors.TokenRejected(
                f"this join token is for a node named {token.name!r}, not {name!r} "
                "(start microstackd with --node-name to match, or make a token for this name)"
            )
        return verifier
