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

import asyncio
import contextlib
import errno
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from microstackd import errors, versions
from microstackd.control.cluster import Cluster, now
from microstackd.control.ratelimit import FailureLimiter, OpenLimit, Quiet, source_key
from microstackd.enrolment.runner import Runner
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
        #: The joiner was given its certificate.
        self.completed = False
        #: When the control admitted it (``Admission.started``), and the timer
        #: that gives its place up if its response is long in coming (None
        #: once the place is given up).
        self.started = 0.0
        self.stall: asyncio.TimerHandle | None = None


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


class Admission:
    """At most ``limit`` bootstraps in progress at once. Past that, each
    newcomer is refused at once, before any work, with a turn: when the
    control expects a place to be free for it, after every turn already
    given (a queue of turns, not of held connections). A burst of thousands
    of joins thus costs a bounded amount of memory, no joiner's deadline
    runs out while it waits, and the refused come back about when there is
    room rather than all at once.

    Turns are spaced by the control's capacity, ``limit`` places each held
    for as long as a bootstrap takes lately, not by how many happened to
    complete: the refused arrive at their turns, so a rate measured from
    completions would only ever confirm itself."""

    #: Seconds a bootstrap is assumed to take before any was seen.
    FIRST_DURATION = 1.0
    #: Weight of each new duration in the running average.
    WEIGHT = 0.05

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.in_progress = 0
        self._clock = clock
        self._next_turn = 0.0
        self._duration = self.FIRST_DURATION

    def rate(self) -> float:
        """Bootstraps per second the control can take with ``limit`` at once."""
        return self.limit / self._duration

    def enter(self) -> float:
        """0 when admitted (then ``leave`` with ``started()``'s time); else
        seconds until a turn."""
        if self.in_progress < self.limit:
            self.in_progress += 1
            return 0.0
        now = self._clock()
        self._next_turn = max(self._next_turn, now) + 1.0 / self.rate()
        return self._next_turn - now

    def started(self) -> float:
        return self._clock()

    def leave(self, started: float, completed: bool) -> None:
        self.in_progress -= 1
        if completed:
            took = max(self._clock() - started, 1e-3)
            self._duration += self.WEIGHT * (took - self._duration)


#: Bootstraps the control takes at once (``Admission``): enough to keep both
#: cores busy; each is a few ms of the control's CPU.
MAX_BOOTSTRAPS = 256
#: Seconds a joiner refused for want of file descriptors waits before it
#: tries again.
FD_RETRY = 2.0
#: Seconds an admitted exchange may wait for the joiner's response before it
#: stops counting as one of them (it may still finish).
STALLED_AFTER = 5.0


def check_identity_free(store: Store, hello: Hello, joining: Iterable[Hello] = ()) -> None:
    """Refuse (``errors.NameTaken``) a hello whose hostname or address belongs
    to another node or to the control, or whose node name is another node's
    hostname: its certificate would name that node, and whoever dials that
    name or address would take the joiner for it. ``joining``: the hellos
    of nodes whose record is on its way to disk, checked as nodes too.

    Only the nodes that could conflict are read (``Store.identity_candidates``):
    going through every node made each join at 10,000 nodes cost ~0.1 s."""
    mine = names.dns_key(hello.node_name)
    others = [
        (n.name, n.hostname, n.address, n.role)
        for n in store.identity_candidates(
            hello.node_name, {mine, names.dns_key(hello.hostname)}, hello.address
        )
    ]
    others += [(h.node_name, h.hostname, h.address, Role.COMPUTE) for h in joining]
    for name, hostname, address, role in others:
        if name == hello.node_name:
            continue
        who = f"the control node {name}" if role is Role.CONTROL else f"node {name}"
        theirs = {names.dns_key(name), names.dns_key(hostname)}
        if names.dns_key(hello.hostname) in theirs:
            raise errors.NameTaken(
                f"hostname {hello.hostname!r} belongs to {who}: a certificate may name only its "
                "own node (start this microstackd with another --hostname)"
            )
        if mine in theirs:
            raise errors.NameTaken(
                f"node name {hello.node_name!r} is the hostname of {who}: join under another name"
            )
        if ipaddress.ip_address(hello.address) == ipaddress.ip_address(address):
            raise errors.NameTaken(
                f"address {hello.address} belongs to {who}: give this node its own (--address)"
            )


