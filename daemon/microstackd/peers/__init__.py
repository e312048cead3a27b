"""Calls from this daemon to other daemons, the only room below ``api/``
that speaks gRPC: the bootstrap exchange over pinned TLS (``bootstrap``) and
cluster calls over mTLS (``cluster``). Failures come back as the domain error
the other side raised (``errors``); callers above never see a gRPC status."""
