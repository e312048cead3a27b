"""Server credentials that change without a restart: a renewed certificate,
or a new CA trusted, is served from the next TLS handshake on.

grpc takes a server's credentials when a port is bound; its dynamic
credentials (``grpc.dynamic_ssl_server_credentials``) instead ask a fetcher
before each handshake, and that works with grpc.aio (1.85, measured:
docs/security.md, "Renewal"). Connections already open keep the
certificate they were made with, as TLS does; they are closed by their
age limits (wire/options.py) or by the peer.

The fetcher runs on one of grpc's threads: it only reads one attribute,
replaced whole by ``update``.
"""

from __future__ import annotations

import threading

import grpc


class ServerIdentity:
    """The key pair a server presents, and the CAs whose clients it accepts
    (none: clients are not asked for a certificate)."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, roots_pem: bytes | None = None) -> None:
        self._lock = threading.Lock()
        self._config = self._make(key_pem, cert_pem, roots_pem)
        #: The configuration grpc has not fetched yet (None: it has the latest).
        self._fresh: grpc.ServerCertificateConfiguration | None = None
        self._require_client = roots_pem is not None
        self.updates = 0

    @staticmethod
    def _make(
        key_pem: bytes, cert_pem: bytes, roots_pem: bytes | None
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=roots_pem
        )

    def credentials(self) -> grpc.ServerCredentials:
        """The credentials to bind a port with; they follow ``update``."""
        return grpc.dynamic_ssl_server_credentials(
            self._config, self._fetch, require_client_authentication=self._require_client
        )

    def update(self, key_pem: bytes, cert_pem: bytes, roots_pem: bytes | None = None) -> None:
        """Present this pair (and accept clients of these CAs) from the next handshake."""
        if (roots_pem is not None) != self._require_client:
            raise ValueError("a server that asks for client certificates must keep asking")
        config = self._make(key_pem, cert_pem, roots_pem)
        with self._lock:
            self._config = self._fresh = config
            self.updates += 1

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's question before a handshake: a new configuration, or None
        to keep the one it has."""
        with self._lock:
            fresh, self._fresh = self._fresh, None
        return fresh
