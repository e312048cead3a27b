"""Per-request log context: the RPC layer sets it, the log formatter adds it
to every line logged while serving that request (and by tasks it starts)."""

from __future__ import annotations

import contextvars
import secrets

#: Short id of the request being served ("" outside any request).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    request_id = secrets.token_hex(4)
    REQUEST_ID.set(request_id)
    return request_id
