"""What a compute's OpenStack credentials can still do, tried for real from
inside a node's network namespace, as a stolen copy of its files would be
used: a RabbitMQ login (py-amqp, the client oslo.messaging uses), a
Keystone token request, and, for a live login, consuming or binding to
another compute's RPC traffic. Runs with the OpenStack environment's own
Python (it has amqp); prints one JSON object, never a password.

    python credentials_probe.py try   URL AUTH_URL USER PASSWORD [OTHER_HOST]
    python credentials_probe.py hold  URL      (log in, wait until the server closes it)
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlsplit


def _connection(url: str) -> Any:
    import amqp  # type: ignore[import-not-found]  # the OpenStack environment's (py-amqp)

    parts = urlsplit(url)
    return amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=parts.username,
        password=parts.password,
        virtual_host="/",
        connect_timeout=10,
    )


def _refused(fn: Any) -> str:
    """What the broker said to ``fn`` ("ok" when it let it)."""
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _try(url: str, auth_url: str, user: str, password: str, other: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conn = _connection(url)
    out["rabbitmq"] = _refused(conn.connect)
    if out["rabbitmq"] == "ok" and other:
        # Another compute's RPC queue, and a queue of its own bound to that
        # compute's routing key on nova (topic permissions): both refused.
        out["consume_other"] = _refused(
            lambda: conn.channel().basic_consume(f"compute.{other}", callback=lambda m: None)
        )

        def bind() -> None:
            channel = conn.channel()
            queue = f"reply_{uuid.uuid4().hex}"
            channel.queue_declare(queue, auto_delete=True)
            channel.queue_bind(queue, "nova", f"compute.{other}")

        out["bind_other"] = _refused(bind)
    if out["rabbitmq"] == "ok":
        conn.close()
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"name": "Default"}, "password": password}
                },
            },
            "scope": {"project": {"name": "service", "domain": {"name": "Default"}}},
        }
    }
    request = urllib.request.Request(
        auth_url.rstrip("/") + "/auth/tokens",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            out["keystone"] = answer.status
            token = json.load(answer)["token"]
            out["roles"] = sorted(r["name"] for r in token["roles"])
    except urllib.error.HTTPError as exc:
        out["keystone"] = exc.code
    return out


def _hold(url: str) -> dict[str, Any]:
    conn = _connection(url)
    conn.connect()
    print(json.dumps({"connected": True}), flush=True)
    while True:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            continue
        except Exception as exc:
            return {"closed": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "try":
        url, auth_url, user, password, *rest = args
        print(json.dumps(_try(url, auth_url, user, password, rest[0] if rest else "")))
    else:
        print(json.dumps(_hold(args[0])), flush=True)
