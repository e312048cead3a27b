"""The control's side of the bootstrap: prove a joiner knows the cluster
password (or holds a valid join token) through ``trust.exchange``, then
sign its CSR and record it. Failed attempts lock their source out
(``ratelimit``); whether a name is taken is told only after the proof."""

from __future__ import annotations

import logging
import time

from microstackd import errors
from microstackd.control.cluster import Cluster, now
from microstackd.control.ratelimit import FailureLimiter
from microstackd.enrolment.runner import Runner
from microstackd.model import BootstrapResult, NodeRecord, NodeState, Role
from microstackd.store import Store
from microstackd.trust import exchange, x509
from microstackd.trust.exchange import Challenge, Hello

log = logging.getLogger(__name__)


class BootstrapSession:
    """One joiner's bootstrap in progress on the control."""

    def __init__(
        self,
        hello: Hello,
        control: exchange.ControlExchange,
        source: str,
        agent_port: int,
        token_id: str = "",
    ) -> None:
        self.hello = hello
        self.exchange = control
        self.source = source
        self.agent_port = agent_port
        self.token_id = token_id


def check_name_free(store: Store, name: str) -> NodeRecord | None:
    """The node of that name that a joiner may replace (removed, or still
    pending), None when there is none; ``errors.NameTaken`` otherwise."""
    existing = store.node(name)
    if existing is None or existing.state in (NodeState.REMOVED, NodeState.PENDING):
        return existing
    raise errors.NameTaken(
        f"a node named {name!r} is already in the cluster ({existing.state.value}, "
        f"address {existing.address}); remove it first or join under another name"
    )


class Bootstrap:
    def __init__(self, cluster: Cluster, runner: Runner, bootstrap_fingerprint: str) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._fingerprint = bootstrap_fingerprint
        #: Names whose new record is on its way to disk (``finish``).
        self._committing: set[str] = set()
        config = cluster.config
        self._limiter = FailureLimiter(config.bootstrap_backoff, config.bootstrap_backoff_max)

    def begin(
        self, hello: Hello, source: str, agent_port: int = 0, token_id: str = ""
    ) -> tuple[BootstrapSession, Challenge]:
        cluster = self._cluster.require()
        wait = self._limiter.retry_after(source, time.monotonic())
        if wait > 0:
            log.warning("bootstrap refused source=%s reason=rate-limited wait=%.1fs", source, wait)
            raise errors.TooManyAttempts(
                f"too many failed attempts from {source}: try again in {wait:.0f} s"
            )
        exchange.check_version(hello)
        # Whether the name is taken is told only after the password is proven:
        # the bootstrap port must not list the cluster's nodes to strangers.
        _ca, verifier, params = self._cluster.secrets()
        if token_id:
            verifier = self._token_verifier(token_id, hello.node_name)
        control = exchange.ControlExchange(
            verifier, cluster.cluster_id, params, hello, self._fingerprint
        )
        return (
            BootstrapSession(hello, control, source, agent_port, token_id),
            Challenge(cluster.cluster_id, params, control.challenge()),
        )

    async def finish(
        self, session: BootstrapSession, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> BootstrapResult:
        cluster = self._cluster.require()
        hello = session.hello
        try:
            session.exchange.check_response(pake_message, csr_pem, confirmation)
        except (errors.WrongPassword, errors.BootstrapProtocolError) as exc:
            # Malformed PAKE material counts as a guess too (trust/exchange.py, rule 6).
            wrong = isinstance(exc, errors.WrongPassword)
            delay = self._limiter.failed(session.source, time.monotonic())
            log.warning(
                "bootstrap failed source=%s node=%s reason=%s lockout=%.1fs",
                session.source,
                hello.node_name,
                "wrong-password" if wrong else "protocol-error",
                delay,
            )
            if wrong and session.token_id:
                raise errors.WrongPassword("the control node rejected the join token") from None
            if wrong:
                raise errors.WrongPassword(
                    "the control node rejected the cluster password"
                ) from None
            raise
        self._limiter.succeeded(session.source)
        if hello.node_name in self._committing:  # another joiner of that name, right now
            raise errors.NameTaken(
                f"a node named {hello.node_name!r} is joining the cluster at this moment; "
                "join under another name"
            )
        existing = check_name_free(self._store, hello.node_name)
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
        )
        identity = x509.identity_of(cert)
        record = NodeRecord(
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
        )
        self._committing.add(hello.node_name)
        try:
            await self._runner.commit_node(record, existing.cert_serial if existing else None)
        finally:
            self._committing.discard(hello.node_name)
        log.info(
            "bootstrap succeeded source=%s node=%s serial=%x",
            session.source,
            hello.node_name,
            identity.serial,
        )
        cert_pem = x509.cert_to_pem(cert)
        ca_pem = x509.cert_to_pem(ca.cert)
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
