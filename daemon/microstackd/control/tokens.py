"""One-time join tokens on the control: make one (``add-node``), list them,
revoke them. The control keeps each token's verifier, never its secret."""

from __future__ import annotations

import logging
import time

from microstackd import errors
from microstackd.control.bootstrap import check_name_free
from microstackd.control.cluster import Cluster
from microstackd.model import BootstrapCertificate, TokenRecord
from microstackd.trust import names, tokens

log = logging.getLogger(__name__)


class Tokens:
    def __init__(self, cluster: Cluster, bootstrap: BootstrapCertificate) -> None:
        self._cluster = cluster
        self._store = cluster.store
        #: The bootstrap certificate a token pins, as served now.
        self._bootstrap = bootstrap

    def create(self, name: str, ttl: int) -> tuple[str, TokenRecord]:
        cluster = self._cluster.require()
        names.node_name(name, "node name")
        if not 0 < ttl <= tokens.MAX_TTL:
            raise errors.InvalidArgument("ttl must be between 1 second and 30 days")
        check_name_free(self._store, name)
        now = time.time()
        where = names.format_host_port(cluster.control_address, cluster.bootstrap_port)
        token = tokens.new(
            name, (where,), self._bootstrap.fingerprint, cluster.ca_fingerprint, int(now + ttl)
        )
        record = TokenRecord(token.id, name, now, float(token.expires), "valid")
        self._store.put_token(record, token.verifier)
        log.info("join token created id=%s node=%s expires=%d", token.id, name, token.expires)
        return tokens.encode(token), record

    def list(self) -> list[TokenRecord]:
        self._cluster.require()
        return self._store.tokens()

    def revoke(self, id_or_name: str) -> TokenRecord:
        self._cluster.require()
        now = time.time()
        matches = [t for t in self._store.tokens() if id_or_name in (t.id, t.name)]
        valid = [t for t in matches if t.state_at(now) == "valid"]
        if not matches:
            raise errors.NotFound(f"no join token with id or node name {id_or_name!r}")
        if not valid:
            raise errors.InvalidArgument(
                f"no valid join token for {id_or_name!r} (it is {matches[0].state_at(now)})"
            )
        for token in valid:
            self._store.set_token_state(token.id, "revoked")
            log.info("join token revoked id=%s node=%s", token.id, token.name)
        revoked = self._store.token(valid[0].id)
        assert revoked is not None
        return revoked[0]
