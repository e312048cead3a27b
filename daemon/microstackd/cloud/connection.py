"""One authenticated openstacksdk ``Connection`` per cloud, kept and reused,
and every call on it run in a worker thread (openstacksdk blocks).

openstacksdk is imported on first use, never at import time: a compute never
uses a cloud and never pays for it (tests/unit/test_cloud.py checks that a
compute daemon does not load it). A call that fails for want of
authentication drops the connection, so the next call authenticates again.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from microstackd import errors
from microstackd.cloud import CloudRef

T = TypeVar("T")


def _connect(ref: CloudRef) -> Any:
    """A new connection to ``ref``, authenticated now (in a worker thread)."""
    import openstack.config

    import openstack  # lazily: only a control with a cloud pays for it

    try:
        if ref.clouds_yaml:  # the section's (or OS_CLIENT_CONFIG_FILE's) file, and only it
            config = openstack.config.OpenStackConfig(
                config_files=[ref.clouds_yaml], load_envvars=False
            )
        else:  # openstacksdk's own search path and OS_* variables
            config = openstack.config.OpenStackConfig()
        region = config.get_one(cloud=ref.name)
        conn = openstack.connection.Connection(config=region)
        conn.authorize()
    except openstack.exceptions.SDKException as exc:
        raise errors.CloudError(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise errors.CloudError(f"cannot reach cloud {ref.name!r}: {exc}") from exc
    return conn


class Connections:
    """The connections of this daemon, one per cloud."""

    def __init__(self) -> None:
        self._conns: dict[CloudRef, Any] = {}
        self._lock = threading.Lock()

    def _get(self, ref: CloudRef) -> Any:
        with self._lock:
            conn = self._conns.get(ref)
            if conn is None:
                conn = self._conns[ref] = _connect(ref)
            return conn

    def _drop(self, ref: CloudRef, conn: Any) -> None:
        with self._lock:
            if self._conns.get(ref) is conn:
                del self._conns[ref]
        conn.close()

    async def call(self, ref: CloudRef, fn: Callable[[Any], T]) -> T:
        """``fn(connection)`` in a worker thread; openstacksdk's errors stay
        theirs (the operations turn them into messages)."""
        return await asyncio.to_thread(self._call, ref, fn)

    def _call(self, ref: CloudRef, fn: Callable[[Any], T]) -> T:
        import openstack.exceptions

        conn = self._get(ref)
        try:
            return fn(conn)
        except openstack.exceptions.HttpException as exc:
            if exc.status_code == 401:  # the token went stale: authenticate anew next time
                self._drop(ref, conn)
            raise

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()


def sdk_loaded() -> bool:
    """Whether openstacksdk was imported into this process."""
    return "openstack" in sys.modules