class Bootstrap:
    def __init__(
        self,
        cluster: Cluster,
        runner: Runner,
        bootstrap: BootstrapCertificate,
        max_bootstraps: int = MAX_BOOTSTRAPS,
    ) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        #: The certificate the bootstrap port serves now (the transcript binds it).
        self._bootstrap = bootstrap
        self._admission = Admission(max_bootstraps)
        #: Hellos of the nodes whose new record is on its way to disk (``finish``).
        self._committing: dict[str, Hello] = {}
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
        turn = self._admission.enter()
        started = self._admission.started()
        if turn:
            raise errors.ControlBusy(
                f"the control node is bootstrapping {self._admission.in_progress} nodes at once: "
                f"try again in {turn:.1f} s",
                retry_after=turn,
            )
        try:
            # Whether the name is taken is told only after the password is
            # proven: the bootstrap port must not list the cluster's nodes to strangers.
            _ca, verifier, params = self._cluster.secrets()
            if token_id:
                verifier = self._token_verifier(token_id, hello.node_name)
            control = exchange.ControlExchange(
                verifier, cluster.cluster_id, params, hello, self._bootstrap.fingerprint
            )
            challenge = Challenge(cluster.cluster_id, params, control.challenge())
        except BaseException:
            self._admission.leave(started, completed=False)
            raise
        session = BootstrapSession(hello, control, source, agent_port, token_id, software)
        session.started = started
        # A joiner answers the challenge within a second (its scrypt ~0.1 s);
        # an exchange still waiting after STALLED_AFTER gives its place up, so
        # that silent strangers cannot hold the places for long.
        session.stall = asyncio.get_running_loop().call_later(
            STALLED_AFTER, self._release, session, False
        )
        return session, challenge

    def _release(self, session: BootstrapSession, completed: bool) -> None:
        if session.stall is not None:
            session.stall.cancel()
            session.stall = None
            self._admission.leave(session.started, completed)

    def end(self, session: BootstrapSession) -> None:
        """The bootstrap ``begin`` admitted is over, finished or not."""
        self._release(session, session.completed)

    async def finish(
        self, session: BootstrapSession, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> BootstrapResult:
        cluster = self._cluster.require()
        hello = session.hello
        if session.stall is not None:  # the response is in: its place is held to the end
            session.stall.cancel()
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
        if hello.node_name in self._committing:  # another joiner of that name, right now
            raise errors.NameTaken(
                f"a node named {hello.node_name!r} is joining the cluster at this moment; "
                "join under another name"
            )
        existing = check_name_free(self._store, hello.node_name)
        check_identity_free(self._store, hello, self._committing.values())
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
            version=software.version,
            api_version=software.api,
        )
        # The trust bundle: the signing CA first, and during a CA rotation the
        # old one too. Read before the commit: no node is recorded with a
        # certificate it could not be sent.
        ca_pem = self._trust_bundle(ca.cert)
        self._committing[hello.node_name] = hello
        try:
            await self._runner.commit_node(record, existing.cert_serial if existing else None)
        finally:
            del self._committing[hello.node_name]
        log.info(
            "bootstrap succeeded source=%s node=%s serial=%x",
            session.source,
            hello.node_name,
            identity.serial,
        )
        cert_pem = x509.cert_to_pem(cert)
        session.completed = True
        return BootstrapResult(
            certificate_pem=cert_pem,
            ca_certificate_pem=ca_pem,
            control_name=cluster.control_name,
            cluster_port=cluster.cluster_port,
            confirmation=session.exchange.result_confirmation(
                cert_pem, ca_pem, cluster.control_name, cluster.cluster_port
            ),
        )

    def _trust_bundle(self, ca_cert: x509.Certificate) -> bytes:
        """The CA bundle a new node is sent. Out of file descriptors (a burst of
        thousands of joins holds a connection or two each, past the process's
        limit) the joiner is told to come back, not that the control failed."""
        try:
            return self._store.read_file(CA_CERT) or x509.cert_to_pem(ca_cert)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("bootstrap deferred: out of file descriptors (%s)", exc.strerror)
            raise errors.ControlBusy(
                "the control node has no file descriptor free (too many connections at "
                f"once): try again in {FD_RETRY:g} s",
                retry_after=FD_RETRY,
            ) from None

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
